"""Taichi kernels of the path tracer: random numbers, BVH traversal, BSDFs, lights, ``radiance``.

Imported only by ``render.pathtracer`` after Taichi has been initialised. Every kernel takes the
scene as ndarray arguments (never global fields), so one compiled kernel serves every scene size and
Taichi's offline cache can reuse it across processes. Nothing here unrolls over scene data with
``ti.static``: loops over triangles, nodes and lights are ordinary runtime loops.

Packed scene arrays (built by ``render.pathtracer._pack``; triangles are in BVH leaf order):
    tri_v    (3T,) vec3   v0, e1 = v1 - v0, e2 = v2 - v0 of triangle k at 3k, 3k+1, 3k+2
    tri_x    (T,)  vec3   e1 x e2 (its length twice the area): the packet kernel's triangle test (its tree
                          only; elsewhere one placeholder row)
    tri_n    (3T,) vec3   shading normals of the three corners
    tri_uv   (3T,) vec2   uvs of the three corners
    tri_i    (T,)  ivec2  (material id, object id)
    tri_pdf  (T,)  f32    light-sampling density per unit area of an emitter triangle (0 otherwise):
                          P(area group) * P(triangle | group) / area
    node_lo, node_hi (N,) vec3, node_i (N,) ivec3 (a, b, axis): see render.bvh, except that a leaf's
                          third entry is its first block in tri_blk (SIMD leaves)
    tri_blk  (B,)  mat 9 x BLOCK  the leaves' triangles in blocks of BLOCK lanes (row c: v0 xyz, e1 xyz,
                          e2 xyz); block j of a leaf holds its triangles a + BLOCK j + lane (empty lanes 0).
                          SIMD leaves only (the CPU); on a GPU one empty placeholder block
    emit_tri (E,)  i32    emitter triangles; emit_cdf (E,) f32 their cumulative selection probability
    mat_i    (M,)  ivec3  (type, texture, checker)
    mat_f    (M, 16) f32  base rgb, radiance rgb, checker1 rgb, checker2 rgb, roughness, ior, checker scale,
                          two-sided (1) or one-sided (0: the back face is black, as Mitsuba's one-sided BSDFs)
    tex      (P,)  vec3   all texture texels, row-major, row 0 = top of the image
    tex_info (K,)  ivec3  (offset into tex, width, height)
    light_i  (L,)  i32    delta light type (0 point, 1 directional)
    light_f  (3L,) vec3   position, direction (the way light travels), power (intensity or irradiance)
    env_cdf  (H + H*W,) f32  environment map sampling: cumulative probability of its rows, then of the
                          texels within each row (W per row); env_pmf (H*W,) f32 each texel's probability
                          (see render.pathtracer._environment_distribution; placeholders without a map)
Scalars in ``params`` (f32 (8,)): environment radiance, then the environment map's texture index and
the light-group counts (emitter triangles, delta lights, has environment, groups) as floats. Cameras
come per view in ``render_pass``'s ``cams``.
"""

import math

import taichi as ti

from .bvh import BLOCK, MAX_BLOCKS
from .scene import FAR  # the end of an unbounded segment

vec2 = ti.math.vec2
vec3 = ti.math.vec3
ivec2 = ti.math.ivec2
ivec3 = ti.math.ivec3

DIFFUSE, METAL, GLASS, EMITTER = 0, 1, 2, 3
MIS, NEE_ONLY, BSDF_ONLY = 0, 1, 2  # estimator: both strategies weighted, or one alone (tests)
STACK = 64  # traversal stack entries (render.bvh.STACK_SIZE)
RR_DEPTH = 5  # Russian roulette from this many segments on (Mitsuba's rr_depth)
RAY_EPS = 1e-4  # relative origin offset along the geometric normal (avoids self-intersection)
DELTA_ROUGHNESS = 1e-4  # metal below this GGX alpha is a perfect mirror
INV_PI = 1.0 / math.pi
BOX_SLACK = 1.0 + 2.0 * (3 * 2.0 ** -24) / (1 - 3 * 2.0 ** -24)  # 1 + 2 gamma(3) (pbrt-v4's robust slab test)
# Barycentric slack (relative to the triangle): the float32 barycentrics of a ray through an edge
# shared by two triangles carry rounding errors of a few 1e-7 each way, so with exact bounds both
# triangles can reject it and the ray leaks through the seam; 1e-5 of a triangle's size is invisible.
EDGE_SLACK = 1.0e-5
MISS = 1.0e30  # box_entry's "no hit"; rays never reach this far (the loader keeps coordinates within 1e12)

NDF = ti.types.ndarray(dtype=ti.f32, ndim=1)
ND2F = ti.types.ndarray(dtype=ti.f32, ndim=2)
NDI = ti.types.ndarray(dtype=ti.i32, ndim=1)
NDU = ti.types.ndarray(dtype=ti.u32, ndim=1)
NDV3 = ti.types.ndarray(dtype=vec3, ndim=1)
NDV2 = ti.types.ndarray(dtype=vec2, ndim=1)
NDI2 = ti.types.ndarray(dtype=ivec2, ndim=1)
NDI3 = ti.types.ndarray(dtype=ivec3, ndim=1)
NDB = ti.types.ndarray(dtype=ti.types.matrix(9, BLOCK, ti.f32), ndim=1)


# --- counter-based random numbers ---------------------------------------------------------------
@ti.func
def pcg_hash(x):
    """PCG's output permutation of one LCG step (Jarzynski & Olano 2020, 'Hash functions for GPU rendering')."""
    state = x * ti.u32(747796405) + ti.u32(2891336453)
    word = ((state >> ((state >> ti.u32(28)) + ti.u32(4))) ^ state) * ti.u32(277803737)
    return (word >> ti.u32(22)) ^ word


@ti.func
def rng_seed(seed, pixel, sample):
    """The stream of one (seed, pixel, sample): it depends on nothing else (not the thread, not the
    pass), so an image is bit-identical for any thread count, and renders split into other passes
    take the same samples (they sum them in another order: equal to float rounding)."""
    return pcg_hash(sample + pcg_hash(pixel + pcg_hash(seed)))


@ti.func
def rand(state: ti.template()):
    """Next uniform float in [0, 1) from the stream (one PCG step per dimension)."""
    state = state * ti.u32(747796405) + ti.u32(2891336453)
    word = ((state >> ((state >> ti.u32(28)) + ti.u32(4))) ^ state) * ti.u32(277803737)
    word = (word >> ti.u32(22)) ^ word
    return ti.f32(word >> ti.u32(8)) * (1.0 / 16777216.0)


# --- geometry helpers -----------------------------------------------------------------------------
@ti.func
def onb(n):
    """Two unit tangents completing n to a right-handed frame (Duff et al. 2017, branchless)."""
    sign = 1.0 if n.z >= 0.0 else -1.0
    a = -1.0 / (sign + n.z)
    b = n.x * n.y * a
    t = vec3(1.0 + sign * n.x * n.x * a, sign * b, -sign * n.x)
    s = vec3(b, sign + n.y * n.y * a, -n.y)
    return t, s


@ti.func
def offset_origin(p, ng, w):
    """Move p off the surface to the side w leaves on, scaled to p's magnitude (float32 spacing)."""
    scale = RAY_EPS * (1.0 + ti.max(ti.abs(p.x), ti.abs(p.y), ti.abs(p.z)))
    side = 1.0 if ng.dot(w) >= 0.0 else -1.0
    return p + ng * (scale * side)


@ti.func
def power_heuristic(a, b):
    a2 = a * a
    return a2 / (a2 + b * b) if a2 > 0.0 else 0.0


@ti.func
def max3(v):
    return ti.max(v.x, v.y, v.z)


# --- BVH traversal --------------------------------------------------------------------------------
def _on_gpu() -> bool:
    """Whether the kernel being compiled is for CUDA (read at compile time, inside ti.static)."""
    return ti.lang.impl.current_cfg().arch == ti.cuda


@ti.func
def lo_of(a, b):
    """min(a, b) for numbers, elementwise on vectors. On the CPU by a select, which is one x86
    minps: NaN-aware ti.min costs two more instructions per operation there (in box_entry and
    block_hit together: the Cornell box in the one-path kernel +12 %, showcase +16 %), and none of
    its callers' operands can be NaN (1/d is finite). On a GPU ti.min is one instruction already,
    and the select is not measured there."""
    r = a
    if ti.static(_on_gpu()):
        r = ti.min(a, b)
    else:
        r = ti.select(a < b, a, b)
    return r


@ti.func
def hi_of(a, b):
    r = a
    if ti.static(_on_gpu()):
        r = ti.max(a, b)
    else:
        r = ti.select(a > b, a, b)
    return r


@ti.func
def box_entry(lo, hi, o, inv, t_max):
    """Slab test: the distance where the ray enters the box, or MISS when it misses within t_max.
    (Finite sentinels only: the kernels are compiled with fast math, which may assume no infinities.)
    Conservative, as pbrt-v4's: each slab distance (b - o) / d is within 1.5 ulp of the exact one, so
    the exit distance stretched by BOX_SLACK cannot fall below the entry of a box the ray touches. A
    wall's box is flat, and where two walls meet a ray through the crease enters and leaves both
    boxes at the same distance: computed as lo / d - o / d (one operation less) the two rounded
    apart and 1 % of rays aimed at a closed room's creases left it."""
    ta = (lo - o) * inv
    tb = (hi - o) * inv
    near = lo_of(ta, tb)
    far = hi_of(ta, tb)
    t0 = hi_of(hi_of(hi_of(near.x, near.y), near.z), 0.0)
    t1 = lo_of(lo_of(lo_of(far.x, far.y), far.z) * BOX_SLACK, t_max)
    return t0 if t0 <= t1 else MISS


@ti.func
def block_hit(o, d, b, best_t, tri_blk: ti.template()):
    """The nearest of block b's BLOCK triangles hit in (0, best_t): (t, lane, b1, b2), lane -1 if none.

    Möller–Trumbore on all lanes at once, as BLOCK-wide vectors that LLVM's SLP vectoriser turns
    into SIMD instructions on the CPU (no branch per lane; the barycentrics stay scaled by |det|
    until the one division). An empty lane (all zero) has det = 0 and never hits.
    The mask on b (MAX_BLOCKS - 1) changes nothing for a valid index, but it tells LLVM the 32-bit
    index arithmetic cannot overflow; without it the block's consecutive floats are read by
    gathers."""
    m = tri_blk[b & (MAX_BLOCKS - 1)]
    v0x, v0y, v0z = m[0, :], m[1, :], m[2, :]
    e1x, e1y, e1z = m[3, :], m[4, :], m[5, :]
    e2x, e2y, e2z = m[6, :], m[7, :], m[8, :]
    px = d.y * e2z - d.z * e2y
    py = d.z * e2x - d.x * e2z
    pz = d.x * e2y - d.y * e2x
    det = e1x * px + e1y * py + e1z * pz
    sgn = ti.select(det < 0.0, -1.0, 1.0)
    adet = det * sgn
    sx = o.x - v0x
    sy = o.y - v0y
    sz = o.z - v0z
    u = (sx * px + sy * py + sz * pz) * sgn
    qx = sy * e1z - sz * e1y
    qy = sz * e1x - sx * e1z
    qz = sx * e1y - sy * e1x
    v = (d.x * qx + d.y * qy + d.z * qz) * sgn
    t = (e2x * qx + e2y * qy + e2z * qz) * sgn
    slack = adet * EDGE_SLACK
    hit = (adet > 0.0) & (u >= -slack) & (v >= -slack) & (u + v <= adet + slack) & (t > 0.0) & (t < best_t * adet)
    inv = 1.0 / ti.select(hit, adet, 1.0)
    tl = ti.select(hit, t * inv, MISS)
    t_hit = tl[0]  # tl.min() by selects (lo_of)
    for l in ti.static(range(1, BLOCK)):
        t_hit = lo_of(t_hit, tl[l])
    # the first lane at the nearest distance, and its barycentrics, by vector reductions only
    # (extracting lanes one by one made LLVM leave the whole test scalar)
    ids = ti.Vector([l for l in range(BLOCK)], ti.i32)
    lane = ti.select(hit & (tl == t_hit), ids, BLOCK).min()
    pick = ids == lane
    b1 = ti.select(pick, u * inv, 0.0).sum()
    b2 = ti.select(pick, v * inv, 0.0).sum()
    if lane == BLOCK:
        lane = -1
    return t_hit, lane, b1, b2


@ti.func
def intersect(o, d, t_max, any_hit: ti.template(), node_lo: ti.template(), node_hi: ti.template(),
              node_i: ti.template(), tri_v: ti.template(), tri_blk: ti.template(), simd: ti.template()):
    """Closest hit (or, with any_hit, any hit) in (0, t_max). Returns (t, triangle, b1, b2); triangle
    -1 when nothing is hit. Both faces are hit: culling belongs to the materials, not the geometry.

    With simd (the CPU), a leaf's triangles are tested BLOCK at a time (block_hit, from tri_blk);
    without (a GPU, whose threads are SIMT lanes already), one at a time from tri_v with early exits
    (the BVH is then built for that: render.pathtracer._simd_leaves). At an inner node both children's
    boxes are tested: the nearer one is entered and the other is pushed with its entry distance, so
    a pushed node that now lies beyond the closest hit is skipped when popped (front-to-back order
    shrinks t_max early)."""
    # a zero direction component becomes a tiny one: 1/d stays finite (fast math assumes no inf)
    d_safe = ti.select(ti.abs(d) < 1e-20, ti.select(d < 0.0, -1e-20, 1e-20), d)
    inv = 1.0 / d_safe
    best_t = t_max
    best = -1
    bu = 0.0
    bv = 0.0
    stack = ti.Vector([0] * STACK, ti.i32)
    stack_t = ti.Vector([0.0] * STACK, ti.f32)
    sp = 0
    node = 0
    done = box_entry(node_lo[0], node_hi[0], o, inv, best_t) >= MISS
    while not done:
        info = node_i[node]
        if info[1] > 0:
            if ti.static(simd):
                # the leaf's triangles, BLOCK at a time (block j holds triangles a + BLOCK j + lane)
                for j in range((info[1] + BLOCK - 1) // BLOCK):
                    t, lane, u, v = block_hit(o, d, info[2] + j, best_t, tri_blk)
                    if lane >= 0:
                        best_t = t
                        best = info[0] + BLOCK * j + lane
                        bu = u
                        bv = v
            else:
                for k in range(info[0], info[0] + info[1]):
                    v0 = tri_v[3 * k]
                    e1 = tri_v[3 * k + 1]
                    e2 = tri_v[3 * k + 2]
                    # Möller–Trumbore with the barycentrics scaled by |det|: the division is paid
                    # only for an accepted hit, not for each rejected triangle
                    pv = d.cross(e2)
                    det = e1.dot(pv)
                    if det != 0.0:
                        sgn = 1.0 if det > 0.0 else -1.0
                        adet = det * sgn
                        slack = adet * EDGE_SLACK
                        s = o - v0
                        u = s.dot(pv) * sgn
                        if u >= -slack and u <= adet + slack:
                            q = s.cross(e1)
                            v = d.dot(q) * sgn
                            if v >= -slack and u + v <= adet + slack:
                                t = e2.dot(q) * sgn
                                if t > 0.0 and t < best_t * adet:
                                    idet = 1.0 / adet
                                    best_t = t * idet
                                    best = k
                                    bu = u * idet
                                    bv = v * idet
            if any_hit and best >= 0:
                done = True
            # pop the next node that still lies in front of the closest hit
            node = -1
            while sp > 0 and node < 0:
                sp -= 1
                if stack_t[sp] < best_t:
                    node = stack[sp]
            if node < 0:
                done = True
        else:
            left = node + 1
            right = info[0]
            tl = box_entry(node_lo[left], node_hi[left], o, inv, best_t)
            tr = box_entry(node_lo[right], node_hi[right], o, inv, best_t)
            if tl < MISS and tr < MISS:
                if tl <= tr:
                    node = left
                    stack[sp] = right
                    stack_t[sp] = tr
                else:
                    node = right
                    stack[sp] = left
                    stack_t[sp] = tl
                sp += 1
            elif tl < MISS:
                node = left
            elif tr < MISS:
                node = right
            else:
                # the same pop as after a leaf: one shared pop after the if/else measured 11 % slower
                # on the Cornell box and 21 % on a 328k-triangle mesh (Taichi CPU), so it stays twice
                node = -1
                while sp > 0 and node < 0:
                    sp -= 1
                    if stack_t[sp] < best_t:
                        node = stack[sp]
                if node < 0:
                    done = True
    return best_t, best, bu, bv


# --- textures and the environment ----------------------------------------------------------------
@ti.func
def tex_fetch(tex: ti.template(), tex_info: ti.template(), tid, x, y, wrap_y: ti.template()):
    """Bilinear lookup at continuous texel coordinates (x right, y down; texel centres at +0.5),
    repeating in x and repeating (textures) or clamped (environment) in y."""
    info = tex_info[tid]
    w = info[1]
    h = info[2]
    fx = x - 0.5
    fy = y - 0.5
    x0 = ti.floor(fx)
    y0 = ti.floor(fy)
    ax = fx - x0
    ay = fy - y0
    ix0 = ti.i32(x0)
    iy0 = ti.i32(y0)
    c = vec3(0.0)
    for dy, dx in ti.static(ti.ndrange(2, 2)):
        ix = (ix0 + dx) % w
        iy = iy0 + dy
        if ti.static(wrap_y):
            iy = iy % h
        else:
            iy = ti.min(ti.max(iy, 0), h - 1)
        wgt = (ax if dx == 1 else 1.0 - ax) * (ay if dy == 1 else 1.0 - ay)
        c += wgt * tex[info[0] + iy * w + ix]
    return c


@ti.func
def environment(d, env_rad, env_tex, tex: ti.template(), tex_info: ti.template()):
    """Radiance arriving along -d from infinitely far (the scene's environment, W m^-2 sr^-1)."""
    L = env_rad
    if env_tex >= 0:
        info = tex_info[env_tex]
        # Mitsuba's envmap: u = atan2(d_x, -d_z) / 2 pi (column centres at (j + 0.5) / W, wrapping),
        # v = acos(d_y) / pi with row i centred at v = i / (H - 1) (rows 0 and H - 1 at the poles)
        u = ti.atan2(d.x, -d.z) * (0.5 * INV_PI)
        u -= ti.floor(u)
        v = ti.acos(ti.min(ti.max(d.y, -1.0), 1.0)) * INV_PI
        L = L * tex_fetch(tex, tex_info, env_tex, u * info[1], v * (info[2] - 1) + 0.5, False)
    return L


@ti.func
def cdf_find(cdf: ti.template(), start, n, u):
    """The first index k in cdf[start : start + n] with u <= cdf[start + k] (binary search), and u
    rescaled to [0, 1) within that bin (reused as a fresh uniform)."""
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf[start + mid] < u:
            lo = mid + 1
        else:
            hi = mid
    c0 = 0.0
    if lo > 0:
        c0 = cdf[start + lo - 1]
    f = (u - c0) / ti.max(cdf[start + lo] - c0, 1e-12)
    return lo, ti.min(ti.max(f, 0.0), 0.99999994)


@ti.func
def env_density(env_pmf: ti.template(), texel, w, h, sin_theta):
    """Solid-angle density of a direction in a texel of probability env_pmf[texel]: the texel's
    density in (u, v), w * h times its probability, over the Jacobian 2 pi^2 sin(theta)."""
    pdf = 0.0
    if sin_theta > 0.0:
        pdf = env_pmf[texel] * (w * h) / (2.0 * math.pi * math.pi * sin_theta)
    return pdf


@ti.func
def env_sample(u1, u2, env_cdf: ti.template(), env_pmf: ti.template(), w, h):
    """A direction drawn from the environment map's distribution (a row by its share, a texel within
    the row by its share, a uniform point in the texel) and its solid-angle density."""
    i, fv = cdf_find(env_cdf, 0, h, u1)
    j, fu = cdf_find(env_cdf, h + i * w, w, u2)
    theta = (i + fv) / h * math.pi
    phi = 2.0 * math.pi * (j + fu) / w  # u = atan2(d.x, -d.z) / (2 pi), as environment()
    st = ti.sin(theta)
    d = vec3(st * ti.sin(phi), ti.cos(theta), -st * ti.cos(phi))
    return d, env_density(env_pmf, i * w + j, w, h, st)


@ti.func
def env_pdf(d, env_pmf: ti.template(), w, h):
    """env_sample's solid-angle density of direction d (unit)."""
    u = ti.atan2(d.x, -d.z) * (0.5 * INV_PI)
    u -= ti.floor(u)
    v = ti.acos(ti.min(ti.max(d.y, -1.0), 1.0)) * INV_PI
    j = ti.min(ti.i32(u * w), w - 1)
    i = ti.min(ti.i32(v * h), h - 1)
    st = ti.sqrt(ti.max(1.0 - d.y * d.y, 0.0))
    return env_density(env_pmf, i * w + j, w, h, st)


@ti.func
def base_color(m, uv, mat_i: ti.template(), mat_f: ti.template(), tex: ti.template(), tex_info: ti.template()):
    """The material's base colour at uv: texture (v = 0 at the image's bottom row), checker
    (color1 where floor(u s) + floor(v s) is even) or the constant."""
    mi = mat_i[m]
    c = vec3(mat_f[m, 0], mat_f[m, 1], mat_f[m, 2])
    if mi[1] >= 0:
        info = tex_info[mi[1]]
        c = tex_fetch(tex, tex_info, mi[1], uv.x * info[1], (1.0 - uv.y) * info[2], True)
    elif mi[2] != 0:
        s = mat_f[m, 14]
        parity = (ti.i32(ti.floor(uv.x * s)) + ti.i32(ti.floor(uv.y * s))) & 1
        if parity == 0:
            c = vec3(mat_f[m, 6], mat_f[m, 7], mat_f[m, 8])
        else:
            c = vec3(mat_f[m, 9], mat_f[m, 10], mat_f[m, 11])
    return c


# --- BSDFs (local frame: z is the shading normal on the side of wo) -----------------------------
@ti.func
def schlick(f0, cos_theta):
    m = ti.max(1.0 - cos_theta, 0.0)
    m2 = m * m
    return f0 + (1.0 - f0) * (m2 * m2 * m)


@ti.func
def fresnel_dielectric(cos_i, eta):
    """Unpolarised Fresnel reflectance for a ray arriving with cos_i > 0 at an interface with relative
    index eta = n_t / n_i. Returns (F, cos_t); F = 1 under total internal reflection."""
    sin_t2 = (1.0 - cos_i * cos_i) / (eta * eta)
    F = 1.0
    cos_t = 0.0
    if sin_t2 < 1.0:
        cos_t = ti.sqrt(1.0 - sin_t2)
        rs = (cos_i - eta * cos_t) / (cos_i + eta * cos_t)
        rp = (eta * cos_i - cos_t) / (eta * cos_i + cos_t)
        F = 0.5 * (rs * rs + rp * rp)
    return F, cos_t


@ti.func
def ggx_d(h, alpha):
    a2 = alpha * alpha
    t = (h.x * h.x + h.y * h.y) / a2 + h.z * h.z
    return 1.0 / (math.pi * a2 * t * t)


@ti.func
def ggx_g1(w, alpha):
    """Smith masking of the GGX distribution for direction w (local frame)."""
    z2 = w.z * w.z
    tan2 = ti.max(1.0 - z2, 0.0) / ti.max(z2, 1e-12)
    return 2.0 / (1.0 + ti.sqrt(1.0 + alpha * alpha * tan2))


@ti.func
def ggx_sample_vndf(wo, alpha, u1, u2):
    """A microfacet normal drawn from the distribution of normals visible from wo (Heitz 2018)."""
    vh = vec3(alpha * wo.x, alpha * wo.y, wo.z).normalized()
    lensq = vh.x * vh.x + vh.y * vh.y
    t1 = vec3(1.0, 0.0, 0.0)
    if lensq > 0.0:
        t1 = vec3(-vh.y, vh.x, 0.0) / ti.sqrt(lensq)
    t2 = vh.cross(t1)
    r = ti.sqrt(u1)
    phi = 2.0 * math.pi * u2
    p1 = r * ti.cos(phi)
    p2 = r * ti.sin(phi)
    s = 0.5 * (1.0 + vh.z)
    p2 = (1.0 - s) * ti.sqrt(ti.max(1.0 - p1 * p1, 0.0)) + s * p2
    nh = p1 * t1 + p2 * t2 + ti.sqrt(ti.max(1.0 - p1 * p1 - p2 * p2, 0.0)) * vh
    return vec3(alpha * nh.x, alpha * nh.y, ti.max(nh.z, 1e-7)).normalized()


@ti.func
def bsdf_eval(mtype, base, alpha, wo, wi):
    """f(wo, wi) * |cos theta_i| and the density with which bsdf_sample picks wi (solid angle), for
    the non-delta lobes; zero for glass and mirrors (they are only reached by sampling)."""
    fc = vec3(0.0)
    pdf = 0.0
    if wo.z > 0.0 and wi.z > 0.0:
        if mtype == DIFFUSE or mtype == EMITTER:
            fc = base * (wi.z * INV_PI)
            pdf = wi.z * INV_PI
        elif mtype == METAL and alpha >= DELTA_ROUGHNESS:
            h = (wo + wi).normalized()
            d = ggx_d(h, alpha)
            g1o = ggx_g1(wo, alpha)
            fc = schlick(base, wi.dot(h)) * (d * g1o * ggx_g1(wi, alpha) / (4.0 * wo.z))
            pdf = g1o * d / (4.0 * wo.z)
    return fc, pdf


@ti.func
def bsdf_sample(mtype, base, alpha, ior, entering, wo, u1, u2, u3):
    """Draw wi. Returns (wi, weight = f |cos| / pdf, pdf, is_delta, eta) where eta is the relative
    index crossed (1 unless refracted). Weight 0 means the path ends."""
    wi = vec3(0.0, 0.0, 1.0)
    weight = vec3(0.0)
    pdf = 0.0
    delta = 0
    eta_out = 1.0
    if mtype == DIFFUSE or mtype == EMITTER:
        # cosine-weighted hemisphere: the weight is the albedo exactly
        r = ti.sqrt(u1)
        phi = 2.0 * math.pi * u2
        wi = vec3(r * ti.cos(phi), r * ti.sin(phi), ti.sqrt(ti.max(1.0 - u1, 0.0)))
        pdf = wi.z * INV_PI
        if wo.z > 0.0 and pdf > 0.0:
            weight = base
    elif mtype == METAL:
        if alpha < DELTA_ROUGHNESS:
            wi = vec3(-wo.x, -wo.y, wo.z)
            pdf = 1.0
            delta = 1
            if wo.z > 0.0:
                weight = schlick(base, wo.z)
        else:
            h = ggx_sample_vndf(wo, alpha, u1, u2)
            wi = 2.0 * wo.dot(h) * h - wo
            if wo.z > 0.0 and wi.z > 0.0:
                pdf = ggx_g1(wo, alpha) * ggx_d(h, alpha) / (4.0 * wo.z)
                # f cos / pdf with VNDF sampling = F * G1(wi)  (separable Smith masking-shadowing)
                weight = schlick(base, wi.dot(h)) * ggx_g1(wi, alpha)
    elif mtype == GLASS:
        delta = 1
        pdf = 1.0
        eta = ior if entering else 1.0 / ior
        # |cos|: wo can fall below an interpolated shading normal near a silhouette while it is on
        # the geometric normal's side; the signed cosine there gave Fresnel reflectances above 1
        cos_i = ti.abs(wo.z)
        F, cos_t = fresnel_dielectric(cos_i, eta)
        if u3 < F:  # choose reflection with probability F: the Fresnel factor cancels in the weight
            wi = vec3(-wo.x, -wo.y, wo.z)
            weight = base
        else:
            wi = vec3(-wo.x / eta, -wo.y / eta, -cos_t)
            # radiance is compressed into a smaller solid angle when entering a denser medium
            weight = base / (eta * eta)
            eta_out = eta
    return wi, weight, pdf, delta, eta_out


# --- surface interaction --------------------------------------------------------------------------
@ti.func
def corners(arr: ti.template(), k, b1, b2):
    """The value at barycentrics (b1, b2) of triangle k's corner values arr[3k], arr[3k + 1], arr[3k + 2]
    (normals, uvs)."""
    return (1.0 - b1 - b2) * arr[3 * k] + b1 * arr[3 * k + 1] + b2 * arr[3 * k + 2]


@ti.func
def surface(o, d, t, k, b1, b2, tri_v: ti.template(), tri_n: ti.template(), tri_uv: ti.template()):
    """Hit point p, unit geometric normal ng (front face, unflipped), interpolated shading normal
    ns (unflipped) and uv of triangle k at barycentrics (b1, b2)."""
    e1 = tri_v[3 * k + 1]
    e2 = tri_v[3 * k + 2]
    p = o + t * d
    ng = e1.cross(e2).normalized()
    ns = corners(tri_n, k, b1, b2)
    nl = ns.norm()
    if nl > 0.0:
        ns = ns / nl
    else:
        ns = ng
    return p, ng, ns, corners(tri_uv, k, b1, b2)


@ti.func
def light_groups(params: ti.template()):
    """From ``params``: the counts of emitter triangles and delta lights, whether there is an
    environment, the number of light groups, the probability of picking each, the number of
    groups the emitter triangles make (0 or 1), and next-event estimation's density for a
    constant environment (uniform over the sphere, times the group's probability)."""
    n_emit = ti.i32(params[4])
    n_groups = ti.i32(params[7])
    p_group = 1.0 / ti.max(ti.f32(n_groups), 1.0)
    return (n_emit, ti.i32(params[5]), ti.i32(params[6]), n_groups, p_group, 1 if n_emit > 0 else 0,
            p_group / (4.0 * math.pi))


@ti.func
def radiance(o, d, fwd, near, far, state: ti.template(), max_depth, mode, pix, aov, depth_aov: ti.template(),
             normal_aov: ti.template(), albedo_aov: ti.template(), obj_aov: ti.template(), tri_v: ti.template(), tri_n: ti.template(), tri_uv: ti.template(), tri_i: ti.template(),
             tri_pdf: ti.template(), node_lo: ti.template(), node_hi: ti.template(), node_i: ti.template(),
             tri_blk: ti.template(), emit_tri: ti.template(), emit_cdf: ti.template(), mat_i: ti.template(),
             mat_f: ti.template(),
             tex: ti.template(), tex_info: ti.template(), light_i: ti.template(), light_f: ti.template(),
             env_cdf: ti.template(), env_pmf: ti.template(), params: ti.template(), simd: ti.template()):
    """Li(o, d): radiance arriving at o from direction -d, by unidirectional path tracing with
    next-event estimation; both strategies are combined by the power heuristic (mode MIS).
    The camera ray sees only what lies between the planes at near and far along fwd (the camera's
    clip planes, as Mitsuba's sensors and the rasterizer have them); later segments are unbounded.

    Light groups, each picked with probability 1 / n_groups by next-event estimation:
    the emitter triangles together (one picked by power, a point on it uniformly by area), each
    delta light, and the environment (a direction drawn from its map's brightness, or uniformly
    distributed for a constant environment)."""
    env_rad = vec3(params[0], params[1], params[2])
    env_tex = ti.i32(params[3])
    n_emit, n_delta, has_env, n_groups, p_group, area_group, env_uniform_pdf = light_groups(params)
    env_w = 1
    env_h = 1
    if env_tex >= 0:
        env_w = tex_info[env_tex][1]
        env_h = tex_info[env_tex][2]

    L = vec3(0.0)  # radiance gathered so far
    beta = vec3(1.0)  # path throughput: product of f |cos| / pdf (and 1 / RR survival)
    eta_acc = 1.0  # product of relative indices crossed (undoes radiance scaling in RR)
    prev_pdf = 1.0  # solid-angle pdf of the BSDF sample that made this segment
    prev_delta = 1  # that sample was a delta lobe (or the camera): no MIS for what it hits
    depth = 0  # segments traced before the current one
    cos_f = d.dot(fwd)
    o = o + d * (near / cos_f)  # the camera ray starts on the near plane ...
    t_seg = (far - near) / cos_f  # ... and ends on the far one
    while True:
        t, k, b1, b2 = intersect(o, d, t_seg, False, node_lo, node_hi, node_i, tri_v, tri_blk, simd)
        t_seg = FAR
        if k < 0:
            if aov:
                depth_aov[pix] = ti.math.inf
                normal_aov[pix] = vec3(0.0)
                albedo_aov[pix] = vec3(0.0)
                obj_aov[pix] = -1
            elif has_env != 0 and max_depth != 0:
                Le = environment(d, env_rad, env_tex, tex, tex_info)
                w = 1.0
                if prev_delta == 0:
                    if mode == MIS:
                        pdf_env = env_uniform_pdf
                        if env_tex >= 0:
                            pdf_env = p_group * env_pdf(d, env_pmf, env_w, env_h)
                        w = power_heuristic(prev_pdf, pdf_env)
                    elif mode == NEE_ONLY:
                        w = 0.0
                L += beta * Le * w
            break
        p, ng, ns, uv = surface(o, d, t, k, b1, b2, tri_v, tri_n, tri_uv)
        m = tri_i[k][0]
        mtype = mat_i[m][0]
        front = d.dot(ng) < 0.0
        base = base_color(m, uv, mat_i, mat_f, tex, tex_info)
        if aov:
            depth_aov[pix] = near + t * cos_f
            normal_aov[pix] = ns
            albedo_aov[pix] = base
            obj_aov[pix] = tri_i[k][1]
            break
        if mtype == EMITTER and front and max_depth != 0:
            Le = vec3(mat_f[m, 3], mat_f[m, 4], mat_f[m, 5])
            w = 1.0
            if prev_delta == 0:
                if mode == MIS:
                    # density with which NEE would have picked this point, per solid angle at o
                    pdf_light = tri_pdf[k] * t * t / ti.abs(d.dot(ng))
                    w = power_heuristic(prev_pdf, pdf_light)
                elif mode == NEE_ONLY:
                    w = 0.0
            L += beta * Le * w
        if max_depth >= 0 and depth + 1 >= max_depth:
            break  # (max_depth 0 ends here too, with nothing gathered: a black image, as in Mitsuba)
        if not front and mat_f[m, 15] == 0.0 and mtype != GLASS:
            # the back of a one-sided material (emitters by default) reflects nothing; it still
            # occludes. Glass has two sides by nature (rays inside it meet its back faces).
            break
        if (tri_n[3 * k] + tri_n[3 * k + 1] + tri_n[3 * k + 2]).dot(ng) < 0.0:
            # the mesh's normals point against its winding (clockwise faces with outward normals):
            # shade with them turned to the winding's side, as the rasterizer does (otherwise wo
            # lies below the shading normal on both sides and the surface renders black)
            ns = -ns
        # two-sided materials scatter on both sides: work on the side the ray arrived from
        if not front:
            ng = -ng
            ns = -ns
        alpha = mat_f[m, 12]
        ior = mat_f[m, 13]
        ts, bs = onb(ns)
        wo_w = -d
        wo = vec3(wo_w.dot(ts), wo_w.dot(bs), wo_w.dot(ns))
        is_delta = mtype == GLASS or (mtype == METAL and alpha < DELTA_ROUGHNESS)
        # ---- next-event estimation: one light sample per vertex ----
        # (a black diffuse surface reflects nothing; a black metal still does, by Fresnel at grazing angles)
        if not is_delta and n_groups > 0 and (mtype == METAL or max3(base) > 0.0):
            g = ti.min(ti.i32(rand(state) * n_groups), n_groups - 1)
            ul1 = rand(state)
            ul2 = rand(state)
            wi_w = vec3(0.0, 1.0, 0.0)
            dist = 1.0e30
            target = vec3(0.0)  # the sampled point of an area or point light (dist < 1e30)
            Li = vec3(0.0)  # radiance (or delta light's contribution) divided by its pdf
            pdf_l = 0.0
            light_delta = 0
            if g < area_group:
                if mode != BSDF_ONLY:
                    # pick an emitter triangle by its share of emitted power (binary search of the CDF)
                    pick, _ = cdf_find(emit_cdf, 0, n_emit, rand(state))
                    ke = emit_tri[pick]
                    su = ti.sqrt(ul1)
                    target = tri_v[3 * ke] + (1.0 - su) * tri_v[3 * ke + 1] + (su * ul2) * tri_v[3 * ke + 2]
                    to_l = target - p
                    d2 = to_l.dot(to_l)
                    dist = ti.sqrt(d2)
                    wi_w = to_l / dist
                    ngl = tri_v[3 * ke + 1].cross(tri_v[3 * ke + 2]).normalized()
                    cos_l = -wi_w.dot(ngl)
                    if cos_l > 0.0:  # emitters shine from their front face only
                        pdf_l = tri_pdf[ke] * d2 / cos_l
                        me = tri_i[ke][0]
                        Li = vec3(mat_f[me, 3], mat_f[me, 4], mat_f[me, 5]) / pdf_l
            elif g < area_group + n_delta:
                li = g - area_group
                light_delta = 1
                if light_i[li] == 0:  # point: intensity / distance^2
                    target = light_f[3 * li]
                    to_l = target - p
                    d2 = to_l.dot(to_l)
                    dist = ti.sqrt(d2)
                    wi_w = to_l / dist
                    Li = light_f[3 * li + 2] / (d2 * p_group)
                else:  # directional: irradiance arriving against its travel direction
                    wi_w = -light_f[3 * li + 1].normalized()
                    Li = light_f[3 * li + 2] / p_group
            else:
                if mode != BSDF_ONLY:
                    if env_tex >= 0:
                        wi_w, pdf_dir = env_sample(ul1, ul2, env_cdf, env_pmf, env_w, env_h)
                        pdf_l = p_group * pdf_dir
                    else:
                        z = 1.0 - 2.0 * ul1
                        r = ti.sqrt(ti.max(1.0 - z * z, 0.0))
                        phi = 2.0 * math.pi * ul2
                        wi_w = vec3(r * ti.cos(phi), r * ti.sin(phi), z)
                        pdf_l = env_uniform_pdf
                    if pdf_l > 0.0:
                        Li = environment(wi_w, env_rad, env_tex, tex, tex_info) / pdf_l
            if max3(Li) > 0.0:
                wi = vec3(wi_w.dot(ts), wi_w.dot(bs), wi_w.dot(ns))
                fc, pdf_b = bsdf_eval(mtype, base, alpha, wo, wi)
                if max3(fc) > 0.0:
                    w = 1.0
                    if light_delta == 0 and mode == MIS:
                        w = power_heuristic(pdf_l, pdf_b)
                    so = offset_origin(p, ng, wi_w)
                    sd = wi_w
                    t_sh = FAR
                    if dist < 1.0e30:
                        # aimed and measured from the offset origin: measured from p, the ray would
                        # stop past the light's surface when p lies close to the light's plane (or far
                        # from the scene origin, where the offset is larger) and hit the light itself
                        to_s = target - so
                        t_sh = ti.max(to_s.norm(), 1e-30)
                        sd = to_s / t_sh
                        t_sh *= 1.0 - 1e-3
                    _, blocker, _, _ = intersect(so, sd, t_sh, True, node_lo, node_hi, node_i, tri_v, tri_blk,
                                                 simd)
                    if blocker < 0:
                        L += beta * fc * Li * w
        # ---- BSDF sampling: the next segment ----
        u1 = rand(state)
        u2 = rand(state)
        u3 = rand(state)
        wi, weight, pdf, delta, eta = bsdf_sample(mtype, base, alpha, ior, front, wo, u1, u2, u3)
        if max3(weight) <= 0.0:
            break
        beta *= weight
        eta_acc *= eta
        prev_pdf = pdf
        prev_delta = delta
        d = (wi.x * ts + wi.y * bs + wi.z * ns).normalized()
        o = offset_origin(p, ng, d)
        depth += 1
        if depth >= RR_DEPTH:
            # Russian roulette: continue with probability q and divide by it (unbiased); eta^2
            # removes the radiance scaling of refraction from the decision, as Mitsuba does
            q = ti.min(max3(beta) * eta_acc * eta_acc, 0.95)
            if rand(state) >= q:
                break
            beta /= q
    return L


# --- kernels --------------------------------------------------------------------------------------
@ti.func
def camera_ray(cams: ti.template(), v, px, py, width, height):
    """Ray of view v through raster point (px, py); cams (V, 14): origin, right * tan(fov/2) * aspect,
    up * tan(fov/2), forward, near, far."""
    origin = vec3(cams[v, 0], cams[v, 1], cams[v, 2])
    right = vec3(cams[v, 3], cams[v, 4], cams[v, 5])
    up = vec3(cams[v, 6], cams[v, 7], cams[v, 8])
    fwd = vec3(cams[v, 9], cams[v, 10], cams[v, 11])
    sx = 2.0 * px / width - 1.0
    sy = 1.0 - 2.0 * py / height
    return origin, (sx * right + sy * up + fwd).normalized(), fwd


@ti.kernel
def render_pass(accum: NDV3, depth: NDF, normal: NDV3, albedo: NDV3, obj: NDI, width: ti.i32, height: ti.i32,
                views: ti.i32, sample0: ti.i32, spp: ti.i32, seeds: NDU, cams: ND2F, max_depth: ti.i32,
                mode: ti.i32, tri_v: NDV3, tri_n: NDV3, tri_uv: NDV2, tri_i: NDI2, tri_pdf: NDF,
                node_lo: NDV3, node_hi: NDV3, node_i: NDI3, tri_blk: NDB, emit_tri: NDI, emit_cdf: NDF,
                mat_i: NDI3, mat_f: ND2F, tex: NDV3, tex_info: NDI3, light_i: NDI, light_f: NDV3,
                env_cdf: NDF, env_pmf: NDF, params: NDF, simd: ti.template()):
    """Add ``spp`` samples (indices sample0 ..) of every pixel of ``views`` views of one scene to accum
    (V*H*W,) vec3 (sum of radiance); view v has camera cams[v] and seed seeds[v], and its pixels are
    the same numbers whether it is rendered alone or with others (the random stream of a sample
    depends on (seed, pixel, sample) only). Box pixel filter: each sample is uniform over its pixel.
    The pass that starts at sample 0 also writes the first-hit AOVs (depth, normal, albedo, obj;
    (V*H*W,) each) through the pixel centres. One kernel does both so that a warm start loads a
    single kernel from the offline cache. simd: the BVH's leaf layout (see intersect)."""
    for q in range(views * width * height):
        v = q // (width * height)
        pix = q % (width * height)
        row = pix // width
        col = pix % width
        acc = vec3(0.0)
        # s = -1 (first pass only) is the AOV ray through the pixel centre; it shares radiance()'s
        # single inlined copy of the traversal instead of compiling another one
        for s in range(-1 if sample0 == 0 else 0, spp):
            state = rng_seed(seeds[v], ti.u32(pix), ti.u32(sample0 + s))
            jx = 0.5
            jy = 0.5
            if s >= 0:
                jx = rand(state)
                jy = rand(state)
            o, d, fwd = camera_ray(cams, v, col + jx, row + jy, width, height)
            acc += radiance(o, d, fwd, cams[v, 12], cams[v, 13], state, max_depth, mode, q, s < 0, depth, normal, albedo, obj,
                            tri_v, tri_n, tri_uv, tri_i, tri_pdf, node_lo, node_hi, node_i, tri_blk, emit_tri, emit_cdf,
                            mat_i, mat_f, tex, tex_info, light_i, light_f, env_cdf, env_pmf, params, simd)
        accum[q] += acc


@ti.kernel
def trace_rays(origins: NDV3, directions: NDV3, t_out: NDF, tri_out: NDI,
               node_lo: NDV3, node_hi: NDV3, node_i: NDI3, tri_v: NDV3, tri_blk: NDB, simd: ti.template()):
    """Closest hit of each ray (for tests against render.bvh's brute force); tri_out in leaf order."""
    for r in range(origins.shape[0]):
        t, k, _, _ = intersect(origins[r], directions[r], FAR, False, node_lo, node_hi, node_i, tri_v, tri_blk,
                               simd)
        t_out[r] = t if k >= 0 else ti.math.inf
        tri_out[r] = k


@ti.kernel
def env_sample_probe(u: ND2F, env_cdf: NDF, env_pmf: NDF, w: ti.i32, h: ti.i32, d_out: NDV3, pdf_out: NDF):
    """env_sample at given uniforms (N, 2) (for tests)."""
    for k in range(u.shape[0]):
        d, pdf = env_sample(u[k, 0], u[k, 1], env_cdf, env_pmf, w, h)
        d_out[k] = d
        pdf_out[k] = pdf


@ti.kernel
def env_pdf_probe(dirs: NDV3, env_pmf: NDF, w: ti.i32, h: ti.i32, pdf_out: NDF):
    """env_pdf of unit directions (for tests)."""
    for k in range(dirs.shape[0]):
        pdf_out[k] = env_pdf(dirs[k], env_pmf, w, h)


@ti.kernel
def bsdf_probe(mtype: ti.i32, base: vec3, alpha: ti.f32, ior: ti.f32, entering: ti.i32, wo: vec3, seed: ti.u32,
               wi_out: NDV3, weight_out: NDV3, pdf_out: NDF, delta_out: NDI, eval_out: NDV3, eval_pdf_out: NDF):
    """Sample the BSDF N times from wo (local frame) and evaluate it at the sampled directions
    (for tests: the estimator identities each BSDF must satisfy)."""
    for i in range(wi_out.shape[0]):
        state = rng_seed(seed, ti.u32(i), ti.u32(0))
        u1 = rand(state)
        u2 = rand(state)
        u3 = rand(state)
        wi, weight, pdf, delta, _ = bsdf_sample(mtype, base, alpha, ior, entering != 0, wo, u1, u2, u3)
        wi_out[i] = wi
        weight_out[i] = weight
        pdf_out[i] = pdf
        delta_out[i] = delta
        fc, pdf_e = bsdf_eval(mtype, base, alpha, wo, wi)
        eval_out[i] = fc
        eval_pdf_out[i] = pdf_e


@ti.kernel
def bsdf_eval_probe(mtype: ti.i32, base: vec3, alpha: ti.f32, wo: vec3, wis: NDV3, eval_out: NDV3, pdf_out: NDF):
    """Evaluate f |cos| and the sampling pdf at given directions (local frame)."""
    for i in range(wis.shape[0]):
        fc, pdf = bsdf_eval(mtype, base, alpha, wo, wis[i])
        eval_out[i] = fc
        pdf_out[i] = pdf
