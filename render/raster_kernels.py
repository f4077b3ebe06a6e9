"""numba kernels of the z-buffer rasterizer: setup -> triangle -> fragment, then a deferred shading pass.

Pure functions of arrays and numbers (STYLE rule 4); ``render.rasterizer`` packs scenes into these
arrays and unpacks the results into ``Frame``s.

Conventions shared with the packing code
- Clip space is OpenGL's: a point is inside the view volume when -w <= x, y, z <= w. Raster
  coordinates have x right in [0, W] and y down in [0, H]; pixel (i, j) has its centre at
  (j + 0.5, i + 0.5).
- Every vertex also carries a *view depth* ``d = dvec . (p, 1)``, the distance along the view axis
  (the camera's forward axis, a cube-map face's axis, a directional light's travel direction). It is
  interpolated perspective-correctly, so the depth buffer holds exactly the metric depth the Frame
  reports (and the path tracer's ray distance times cos of the ray to the axis).
- Vertices are snapped to 1/256 pixel (``SUBPIXEL``) and edge functions are evaluated exactly in
  int64; the guard band (``_guard``) keeps every snapped coordinate below 2**21 pixels, so edge
  products stay below 2**60.
"""

from __future__ import annotations

import math

import numpy as np
import numba
from numba import njit, prange

SUBPIXEL = 256  # fixed-point steps per pixel (8 bits)
HALF_SUB = 128  # a pixel centre's offset in fixed point
MAX_POLY = 16   # a triangle clipped by 6 planes has at most 9 corners
CHUNK = 32      # triangles per bounding box for frustum culling
# Raster modes.
MODE_VISIBILITY, MODE_DEPTH, MODE_COUNT = 0, 1, 2
# Light kinds in the packed light table.
L_POINT, L_DIRECTIONAL, L_AREA_SAMPLE = 0, 1, 2
# Material codes (render.scene).
DIFFUSE, METAL, GLASS, EMITTER = 0, 1, 2, 3
GLASS_ALPHA = 0.05  # GGX alpha of the highlight drawn on glass (a tinted reflective surface)
INV_PI = 1.0 / math.pi


@njit(cache=True, error_model="numpy")
def _guard(width, height):
    """Guard-band half extent in NDC units: |x/w|, |y/w| <= G keeps raster coords < 2**20 px."""
    return float(2 ** 20) / max(width, height)


@njit(cache=True, error_model="numpy", inline="always")
def _top_left_bias(ax, ay, bx, by):
    """0 for a top or left edge a->b of a positive-area triangle (raster y down), else -1.

    With positive area the interior is left of a->b in raster space. A left edge goes up
    (dy < 0); a top edge is horizontal with the interior below, which means it runs right (dx > 0).
    Pixels centred exactly on an edge belong to the triangle only if the edge is top or left, so
    two triangles sharing that edge (which see it in opposite directions) never both take them.
    """
    dy = by - ay
    dx = bx - ax
    if dy < 0 or (dy == 0 and dx > 0):
        return 0
    return -1


@njit(cache=True, error_model="numpy", inline="always")
def _raster_snapped(x0, y0, iwa, da, a1, a2, x1, y1, iwb, db, b1, b2, x2, y2, iwc, dc, c1, c2, t, cull, width, height,
                    row0, row1, zbuf, tbuf, bbuf, count, mode):
    """Rasterize one triangle given per corner its snapped raster position (x, y fixed point, see
    ``_snap``), 1/w, view depth d and barycentrics (b1, b2) in the original triangle; inlined, so
    corners travel as scalars. Only pixel rows row0 <= i < row1 are touched (a band of the image)."""
    min_x = min(x0, min(x1, x2))
    max_x = max(x0, max(x1, x2))
    min_y = min(y0, min(y1, y2))
    max_y = max(y0, max(y1, y2))
    # Pixels whose centres j*256+128 lie in [min_x, max_x] (ceil / floor with Python's // rounding).
    # Tested first: most small triangles cover no pixel centre at all.
    j0 = max(0, -((HALF_SUB - min_x) // SUBPIXEL))
    j1 = min(width - 1, (max_x - HALF_SUB) // SUBPIXEL)
    i0 = max(row0, -((HALF_SUB - min_y) // SUBPIXEL))
    i1 = min(row1 - 1, (max_y - HALF_SUB) // SUBPIXEL)
    if j0 > j1 or i0 > i1:
        return  # viewport culling: the bounding box misses every pixel centre
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    if area == 0:
        return
    # Counter-clockwise in NDC (y up) is clockwise in raster space (y down): negative area.
    if area > 0:
        if cull:
            return
        w0, w1, w2 = iwa, iwb, iwc
        d0, d1, d2 = da, db, dc
        b01, b11, b21 = a1, b1, c1
        b02, b12, b22 = a2, b2, c2
    else:
        # Reorder to positive area so that "inside" means all edge functions >= 0.
        area = -area
        x1, y1, x2, y2 = x2, y2, x1, y1
        w0, w1, w2 = iwa, iwc, iwb
        d0, d1, d2 = da, dc, db
        b01, b11, b21 = a1, c1, b1
        b02, b12, b22 = a2, c2, b2
    # Edge k is opposite vertex k: e0 = v1->v2, e1 = v2->v0, e2 = v0->v1; E_ab(p) = (b-a) x (p-a).
    px = j0 * SUBPIXEL + HALF_SUB
    py = i0 * SUBPIXEL + HALF_SUB
    r0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    r1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    r2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    sx0 = -(y2 - y1) * SUBPIXEL
    sx1 = -(y0 - y2) * SUBPIXEL
    sx2 = -(y1 - y0) * SUBPIXEL
    sy0 = (x2 - x1) * SUBPIXEL
    sy1 = (x0 - x2) * SUBPIXEL
    sy2 = (x1 - x0) * SUBPIXEL
    bias0 = _top_left_bias(x1, y1, x2, y2)
    bias1 = _top_left_bias(x2, y2, x0, y0)
    bias2 = _top_left_bias(x0, y0, x1, y1)
    for i in range(i0, i1 + 1):
        e0 = r0
        e1 = r1
        e2 = r2
        for j in range(j0, j1 + 1):
            if (e0 + bias0) >= 0 and (e1 + bias1) >= 0 and (e2 + bias2) >= 0:
                # Screen-space barycentrics e_k / area, divided by w_k and renormalised, are the
                # perspective-correct weights (attributes over w are linear in screen space); the
                # renormalisation makes the 1 / area factor unnecessary.
                l0 = e0 * w0
                l1 = e1 * w1
                l2 = e2 * w2
                den = l0 + l1 + l2
                num = l0 * d0 + l1 * d1 + l2 * d2
                if mode == MODE_COUNT:
                    count[i, j] += 1
                elif num < zbuf[i, j] * den:  # z = num / den < stored depth; divide only on a pass
                    s = 1.0 / den
                    zbuf[i, j] = num * s
                    if mode == MODE_VISIBILITY:
                        tbuf[i, j] = t
                        bbuf[i, j, 0] = (l0 * b01 + l1 * b11 + l2 * b21) * s
                        bbuf[i, j, 1] = (l0 * b02 + l1 * b12 + l2 * b22) * s
            e0 += sx0
            e1 += sx1
            e2 += sx2
        r0 += sy0
        r1 += sy1
        r2 += sy2


@njit(cache=True, error_model="numpy", inline="always")
def _snap(x, y, iw, sub_w, sub_h):
    """Raster position of clip (x, y) with 1/w = iw, in fixed point (1/SUBPIXEL pixel, y down)."""
    return (np.int64(math.floor((x * iw + 1.0) * sub_w + 0.5)),
            np.int64(math.floor((1.0 - y * iw) * sub_h + 0.5)))


@njit(cache=True, error_model="numpy")
def _raster_clipped(xa, ya, wa, da, a1, a2, xb, yb, wb, db, b1, b2, xc, yc, wc, dc, c1, c2, t, cull, width, height,
                    row0, row1, zbuf, tbuf, bbuf, count, mode):
    """``_raster_snapped`` for a triangle given by clip x, y, w per corner (the clipping path). It is
    rare, so it stays out of line (not inlined), which keeps compile time down."""
    sub_w = width * SUBPIXEL * 0.5
    sub_h = height * SUBPIXEL * 0.5
    iwa = 1.0 / wa
    iwb = 1.0 / wb
    iwc = 1.0 / wc
    x0, y0 = _snap(xa, ya, iwa, sub_w, sub_h)
    x1, y1 = _snap(xb, yb, iwb, sub_w, sub_h)
    x2, y2 = _snap(xc, yc, iwc, sub_w, sub_h)
    _raster_snapped(x0, y0, iwa, da, a1, a2, x1, y1, iwb, db, b1, b2, x2, y2, iwc, dc, c1, c2, t, cull, width, height,
                    row0, row1, zbuf, tbuf, bbuf, count, mode)


@njit(cache=True, error_model="numpy")
def raster_triangles(pts, chunks, t0, t1, tri_cull, M, dvec, width, height, zbuf, tbuf, bbuf, count, mode):
    """Rasterize triangles ``t0..t1`` of ``pts`` into the whole image (see ``raster_rows``)."""
    raster_rows(pts, chunks, t0, t1, tri_cull, M, dvec, width, height, 0, height, zbuf, tbuf, bbuf, count, mode)


@njit(cache=True, error_model="numpy")
def raster_rows(pts, chunks, t0, t1, tri_cull, M, dvec, width, height, row0, row1, zbuf, tbuf, bbuf, count, mode):
    """Rasterize triangles ``t0..t1`` of ``pts`` into pixel rows row0..row1 of the buffers.

    pts: (3, 3T) float32 world-space corners coordinate-major (``corner_rows``: x of every corner, then
    y, then z), so the transform loop reads each coordinate contiguously. chunks: (C, 2, 3) float64
    bounds (lo, hi) of triangles [k*CHUNK, (k+1)*CHUNK), see ``chunk_bounds``; a band (row0 > 0 or row1
    < height) skips the chunks whose box misses its rows. tri_cull: (T,) int32, 1 = cull back faces.
    M: (4, 4) float64 world -> clip; dvec: (4,) float64 world -> view depth.
    zbuf: (H, W) float32 view depth, initialised to inf; tbuf: (H, W) int32 triangle index;
    bbuf: (H, W, 2) float32 barycentrics (b1, b2) in the original triangle; count: (H, W) int32.
    mode: MODE_VISIBILITY writes all, MODE_DEPTH only zbuf, MODE_COUNT counts fragments (no depth
    test), for the watertightness tests.
    """
    g = _guard(width, height)
    planes = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, -1.0, 1.0],   # near, far
                       [1.0, 0.0, 0.0, g], [-1.0, 0.0, 0.0, g],      # guard band: keeps fixed point in range
                       [0.0, 1.0, 0.0, g], [0.0, -1.0, 0.0, g]])
    poly = np.empty((MAX_POLY, 8))
    tmp = np.empty((MAX_POLY, 8))
    dist = np.empty(MAX_POLY)
    # The matrix in locals: the compiler cannot prove that writes to poly leave M unchanged.
    m00, m01, m02, m03 = M[0, 0], M[0, 1], M[0, 2], M[0, 3]
    m10, m11, m12, m13 = M[1, 0], M[1, 1], M[1, 2], M[1, 3]
    m20, m21, m22, m23 = M[2, 0], M[2, 1], M[2, 2], M[2, 3]
    m30, m31, m32, m33 = M[3, 0], M[3, 1], M[3, 2], M[3, 3]
    d0, d1, d2, d3 = dvec[0], dvec[1], dvec[2], dvec[3]
    cx = np.empty(3 * CHUNK)
    cy = np.empty(3 * CHUNK)
    cz = np.empty(3 * CHUNK)
    cw = np.empty(3 * CHUNK)
    cd = np.empty(3 * CHUNK)
    codes = np.empty(3 * CHUNK, np.int64)
    ciw = np.empty(3 * CHUNK)
    sx = np.empty(3 * CHUNK, np.int64)
    sy = np.empty(3 * CHUNK, np.int64)
    sub_w = width * SUBPIXEL * 0.5
    sub_h = height * SUBPIXEL * 0.5
    half_h = 0.5 * height
    banded = row0 > 0 or row1 < height
    for ch in range(t0 // CHUNK, (t1 + CHUNK - 1) // CHUNK):
        # Skip a chunk whose bounding box lies outside one plane of the view frustum.
        box_all = 15 + 16
        ylo = np.inf
        yhi = -np.inf
        for bx in range(2):
            for by in range(2):
                for bz in range(2):
                    px = chunks[ch, bx, 0]
                    py = chunks[ch, by, 1]
                    pz = chunks[ch, bz, 2]
                    x = m00 * px + m01 * py + m02 * pz + m03
                    y = m10 * px + m11 * py + m12 * pz + m13
                    z = m20 * px + m21 * py + m22 * pz + m23
                    w = m30 * px + m31 * py + m32 * pz + m33
                    box_all &= (x > w) * 1 + (x < -w) * 2 + (y > w) * 4 + (y < -w) * 8 + (z + w < 0.0) * 16
                    if w > 0.0:
                        ylo = min(ylo, y / w)
                        yhi = max(yhi, y / w)
                    else:
                        ylo = -np.inf
                        yhi = np.inf
        if box_all != 0:
            continue
        if banded:
            # Rows the chunk's box can reach (raster y runs down), with a row of margin.
            if (1.0 - yhi) * half_h > row1 + 1.0 or (1.0 - ylo) * half_h < row0 - 1.0:
                continue
        tb = max(t0, ch * CHUNK)
        te = min(t1, (ch + 1) * CHUNK)
        # Transform the chunk's corners in one straight loop (the compiler can vectorise it).
        for v in range(3 * (te - tb)):
            q = 3 * tb + v
            px = np.float64(pts[0, q])
            py = np.float64(pts[1, q])
            pz = np.float64(pts[2, q])
            x = m00 * px + m01 * py + m02 * pz + m03
            y = m10 * px + m11 * py + m12 * pz + m13
            z = m20 * px + m21 * py + m22 * pz + m23
            w = m30 * px + m31 * py + m32 * pz + m33
            cx[v] = x
            cy[v] = y
            cz[v] = z
            cw[v] = w
            cd[v] = d0 * px + d1 * py + d2 * pz + d3
            # Snapped here, in the straight loop, rather than per triangle: each corner once.
            iw = 1.0 / w
            ciw[v] = iw
            sx[v], sy[v] = _snap(x, y, iw, sub_w, sub_h)
            # Bits 0-5: the clip planes of ``planes`` (near, far, guard band); bits 6-9: the viewport's
            # sides, used only to reject (the guard band makes clipping against them unnecessary).
            codes[v] = ((z + w < 0.0) * 1 + (w - z < 0.0) * 2 + (x + g * w < 0.0) * 4 + (g * w - x < 0.0) * 8
                        + (y + g * w < 0.0) * 16 + (g * w - y < 0.0) * 32
                        + (x > w) * 64 + (x < -w) * 128 + (y > w) * 256 + (y < -w) * 512)
        for t in range(tb, te):
            v = 3 * (t - tb)
            if codes[v] & codes[v + 1] & codes[v + 2]:
                continue  # every corner outside one plane
            cull = tri_cull[t] != 0
            crossed = (codes[v] | codes[v + 1] | codes[v + 2]) & 63
            if crossed == 0:
                _raster_snapped(sx[v], sy[v], ciw[v], cd[v], 0.0, 0.0, sx[v + 1], sy[v + 1], ciw[v + 1], cd[v + 1],
                                1.0, 0.0, sx[v + 2], sy[v + 2], ciw[v + 2], cd[v + 2], 0.0, 1.0, t, cull, width,
                                height, row0, row1, zbuf, tbuf, bbuf, count, mode)
                continue
            for k in range(3):
                poly[k, 0] = cx[v + k]
                poly[k, 1] = cy[v + k]
                poly[k, 2] = cz[v + k]
                poly[k, 3] = cw[v + k]
                poly[k, 4] = cd[v + k]
                poly[k, 5] = 0.0
                poly[k, 6] = 0.0
                poly[k, 7] = 0.0
                poly[k, 5 + k] = 1.0
            # Sutherland-Hodgman in homogeneous space: new corners interpolate every column linearly,
            # which is exact for clip coords, view depth and barycentrics (all affine in the triangle).
            n = 3
            for p in range(6):
                if not (crossed >> p) & 1:
                    continue
                for k in range(n):
                    dist[k] = (planes[p, 0] * poly[k, 0] + planes[p, 1] * poly[k, 1] + planes[p, 2] * poly[k, 2]
                               + planes[p, 3] * poly[k, 3])
                m = 0
                for k in range(n):
                    kn = (k + 1) % n
                    if dist[k] >= 0.0:
                        tmp[m, :] = poly[k, :]
                        m += 1
                    if (dist[k] >= 0.0) != (dist[kn] >= 0.0):
                        a = dist[k] / (dist[k] - dist[kn])
                        tmp[m, :] = poly[k, :] + a * (poly[kn, :] - poly[k, :])
                        m += 1
                n = m
                poly[:n, :] = tmp[:n, :]
                if n < 3:
                    break
            for k in range(1, n - 1):
                _raster_clipped(poly[0, 0], poly[0, 1], poly[0, 3], poly[0, 4], poly[0, 6], poly[0, 7],
                                 poly[k, 0], poly[k, 1], poly[k, 3], poly[k, 4], poly[k, 6], poly[k, 7],
                                 poly[k + 1, 0], poly[k + 1, 1], poly[k + 1, 3], poly[k + 1, 4], poly[k + 1, 6],
                                 poly[k + 1, 7], t, cull, width, height, row0, row1, zbuf, tbuf, bbuf, count, mode)


@njit(cache=True, error_model="numpy")
def _shadow_map_face(pts, chunks, job_tri, job_M, job_d, job_off, job_res, maps, j, no_cull, dummy_t, dummy_b):
    r = job_res[j]
    face = maps[job_off[j]:job_off[j] + r * r].reshape((r, r))
    raster_triangles(pts, chunks, job_tri[j, 0], job_tri[j, 1], no_cull, job_M[j], job_d[j], r, r, face,
                     dummy_t, dummy_b, dummy_t, MODE_DEPTH)


@njit(cache=True, parallel=True, error_model="numpy")
def render_shadow_maps(pts, chunks, job_tri, job_M, job_d, job_off, job_res, maps):
    """Depth-only renders for every shadow-map face, in parallel over faces.

    job_tri: (J, 2) int64 triangle range; job_M: (J, 4, 4); job_d: (J, 4); job_off: (J,) int64
    offset into ``maps``; job_res: (J,) int64 side R. maps: flat float32, face j is
    maps[off : off + R*R] as (R, R) view depth along the face's axis (inf where empty).
    """
    no_cull = np.zeros(pts.shape[1] // 3, np.int32)
    dummy_t = np.zeros((1, 1), np.int32)
    dummy_b = np.zeros((1, 1, 2), np.float32)
    for j in prange(job_tri.shape[0]):  # (prange's index is unsigned: as int64 the face compiles once, not twice)
        _shadow_map_face(pts, chunks, job_tri, job_M, job_d, job_off, job_res, maps, np.int64(j), no_cull, dummy_t,
                         dummy_b)


@njit(cache=True, nogil=True, error_model="numpy")
def render_shadow_maps_serial(pts, chunks, job_tri, job_M, job_d, job_off, job_res, maps):
    """``render_shadow_maps`` on this thread, face after face (the same maps), without the GIL. For
    one face or one thread: launching the parallel loop cost ~0.4 ms a call on a 2-core VM, more
    than a 256^2 directional map of a rooms_ring scene takes to render (~0.65 ms)."""
    no_cull = np.zeros(pts.shape[1] // 3, np.int32)
    dummy_t = np.zeros((1, 1), np.int32)
    dummy_b = np.zeros((1, 1, 2), np.float32)
    for j in range(job_tri.shape[0]):
        _shadow_map_face(pts, chunks, job_tri, job_M, job_d, job_off, job_res, maps, j, no_cull, dummy_t, dummy_b)


# --- shading -----------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", inline="always")
def _sample_texture(tex_data, tex_info, k, u, v, out):
    """Bilinear lookup with wrap-around in texture k; v = 0 is the bottom row. Writes out (3,)."""
    off = tex_info[k, 0]
    h = tex_info[k, 1]
    w = tex_info[k, 2]
    fx = u * w - 0.5
    fy = (1.0 - v) * h - 0.5
    ix = math.floor(fx)
    iy = math.floor(fy)
    ax = fx - ix
    ay = fy - iy
    x0 = int(ix) % w
    x1 = (x0 + 1) % w
    y0 = int(iy) % h
    y1 = (y0 + 1) % h
    for c in range(3):
        out[c] = ((1 - ax) * (1 - ay) * tex_data[off + y0 * w + x0, c] + ax * (1 - ay) * tex_data[off + y0 * w + x1, c]
                  + (1 - ax) * ay * tex_data[off + y1 * w + x0, c] + ax * ay * tex_data[off + y1 * w + x1, c])


@njit(cache=True, error_model="numpy")
def ggx_brdf(nx, ny, nz, vx, vy, vz, lx, ly, lz, alpha, f0):
    """GGX microfacet BRDF with separable Smith masking and Schlick Fresnel (F0 = f0).

    n, v (to the viewer), l (to the light): unit vectors. alpha: GGX alpha as given (clamped to
    1e-4 so a mirror stays finite; it reflects delta lights only on a measure-zero set). f0: scalar.
    Returns the BRDF value (1/sr) without the cosine.
    """
    nv = nx * vx + ny * vy + nz * vz
    nl = nx * lx + ny * ly + nz * lz
    if nv <= 0.0 or nl <= 0.0:
        return 0.0
    hx = vx + lx
    hy = vy + ly
    hz = vz + lz
    hn = math.sqrt(hx * hx + hy * hy + hz * hz)
    if hn == 0.0:
        return 0.0
    hx /= hn
    hy /= hn
    hz /= hn
    nh = nx * hx + ny * hy + nz * hz
    vh = max(0.0, vx * hx + vy * hy + vz * hz)
    a = max(alpha, 1e-4)
    a2 = a * a
    den = nh * nh * (a2 - 1.0) + 1.0
    d = a2 / (math.pi * den * den)
    g1v = 2.0 * nv / (nv + math.sqrt(a2 + (1.0 - a2) * nv * nv))
    g1l = 2.0 * nl / (nl + math.sqrt(a2 + (1.0 - a2) * nl * nl))
    f = f0 + (1.0 - f0) * (1.0 - vh) ** 5
    return d * g1v * g1l * f / (4.0 * nv * nl)


@njit(cache=True, error_model="numpy", inline="always")
def _shadow_visible(lights_f, lights_i, k, maps, px, py, pz, gx, gy, gz, bias_texels):
    """1.0 when point p (with unit geometric normal g facing the light) is lit by light k.

    The lookup point is pushed along g by one texel's world size (normal offset, which removes
    acne at grazing angles without the light leaks of a large constant bias), and a point counts
    as shadowed only if it is more than ``bias_texels`` texels behind the stored depth.
    """
    kind = lights_i[k, 0]
    off = lights_i[k, 1]
    r = lights_i[k, 2]
    if kind == L_DIRECTIONAL:
        h = lights_f[k, 12]
        texel = 2.0 * h / r
        qx = px + gx * texel - lights_f[k, 9]
        qy = py + gy * texel - lights_f[k, 10]
        qz = pz + gz * texel - lights_f[k, 11]
        x = (lights_f[k, 13] * qx + lights_f[k, 14] * qy + lights_f[k, 15] * qz) / h
        y = (lights_f[k, 16] * qx + lights_f[k, 17] * qy + lights_f[k, 18] * qz) / h
        depth = lights_f[k, 3] * qx + lights_f[k, 4] * qy + lights_f[k, 5] * qz + h
        col = int(math.floor((x + 1.0) * 0.5 * r))
        row = int(math.floor((1.0 - y) * 0.5 * r))
        if col < 0 or col >= r or row < 0 or row >= r:
            return 1.0
        stored = maps[off + row * r + col]
        return 1.0 if depth <= stored + bias_texels * texel else 0.0
    dx = px - lights_f[k, 0]
    dy = py - lights_f[k, 1]
    dz = pz - lights_f[k, 2]
    dist = math.sqrt(dx * dx + dy * dy + dz * dz)
    texel = 2.0 * dist / r
    dx += gx * texel
    dy += gy * texel
    dz += gz * texel
    adx = abs(dx)
    ady = abs(dy)
    adz = abs(dz)
    # Cube face of the major axis; (u, v) are the next two axes in cyclic order (see rasterizer._cube_face).
    if adx >= ady and adx >= adz:
        ax = 0
        w = adx
        u = dy
        v = dz
        neg = dx < 0
    elif ady >= adz:
        ax = 1
        w = ady
        u = dz
        v = dx
        neg = dy < 0
    else:
        ax = 2
        w = adz
        u = dx
        v = dy
        neg = dz < 0
    if w <= 0.0:
        return 1.0
    face = 2 * ax + (1 if neg else 0)
    col = min(r - 1, max(0, int(math.floor((u / w + 1.0) * 0.5 * r))))
    row = min(r - 1, max(0, int(math.floor((1.0 - v / w) * 0.5 * r))))
    stored = maps[off + face * r * r + row * r + col]
    return 1.0 if w <= stored + bias_texels * 2.0 * w / r else 0.0


@njit(cache=True, error_model="numpy")
def shade_view(ti, b, pos, nrm, uvs, mat_id, obj_id, mtype, mbase, mrad, mrough, mior, mtex, mchk, mc1, mc2,
               mscale, tex_data, tex_info, env, env_tex, ambient, cam, lights_f, lights_i, l0, l1, maps,
               shadows, bias_texels, ssaa, out_rgb, out_depth, out_normal, out_albedo, out_id, zbuf, row0, row1):
    """Deferred shading and box resolve of output rows row0..row1 of one view's visibility buffer.

    ti: (H*s, W*s) int32 triangle per sample (-1 none); b: (H*s, W*s, 2) float32 (b1, b2);
    zbuf: (H*s, W*s) float32 view depth. cam: (14,) float64 [position, right, up, forward,
    tan(fov/2), aspect]. lights l0..l1 of lights_f (L, 20) float64 / lights_i (L, 3) int64.
    env: (3,) constant environment radiance (multiplier of env_tex when env_tex >= 0); ambient: (3,)
    mean environment radiance. Writes out_* (H, W, ...): rgb and albedo are the box average over
    the s*s samples; depth, normal and id come from sample (s//2, s//2) so they never blend
    foreground with background.
    """
    hh = out_rgb.shape[0]
    ww = out_rgb.shape[1]
    s = ssaa
    inv_ns = 1.0 / (s * s)
    tx = np.empty(3)
    # Scalar accumulators (r, g, b): small arrays here would keep the compiler from holding them
    # in registers.
    for i in range(row0, row1):
        for j in range(ww):
            acc_r = 0.0
            acc_g = 0.0
            acc_b = 0.0
            alb_r = 0.0
            alb_g = 0.0
            alb_b = 0.0
            for si in range(s):
                for sj in range(s):
                    y = i * s + si
                    x = j * s + sj
                    t = ti[y, x]
                    rep = si == s // 2 and sj == s // 2
                    if t < 0:
                        # Background: the environment seen along the pixel-sample ray.
                        if env_tex >= 0:
                            sx = (2.0 * (x + 0.5) / (ww * s) - 1.0) * cam[12] * cam[13]
                            sy = (1.0 - 2.0 * (y + 0.5) / (hh * s)) * cam[12]
                            dx = sx * cam[3] + sy * cam[6] + cam[9]
                            dy = sx * cam[4] + sy * cam[7] + cam[10]
                            dz = sx * cam[5] + sy * cam[8] + cam[11]
                            dn = math.sqrt(dx * dx + dy * dy + dz * dz)
                            dx /= dn
                            dy /= dn
                            dz /= dn
                            # Mitsuba's envmap (as the path tracer): u = atan2(d_x, -d_z) / 2 pi,
                            # v = acos(d_y) / pi with row i centred at v = i / (H - 1); the texture
                            # lookup's v runs bottom-up with rows centred at (i + 0.5) / H.
                            eu = math.atan2(dx, -dz) / (2.0 * math.pi)
                            eu -= math.floor(eu)
                            ev = math.acos(min(1.0, max(-1.0, dy))) / math.pi
                            eh = tex_info[env_tex, 1]
                            _sample_texture(tex_data, tex_info, env_tex, eu, 1.0 - (ev * (eh - 1) + 0.5) / eh, tx)
                            acc_r += env[0] * tx[0]
                            acc_g += env[1] * tx[1]
                            acc_b += env[2] * tx[2]
                        else:
                            acc_r += env[0]
                            acc_g += env[1]
                            acc_b += env[2]
                        if rep:
                            out_depth[i, j] = np.inf
                            out_id[i, j] = -1
                            out_normal[i, j, 0] = 0.0
                            out_normal[i, j, 1] = 0.0
                            out_normal[i, j, 2] = 0.0
                        continue
                    b1 = np.float64(b[y, x, 0])
                    b2 = np.float64(b[y, x, 1])
                    b0 = 1.0 - b1 - b2
                    # Position, normals and uv at the fragment, from the original corners.
                    px = b0 * pos[t, 0, 0] + b1 * pos[t, 1, 0] + b2 * pos[t, 2, 0]
                    py = b0 * pos[t, 0, 1] + b1 * pos[t, 1, 1] + b2 * pos[t, 2, 1]
                    pz = b0 * pos[t, 0, 2] + b1 * pos[t, 1, 2] + b2 * pos[t, 2, 2]
                    nx = b0 * nrm[t, 0, 0] + b1 * nrm[t, 1, 0] + b2 * nrm[t, 2, 0]
                    ny = b0 * nrm[t, 0, 1] + b1 * nrm[t, 1, 1] + b2 * nrm[t, 2, 1]
                    nz = b0 * nrm[t, 0, 2] + b1 * nrm[t, 1, 2] + b2 * nrm[t, 2, 2]
                    e1x = pos[t, 1, 0] - pos[t, 0, 0]
                    e1y = pos[t, 1, 1] - pos[t, 0, 1]
                    e1z = pos[t, 1, 2] - pos[t, 0, 2]
                    e2x = pos[t, 2, 0] - pos[t, 0, 0]
                    e2y = pos[t, 2, 1] - pos[t, 0, 1]
                    e2z = pos[t, 2, 2] - pos[t, 0, 2]
                    gx = np.float64(e1y * e2z - e1z * e2y)
                    gy = np.float64(e1z * e2x - e1x * e2z)
                    gz = np.float64(e1x * e2y - e1y * e2x)
                    # g stays unnormalised (the side tests need only signs) until a shadow lookup
                    # or a missing shading normal needs it: divisions and roots dominate this loop.
                    g_unit = False
                    nl = nx * nx + ny * ny + nz * nz
                    if nl > 0.0:
                        inv = 1.0 / math.sqrt(nl)
                        nx *= inv
                        ny *= inv
                        nz *= inv
                    else:
                        inv = 1.0 / math.sqrt(gx * gx + gy * gy + gz * gz)
                        gx *= inv
                        gy *= inv
                        gz *= inv
                        g_unit = True
                        nx = gx
                        ny = gy
                        nz = gz
                    if rep:
                        out_depth[i, j] = zbuf[y, x]
                        out_id[i, j] = obj_id[t]
                        out_normal[i, j, 0] = nx
                        out_normal[i, j, 1] = ny
                        out_normal[i, j, 2] = nz
                    vx = cam[0] - px
                    vy = cam[1] - py
                    vz = cam[2] - pz
                    front = gx * vx + gy * vy + gz * vz > 0.0
                    if not front:
                        # Non-emitters scatter on both sides: shade the back with flipped normals.
                        gx, gy, gz, nx, ny, nz = -gx, -gy, -gz, -nx, -ny, -nz
                    m = mat_id[t]
                    kind = mtype[m]
                    if kind == METAL or kind == GLASS:  # only the specular lobes need a unit v
                        inv = 1.0 / math.sqrt(vx * vx + vy * vy + vz * vz)
                        vx *= inv
                        vy *= inv
                        vz *= inv
                    if mtex[m] >= 0 or mchk[m]:
                        u = b0 * uvs[t, 0, 0] + b1 * uvs[t, 1, 0] + b2 * uvs[t, 2, 0]
                        v = b0 * uvs[t, 0, 1] + b1 * uvs[t, 1, 1] + b2 * uvs[t, 2, 1]
                    else:
                        u = 0.0
                        v = 0.0
                    if mtex[m] >= 0:
                        _sample_texture(tex_data, tex_info, mtex[m], u, v, tx)
                        cr = tx[0]
                        cg = tx[1]
                        cb = tx[2]
                    elif mchk[m]:
                        parity = (math.floor(u * mscale[m]) + math.floor(v * mscale[m])) % 2
                        if parity == 0:
                            cr = np.float64(mc1[m, 0])
                            cg = np.float64(mc1[m, 1])
                            cb = np.float64(mc1[m, 2])
                        else:
                            cr = np.float64(mc2[m, 0])
                            cg = np.float64(mc2[m, 1])
                            cb = np.float64(mc2[m, 2])
                    else:
                        cr = np.float64(mbase[m, 0])
                        cg = np.float64(mbase[m, 1])
                        cb = np.float64(mbase[m, 2])
                    alb_r += cr
                    alb_g += cg
                    alb_b += cb
                    # Constant environment as ambient light, unoccluded: a Lambertian surface reflects
                    # albedo * L; metal and glass approximated by their tint.
                    acc_r += cr * ambient[0]
                    acc_g += cg * ambient[1]
                    acc_b += cb * ambient[2]
                    if kind == EMITTER and front:
                        acc_r += mrad[m, 0]
                        acc_g += mrad[m, 1]
                        acc_b += mrad[m, 2]
                    for k in range(l0, l1):
                        lk = lights_i[k, 0]
                        if lk == L_DIRECTIONAL:
                            wx = -lights_f[k, 3]
                            wy = -lights_f[k, 4]
                            wz = -lights_f[k, 5]
                            scale = 1.0
                        else:
                            wx = lights_f[k, 0] - px
                            wy = lights_f[k, 1] - py
                            wz = lights_f[k, 2] - pz
                            r2 = wx * wx + wy * wy + wz * wz
                            if r2 <= 0.0:
                                continue
                            inv = 1.0 / math.sqrt(r2)
                            wx *= inv
                            wy *= inv
                            wz *= inv
                            scale = 1.0 / r2  # inverse-square falloff of intensity (W/sr) to irradiance
                            if lk == L_AREA_SAMPLE:
                                # Lambertian emitter patch: intensity L*A*cos(theta_e), front side only.
                                ce = -(wx * lights_f[k, 3] + wy * lights_f[k, 4] + wz * lights_f[k, 5])
                                if ce <= 0.0:
                                    continue
                                scale *= ce
                        if gx * wx + gy * wy + gz * wz <= 0.0:
                            continue  # the light is on the other side of the surface from the viewer
                        cs = nx * wx + ny * wy + nz * wz
                        if cs <= 0.0:
                            continue
                        if shadows and lights_i[k, 2] > 0:
                            if not g_unit:
                                inv = 1.0 / math.sqrt(gx * gx + gy * gy + gz * gz)
                                gx *= inv
                                gy *= inv
                                gz *= inv
                                g_unit = True
                            if _shadow_visible(lights_f, lights_i, k, maps, px, py, pz, gx, gy, gz,
                                               bias_texels) == 0.0:
                                continue
                        e = scale * cs
                        if kind == DIFFUSE or kind == EMITTER:
                            acc_r += cr * INV_PI * lights_f[k, 6] * e
                            acc_g += cg * INV_PI * lights_f[k, 7] * e
                            acc_b += cb * INV_PI * lights_f[k, 8] * e
                        elif kind == METAL:
                            acc_r += ggx_brdf(nx, ny, nz, vx, vy, vz, wx, wy, wz, mrough[m], cr) * lights_f[k, 6] * e
                            acc_g += ggx_brdf(nx, ny, nz, vx, vy, vz, wx, wy, wz, mrough[m], cg) * lights_f[k, 7] * e
                            acc_b += ggx_brdf(nx, ny, nz, vx, vy, vz, wx, wy, wz, mrough[m], cb) * lights_f[k, 8] * e
                        else:
                            # Glass as a tinted reflector: dielectric Schlick F0 from the ior.
                            f0 = ((mior[m] - 1.0) / (mior[m] + 1.0)) ** 2
                            f = ggx_brdf(nx, ny, nz, vx, vy, vz, wx, wy, wz, GLASS_ALPHA, f0) * e
                            acc_r += cr * f * lights_f[k, 6]
                            acc_g += cg * f * lights_f[k, 7]
                            acc_b += cb * f * lights_f[k, 8]
            out_rgb[i, j, 0] = acc_r * inv_ns
            out_rgb[i, j, 1] = acc_g * inv_ns
            out_rgb[i, j, 2] = acc_b * inv_ns
            out_albedo[i, j, 0] = alb_r * inv_ns
            out_albedo[i, j, 1] = alb_g * inv_ns
            out_albedo[i, j, 2] = alb_b * inv_ns


@njit(cache=True, error_model="numpy")
def render_view(n, slot, aov, row0, row1, view_scene, view_M, view_d, view_cam, scene_tri, scene_light, scene_env,
                scene_envtex, scene_amb, pos, pts, chunks, nrm, uvs, mat_id, obj_id, tri_cull, mtype, mbase, mrad,
                mrough, mior, mtex, mchk, mc1, mc2, mscale, tex_data, tex_info, lights_f, lights_i, maps, shadows,
                bias_texels, ssaa, out_rgb, out_depth, out_normal, out_albedo, out_id, scratch_z, scratch_t,
                scratch_b):
    """Render output rows row0..row1 of view n (rasterize at ssaa x resolution, then shade and resolve
    into out_rgb[n] and the AOV outputs out_depth[aov], ...) using visibility buffers scratch_*[slot]
    ((P, H*s, W*s) float32 depth, int32 triangle, (.., 2) float32 barycentrics), reused across calls so
    big frames do not pay fresh page faults every time. Row bands of one view may run at once: each
    touches only its own rows."""
    zbuf = scratch_z[slot]
    tbuf = scratch_t[slot]
    bbuf = scratch_b[slot]
    zbuf[row0 * ssaa:row1 * ssaa] = np.inf
    tbuf[row0 * ssaa:row1 * ssaa] = -1
    hs = zbuf.shape[0]
    ws = zbuf.shape[1]
    dummy = np.zeros((1, 1), np.int32)
    sc = view_scene[n]
    raster_rows(pts, chunks, scene_tri[sc, 0], scene_tri[sc, 1], tri_cull, view_M[n], view_d[n], ws, hs,
                row0 * ssaa, row1 * ssaa, zbuf, tbuf, bbuf, dummy, MODE_VISIBILITY)
    shade_view(tbuf, bbuf, pos, nrm, uvs, mat_id, obj_id, mtype, mbase, mrad, mrough, mior, mtex, mchk, mc1, mc2,
               mscale, tex_data, tex_info, scene_env[sc], scene_envtex[sc], scene_amb[sc], view_cam[n], lights_f,
               lights_i, scene_light[sc, 0], scene_light[sc, 1], maps, shadows, bias_texels, ssaa, out_rgb[n],
               out_depth[aov], out_normal[aov], out_albedo[aov], out_id[aov], zbuf, row0, row1)


@njit(cache=True, parallel=True, error_model="numpy")
def render_views(bands, aovs, view_scene, view_M, view_d, view_cam, scene_tri, scene_light, scene_env, scene_envtex,
                 scene_amb, pos, pts, chunks, nrm, uvs, mat_id, obj_id, tri_cull, mtype, mbase, mrad, mrough, mior,
                 mtex, mchk, mc1, mc2, mscale, tex_data, tex_info, lights_f, lights_i, maps, shadows, bias_texels, ssaa,
                 out_rgb, out_depth, out_normal, out_albedo, out_id, scratch_z, scratch_t, scratch_b):
    """In parallel: with bands == 1, one view per task, each in its pool thread's buffer (on few
    cores, parallel views beat parallel tiles); with bands > 1 (one view only), that view split
    into ``bands`` row bands sharing buffer 0 (each band culls the triangles outside its rows by
    their chunk's bounding box). scratch_* hold one visibility buffer per pool thread. aovs False:
    out_depth, out_normal, out_albedo and out_id hold one throw-away image per pool thread instead
    of one per view (callers that keep only rgb skip allocating them)."""
    h = out_rgb.shape[1]
    for task in prange(view_scene.shape[0] * bands):
        n = task // bands
        k = task % bands
        slot = numba.get_thread_id() if bands == 1 else 0
        aov = n if aovs else slot
        render_view(n, slot, aov, (h * k) // bands, (h * (k + 1)) // bands, view_scene, view_M, view_d, view_cam,
                    scene_tri, scene_light, scene_env, scene_envtex, scene_amb, pos, pts, chunks, nrm, uvs, mat_id,
                    obj_id, tri_cull, mtype, mbase, mrad, mrough, mior, mtex, mchk, mc1, mc2, mscale, tex_data,
                    tex_info, lights_f, lights_i, maps, shadows, bias_texels, ssaa, out_rgb, out_depth, out_normal,
                    out_albedo, out_id, scratch_z, scratch_t, scratch_b)


@njit(cache=True, nogil=True, error_model="numpy")
def render_views_serial(aovs, view_scene, view_M, view_d, view_cam, scene_tri, scene_light, scene_env, scene_envtex,
                        scene_amb, pos, pts, chunks, nrm, uvs, mat_id, obj_id, tri_cull, mtype, mbase, mrad, mrough,
                        mior, mtex, mchk, mc1, mc2, mscale, tex_data, tex_info, lights_f, lights_i, maps, shadows,
                        bias_texels, ssaa, out_rgb, out_depth, out_normal, out_albedo, out_id, scratch_z, scratch_t,
                        scratch_b):
    """The same as ``render_views`` on one thread, without the GIL: a dataset's worker is handed its
    next shard by a thread of the calling process, which could not run while this process held the
    GIL through a shard's views (~0.3 s), so the worker sat idle meanwhile. (The parallel kernels
    keep the GIL: numba's ``workqueue`` layer must not run two of them at once.)"""
    for n in range(view_scene.shape[0]):
        aov = n if aovs else 0
        render_view(n, 0, aov, 0, out_rgb.shape[1], view_scene, view_M, view_d, view_cam, scene_tri, scene_light,
                    scene_env, scene_envtex, scene_amb, pos, pts, chunks, nrm, uvs, mat_id, obj_id, tri_cull, mtype,
                    mbase, mrad, mrough, mior, mtex, mchk, mc1, mc2, mscale, tex_data, tex_info, lights_f, lights_i,
                    maps, shadows, bias_texels, ssaa, out_rgb, out_depth, out_normal, out_albedo, out_id, scratch_z,
                    scratch_t, scratch_b)


@njit(cache=True, error_model="numpy")
def coverage_count(pts, chunks, tri_cull, M, dvec, width, height):
    """(H, W) int32: how many fragments each pixel receives (no depth test). For watertightness tests."""
    count = np.zeros((height, width), np.int32)
    z = np.zeros((1, 1), np.float32)
    t = np.zeros((1, 1), np.int32)
    b = np.zeros((1, 1, 2), np.float32)
    raster_triangles(pts, chunks, 0, pts.shape[1] // 3, tri_cull, M, dvec, width, height, z, t, b, count, MODE_COUNT)
    return count


@njit(cache=True, error_model="numpy")
def bounds_and_depth(pos, dvec):
    """One pass over (T, 3, 3) corners: lo (3,), hi (3,) float64 and the largest view depth
    ``dvec . (p, 1)`` (used to detect a camera whose near plane is beyond everything)."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    far = -np.inf
    for t in range(pos.shape[0]):
        for k in range(3):
            d = dvec[3]
            for c in range(3):
                x = np.float64(pos[t, k, c])
                lo[c] = min(lo[c], x)
                hi[c] = max(hi[c], x)
                d += dvec[c] * x
            far = max(far, d)
    return lo, hi, far


@njit(cache=True, error_model="numpy")
def chunk_bounds(pos):
    """(C, 2, 3) float64: lo and hi corners of each run of CHUNK consecutive triangles of pos."""
    n = (pos.shape[0] + CHUNK - 1) // CHUNK
    out = np.empty((max(n, 1), 2, 3))
    for ch in range(n):
        for c in range(3):
            out[ch, 0, c] = np.inf
            out[ch, 1, c] = -np.inf
        for t in range(ch * CHUNK, min(pos.shape[0], (ch + 1) * CHUNK)):
            for k in range(3):
                for c in range(3):
                    x = np.float64(pos[t, k, c])
                    out[ch, 0, c] = min(out[ch, 0, c], x)
                    out[ch, 1, c] = max(out[ch, 1, c], x)
    return out


def corner_rows(pos: np.ndarray) -> np.ndarray:
    """(3, 3T) float32 C-contiguous: the corners of (T, 3, 3) triangles ``pos`` coordinate-major
    (all x, then all y, then all z), the layout ``raster_rows`` reads. Contiguous loads let its
    transform loop vectorise: 1.3x faster rasterization than reading (T, 3, 3) directly."""
    return np.ascontiguousarray(np.asarray(pos, np.float32).reshape(-1, 3).T)
