"""The CPU path tracer's packet kernel: 16 or 8 paths traced in lockstep by each thread.

``render.pt_kernels.render_pass`` traces one path at a time per thread; only its leaf triangle test
runs in SIMD. Here every per-path quantity is a lane-wide Taichi vector (one lane per path), so
camera rays, traversal, shading, light sampling and the random numbers all compile to SIMD
instructions (Taichi scalarises the vectors and LLVM's SLP vectoriser packs them again). Each
thread owns a group of GROUP pixels of one view and a queue of their paths (pixel-major); a lane
whose path ends adds its radiance to its pixel and takes the next path of the queue, so lanes idle
only at the queue's tail. Traversal walks the BVH with one stack for the packet: a node is entered
when any active lane's ray enters its box before that lane's closest hit.

It covers the scenes whose materials are diffuse or emitters (constant or checker colours, smooth
or flat normals) lit by emitter triangles, point and directional lights and a constant
environment (``render.pathtracer._packet_scene``); metal, glass, image textures and environment
maps run in ``render_pass``. Paths are ``radiance()``'s: the same estimator (next-event estimation
and BSDF sampling, power heuristic, Russian roulette from depth 5, the near/far clip of camera rays),
and the same random numbers drawn in the same order from the same (seed, pixel, sample) streams, so
an image differs from ``render_pass``'s by float rounding only (sin and cos are polynomials here:
LLVM cannot vectorise libm calls). The first pass writes the first-hit AOVs as ``render_pass`` does,
from a ray through each pixel centre that shares the paths' traversal.
"""

import hashlib
import math
import os
import platform
import sys
from pathlib import Path

import taichi as ti

from .cpuinfo import cpu_flags
from .pt_kernels import (BOX_SLACK, BSDF_ONLY, EDGE_SLACK, EMITTER, INV_PI, MIS, ND2F, NDF, NDI, NDI3, NDU, NDV2,
                         NDV3, NEE_ONLY, RAY_EPS, RR_DEPTH, STACK, corners, hi_of, light_groups, lo_of, pcg_hash)
from .scene import FAR

# Paths in lockstep per thread, per compiled variant (see render_pass_packets' ``full``). The smaller
# variant (the Cornell box) runs 16 on a CPU with AVX-512: LLVM then packs its lanes into 16-wide
# instructions and spreads a packet's traversal and queue over twice the paths (Intel Xeon, Emerald
# Rapids: Cornell box 4.32 against 3.70 M paths/s in six alternating rounds, the 328k-triangle mesh
# 0.98 against 0.81). Without AVX-512 each 16-lane vector takes two 8-wide registers, and 8 lanes
# are faster (AMD EPYC, Zen 3, AVX2: Cornell box 3.24 against 2.69 M paths/s, ahead in four
# rounds of four). The larger variant keeps 8 (one AVX register) everywhere: at 16, rooms_ring
# views ran 8-14 % slower on the Xeon (why is not measured: its longer code, or its rays parting
# ways sooner than the box's, are the likely causes).
LANES_FULL = 8


def lean_lanes(flags: set[str]) -> int:
    """The smaller variant's paths per thread on a CPU with these feature flags (cpuinfo.cpu_flags)."""
    return 16 if "avx512f" in flags else 8


CPU_FLAGS = cpu_flags()  # read once: the lanes below and the fused triangle test's FMA check
LANES_LEAN = lean_lanes(CPU_FLAGS)
GROUP = 16  # pixels whose paths one thread's queue holds

# lane vectors by width: VF[n](x) is n lanes of x (ti.funcs take n from their arguments' .n)
VF = {n: ti.types.vector(n, ti.f32) for n in (LANES_LEAN, LANES_FULL)}
VI = {n: ti.types.vector(n, ti.i32) for n in (LANES_LEAN, LANES_FULL)}
VU = {n: ti.types.vector(n, ti.u32) for n in (LANES_LEAN, LANES_FULL)}


def lanes(full: bool) -> int:
    """Paths in lockstep per thread in the variant ``full`` (render_pass_packets' argument)."""
    return LANES_FULL if full else LANES_LEAN


def compile_settings(full: bool) -> dict:
    """Taichi CompileConfig fields to compile the variant ``full`` with (render.pathtracer's
    _compile_config). Taichi's own store-to-load forwarding and dead-store passes (cfg_optimization)
    took 110 of the 16-lane smaller variant's 140 s cold compile; without them it compiles in ~30 s
    and runs as fast, within the host's noise (LLVM does that work again anyway; at 8 lanes on an
    AVX2 CPU, 3.24 against 3.36 M paths/s with them, four alternating rounds). The larger variant
    keeps them: without them rooms_ring views ran 10 % slower."""
    return {} if full else {"cfg_optimization": False}


FUSED_BITCODE = Path(__file__).with_name("fused.bc")  # assembled from fused.ll beside it


def _cpu_has_fma() -> bool:
    return "fma" in CPU_FLAGS


# The triangle test's multiply-adds fused (render/fused.ll): x86-64 Linux, the data layout that module
# names, on a CPU with FMA instructions (without them LLVM would call libm's fmaf); elsewhere, or with
# TRIRENDER_FMA=0 in the environment, the same arithmetic unfused.
FUSED = (sys.platform == "linux" and platform.machine() == "x86_64" and _cpu_has_fma()
         and os.environ.get("TRIRENDER_FMA", "1") != "0")


def _cached_bitcode() -> Path:
    """fused.bc as Taichi's offline cache should know it. The cache keys a kernel by the path of the
    bitcode it links, not by its content, so the kernels link a copy in the cache's folder named by
    the content's hash: every install of the same bitcode shares one compiled kernel (a test process
    importing the checkout, its subprocesses the installed package), and a changed one gets new
    kernels. The package's own file where that folder cannot be written."""
    data = FUSED_BITCODE.read_bytes()
    cache = Path(ti.lang.impl.current_cfg().offline_cache_file_path)
    copy = cache / f"trirender_fused_{hashlib.sha256(data).hexdigest()[:16]}.bc"
    try:
        if not (copy.is_file() and copy.read_bytes() == data):
            from .image_io import atomic_path

            with atomic_path(copy) as tmp:
                tmp.write_bytes(data)
    except OSError:
        return FUSED_BITCODE
    return copy


class _Bitcode:
    """fused.bc's functions for kernels to call (each is linked into the kernel that calls it), loaded
    on first use: Taichi must be initialised by then, not when this module is imported."""

    def __getattr__(self, name):
        if "module" not in self.__dict__:
            self.module = ti.lang.source_builder.SourceBuilder.from_file(str(_cached_bitcode()))
        return getattr(self.module, name)


FUSED_MODULE = _Bitcode()


@ti.func
def step(state):
    """(next state, uniform in [0, 1)): ``pt_kernels.rand`` on every lane."""
    s = state * ti.u32(747796405) + ti.u32(2891336453)
    word = ((s >> ((s >> ti.u32(28)) + ti.u32(4))) ^ s) * ti.u32(277803737)
    word = (word >> ti.u32(22)) ^ word
    return s, ti.cast(ti.cast(word >> ti.u32(8), ti.i32), ti.f32) * (1.0 / 16777216.0)


@ti.func
def sincos2pi(u):
    """(cos 2 pi u, sin 2 pi u) for u in [0, 1): reduction to [-pi/4, pi/4] and Taylor polynomials
    (absolute error < 3e-8)."""
    x = u - ti.round(u)
    q = ti.round(x * 4.0)
    y = (x - q * 0.25) * (2.0 * math.pi)
    y2 = y * y
    s = y * (1.0 + y2 * (-1.0 / 6 + y2 * (1.0 / 120 + y2 * (-1.0 / 5040 + y2 * (1.0 / 362880)))))
    c = 1.0 + y2 * (-0.5 + y2 * (1.0 / 24 + y2 * (-1.0 / 720 + y2 * (1.0 / 40320 + y2 * (-1.0 / 3628800)))))
    qi = ti.cast(q, ti.i32) & 3
    cs = ti.select(qi == 0, c, ti.select(qi == 1, -s, ti.select(qi == 2, -c, s)))
    sn = ti.select(qi == 0, s, ti.select(qi == 1, c, ti.select(qi == 2, -s, -c)))
    return cs, sn


@ti.func
def power_heuristic(a, b):
    a2 = a * a
    return ti.select(a2 > 0.0, a2 / ti.select(a2 > 0.0, a2 + b * b, 1.0), 0.0)


@ti.func
def mis_weight(prev_delta, prev_pdf, pdf_other, mode):
    """The weight of radiance found by BSDF sampling: 1 after a delta lobe or the camera, else the
    power heuristic (MIS), 0 (NEE alone) or 1 (BSDF sampling alone). Selects, not branches: the SLP
    vectoriser packs lanes within a basic block, so every branch costs repacking."""
    w = ti.select(mode == MIS, power_heuristic(prev_pdf, pdf_other), ti.select(mode == NEE_ONLY, 0.0, 1.0))
    return ti.select(prev_delta != 0, 1.0, w)


@ti.func
def tri_hit(k, ox, oy, oz, dx, dy, dz, best_t, tri_v: ti.template(), tri_x: ti.template()):
    """Möller–Trumbore of triangle k against every lane, with ``pt_kernels.intersect``'s edge slack:
    (hit, t, b1, b2), valid where hit. Its determinant and numerators are rewritten by the scalar
    triple product around the stored n = e1 x e2 (tri_x) and r = s x d, s = o - v0: det = -d.n,
    b1 det = e2.r, b2 det = -e1.r, t det = s.n; one cross product per lane instead of two (Cornell
    box 4.41 against 4.25 M paths/s; the same hits up to float rounding). Where FUSED, that
    arithmetic is fused.ll's tr_tri, with fused multiply-adds (rooms_ring views +7-11 %)."""
    v0 = tri_v[3 * k]
    e1 = tri_v[3 * k + 1]
    e2 = tri_v[3 * k + 2]
    n = tri_x[k]
    det, u, v, t = VF[ox.n](0.0), VF[ox.n](0.0), VF[ox.n](0.0), VF[ox.n](0.0)
    if ti.static(FUSED):  # fused.ll's tr_tri on each lane (bitcode takes local variables, by address)
        v0x, v0y, v0z, e1x, e1y, e1z, e2x, e2y, e2z, nx, ny, nz = (v0.x, v0.y, v0.z, e1.x, e1.y, e1.z, e2.x, e2.y,
                                                                   e2.z, n.x, n.y, n.z)
        for l in ti.static(range(ox.n)):
            lox, loy, loz, ldx, ldy, ldz = ox[l], oy[l], oz[l], dx[l], dy[l], dz[l]
            ldet, lu, lv, lt = 0.0, 0.0, 0.0, 0.0
            FUSED_MODULE.tr_tri(ldet, lu, lv, lt, lox, loy, loz, ldx, ldy, ldz, v0x, v0y, v0z, e1x, e1y, e1z, e2x, e2y,
                                e2z, nx, ny, nz)
            det[l], u[l], v[l], t[l] = ldet, lu, lv, lt
    else:
        det = -(dx * n.x + dy * n.y + dz * n.z)
        sx = ox - v0.x
        sy = oy - v0.y
        sz = oz - v0.z
        rx = sy * dz - sz * dy
        ry = sz * dx - sx * dz
        rz = sx * dy - sy * dx
        u = e2.x * rx + e2.y * ry + e2.z * rz
        v = -(e1.x * rx + e1.y * ry + e1.z * rz)
        t = sx * n.x + sy * n.y + sz * n.z
    sgn = ti.select(det < 0.0, -1.0, 1.0)
    adet = det * sgn
    u *= sgn
    v *= sgn
    t *= sgn
    slack = adet * EDGE_SLACK
    hit = (adet > 0.0) & (u >= -slack) & (v >= -slack) & (u + v <= adet + slack) & (t > 0.0) & (t < best_t * adet)
    inv = 1.0 / ti.select(hit, adet, 1.0)
    return hit, t * inv, u * inv, v * inv


def _leaf_step8(k, ox, oy, oz, dx, dy, dz, enter, best_t, best, bu, bv, v0, e1, e2, n):
    """(Called at compile time, in ti.static) fused.ll's tr_step8: triangle k against every lane and
    the closest-hit update, as explicit 8-wide vector code (the larger variant's LANES_FULL lanes).
    Returns the new (best_t, best, bu, bv). Bitcode functions take local variables only, so every lane
    is copied into one and back."""
    if ox.n != 8:  # trace's vector_step is for 8-lane packets only (today the larger variant's)
        raise ValueError(f"fused.ll's tr_step8 tests 8 lanes, not the packet's {ox.n}")
    impl = ti.lang.impl

    def local(value, i=None):
        return impl.expr_init(value if i is None else impl.subscript(None, value, i))

    triangle = [local(vec, c) for vec in (v0, e1, e2, n) for c in range(3)]
    ray = [local(vec, l) for vec in (ox, oy, oz, dx, dy, dz, ti.select(enter, 1, 0)) for l in range(LANES_FULL)]
    hit = [local(vec, l) for vec in (best_t, best, bu, bv) for l in range(LANES_FULL)]
    FUSED_MODULE.tr_step8(*ray, *hit, local(k), *triangle)
    return tuple(ti.Vector(hit[j * LANES_FULL:(j + 1) * LANES_FULL]) for j in range(4))


@ti.func
def box_enter(k, ox, oy, oz, ix, iy, iz, t_max, node_lo: ti.template(), node_hi: ti.template()):
    """Per lane: the ray enters node k's box within [0, t_max] (``pt_kernels.box_entry``'s
    conservative slab test)."""
    lo = node_lo[k]
    hi = node_hi[k]
    ax = (lo.x - ox) * ix
    bx = (hi.x - ox) * ix
    ay = (lo.y - oy) * iy
    by = (hi.y - oy) * iy
    az = (lo.z - oz) * iz
    bz = (hi.z - oz) * iz
    t0 = hi_of(hi_of(lo_of(ax, bx), lo_of(ay, by)), hi_of(lo_of(az, bz), 0.0))
    t1 = lo_of(lo_of(hi_of(ax, bx), hi_of(ay, by)), hi_of(az, bz)) * BOX_SLACK
    return (t0 <= t1) & (t0 <= t_max)


@ti.func
def trace(ox, oy, oz, dx, dy, dz, t_max, active, any_hit: ti.template(), vector_step: ti.template(),
          node_lo: ti.template(), node_hi: ti.template(), node_i: ti.template(), tri_v: ti.template(),
          tri_x: ti.template()):
    """Closest hit in (0, t_max) of the active lanes' rays: (t, triangle or -1, b1, b2); with any_hit
    the walk stops once every active lane is occluded (triangle >= 0). vector_step: where FUSED, each
    leaf step is fused.ll's tr_step8, explicit 8-wide vector code, instead of tri_hit and selects:
    the same hits (its barycentrics may round differently in the last bit). The kernel's larger
    variant takes it for closest hits: there LLVM had split the loop into 4-lane halves (158
    instructions a triangle against 83; rooms_ring views +7 %), while in the smaller variant and for
    shadow rays, where the loop was 8-wide already, it was 1-3 % slower."""
    ix = 1.0 / ti.select(ti.abs(dx) < 1e-20, ti.select(dx < 0.0, -1e-20, 1e-20), dx)
    iy = 1.0 / ti.select(ti.abs(dy) < 1e-20, ti.select(dy < 0.0, -1e-20, 1e-20), dy)
    iz = 1.0 / ti.select(ti.abs(dz) < 1e-20, ti.select(dz < 0.0, -1e-20, 1e-20), dz)
    best_t = t_max
    best = VI[ox.n](-1)
    bu = VF[ox.n](0.0)
    bv = VF[ox.n](0.0)
    stack = ti.Vector([0] * STACK, ti.i32)
    sp = 0
    node = 0
    live = active
    while node >= 0:
        enter = live & box_enter(node, ox, oy, oz, ix, iy, iz, best_t, node_lo, node_hi)
        nxt = -1
        if enter.any():
            info = node_i[node]
            if info[1] > 0:
                for k in range(info[0], info[0] + info[1]):
                    if ti.static(vector_step and FUSED):
                        # (a static assignment would bind new names, not assign the variables)
                        step = ti.static(_leaf_step8(k, ox, oy, oz, dx, dy, dz, enter, best_t, best, bu, bv,
                                                     tri_v[3 * k], tri_v[3 * k + 1], tri_v[3 * k + 2], tri_x[k]))
                        best_t, best, bu, bv = step[0], step[1], step[2], step[3]
                    else:
                        hit, t, u, v = tri_hit(k, ox, oy, oz, dx, dy, dz, best_t, tri_v, tri_x)
                        hit = hit & enter
                        best_t = ti.select(hit, t, best_t)
                        best = ti.select(hit, k, best)
                        bu = ti.select(hit, u, bu)
                        bv = ti.select(hit, v, bv)
                if ti.static(any_hit):
                    live = live & (best < 0)
            else:
                stack[sp] = info[0]  # the right child later, the left one (node + 1) now
                sp += 1
                nxt = node + 1
        if nxt < 0 and sp > 0:
            sp -= 1
            nxt = stack[sp]
        if ti.static(any_hit):
            if not live.any():
                nxt = -1
        node = nxt
    return best_t, best, bu, bv


@ti.func
def column(arr: ti.template(), idx, c: ti.template()):
    """arr[idx[l], c] for each lane l: one field of each lane's record."""
    out = VF[idx.n](0.0)
    for l in ti.static(range(idx.n)):
        out[l] = arr[idx[l], c]
    return out


@ti.func
def gather3(arr: ti.template(), idx):
    """Records of three vec3 (arr[3 i], arr[3 i + 1], arr[3 i + 2]) of each lane's index i, as
    nine lane vectors: x, y, z of the first, then of the second and of the third."""
    z = VF[idx.n](0.0)
    x0, y0, z0, x1, y1, z1, x2, y2, z2 = z, z, z, z, z, z, z, z, z
    for l in ti.static(range(idx.n)):
        a0 = arr[3 * idx[l]]
        a1 = arr[3 * idx[l] + 1]
        a2 = arr[3 * idx[l] + 2]
        x0[l] = a0.x
        y0[l] = a0.y
        z0[l] = a0.z
        x1[l] = a1.x
        y1[l] = a1.y
        z1[l] = a1.z
        x2[l] = a2.x
        y2[l] = a2.y
        z2[l] = a2.z
    return x0, y0, z0, x1, y1, z1, x2, y2, z2


@ti.func
def find(cdf: ti.template(), n, u):
    """Per lane, the first index k < n with u <= cdf[k] (``pt_kernels.cdf_find``'s bin), by a
    binary search the lanes take in lockstep."""
    lo = VI[u.n](0)
    hi = VI[u.n](n - 1)
    while (lo < hi).any():
        mid = (lo + hi) // 2
        c = VF[u.n](0.0)
        for l in ti.static(range(u.n)):
            c[l] = cdf[mid[l]]
        go_up = (lo < hi) & (c < u)
        go_down = (lo < hi) & ~(c < u)
        lo = ti.select(go_up, mid + 1, lo)
        hi = ti.select(go_down, mid, hi)
    return lo


@ti.kernel
def render_pass_packets(accum: NDV3, depth: NDF, normal: NDV3, albedo: NDV3, obj: NDI, width: ti.i32,
                        height: ti.i32, views: ti.i32, sample0: ti.i32, spp: ti.i32, seeds: NDU, cams: ND2F,
                        max_depth: ti.i32, mode: ti.i32, tri_v: NDV3, tri_n: NDV3, tri_uv: NDV2, node_lo: NDV3,
                        node_hi: NDV3, node_i: NDI3, emit_tri: NDI, emit_cdf: NDF, mat_f: ND2F, light_i: NDI,
                        light_f: NDV3, tri_x: NDV3, params: NDF, prec: ND2F, full: ti.template()):
    """``pt_kernels.render_pass`` (same result up to float rounding) for the scenes this module
    covers, with the arguments it reads of render_pass's; prec: one record per triangle
    (render.pathtracer._packet_records); full: compiled with interpolated normals, checkers and
    point/directional lights (else the scene has none of them), and ``lanes(full)`` paths in lockstep."""
    L = ti.static(lanes(full))
    n_pix = width * height
    per_view = (n_pix + GROUP - 1) // GROUP
    env_r = params[0]
    env_g = params[1]
    env_b = params[2]
    n_emit, n_delta, has_env, n_groups, p_group, area_group, env_uniform_pdf = light_groups(params)
    for grp in range(views * per_view):
        v = grp // per_view
        pix0 = (grp % per_view) * GROUP
        n_here = ti.min(GROUP, n_pix - pix0)
        seed = seeds[v]
        cox, coy, coz = cams[v, 0], cams[v, 1], cams[v, 2]
        rx, ry, rz = cams[v, 3], cams[v, 4], cams[v, 5]
        ux, uy, uz = cams[v, 6], cams[v, 7], cams[v, 8]
        fx, fy, fz = cams[v, 9], cams[v, 10], cams[v, 11]
        near, far = cams[v, 12], cams[v, 13]

        # ---- the paths: spp per pixel, pixel-major, L in flight; the first pass starts each
        # pixel with its AOV ray (sample -1, through the pixel centre, ending at the first hit) ----
        extra = 1 if sample0 == 0 else 0
        per_pixel = spp + extra
        total = n_here * per_pixel
        nxt = 0
        # the queue's next entry: its pixel (offset in the group, column, row) and sample, counted
        # instead of divided out of its index (integer division is scalar, one per lane)
        q_pix, q_smp = 0, 0
        q_col, q_row = pix0 % width, pix0 // width
        l_pix, l_smp, l_col, l_row = VI[L](0), VI[L](0), VI[L](0), VI[L](0)
        live = VI[L](0)  # masks are i32 0/1 vectors throughout
        ox, oy, oz = VF[L](0.0), VF[L](0.0), VF[L](0.0)
        dx, dy, dz = VF[L](0.0), VF[L](0.0), VF[L](1.0)
        br, bg, bb = VF[L](1.0), VF[L](1.0), VF[L](1.0)
        lr, lg, lb = VF[L](0.0), VF[L](0.0), VF[L](0.0)
        prev_pdf = VF[L](1.0)
        prev_delta = VI[L](1)
        seg = VI[L](0)
        t_seg = VF[L](0.0)
        state = VU[L](0)
        aov = VI[L](0)  # the lane traces an AOV ray
        cos_fwd = VF[L](1.0)  # its cosine to the camera's forward axis
        while True:
            # lanes whose path ended take the next one of the queue
            fresh = VI[L](0)
            for l in ti.static(range(L)):
                if live[l] == 0 and nxt < total:
                    l_pix[l], l_smp[l], l_col[l], l_row[l] = q_pix, q_smp, q_col, q_row
                    nxt += 1
                    q_smp += 1
                    if q_smp == per_pixel:
                        q_smp = 0
                        q_pix += 1
                        q_col += 1
                        if q_col == width:
                            q_col = 0
                            q_row += 1
                    fresh[l] = 1
                    live[l] = 1
            if not (live != 0).any():
                break
            fr = fresh != 0
            pix = pix0 + l_pix
            sample = sample0 + l_smp - extra
            s0 = pcg_hash(ti.cast(sample, ti.u32) + pcg_hash(ti.cast(pix, ti.u32) + pcg_hash(seed)))  # rng_seed
            is_aov = sample < 0
            s1, jx = step(s0)
            s1, jy = step(s1)
            s0 = ti.select(is_aov, s0, s1)
            jx = ti.select(is_aov, 0.5, jx)
            jy = ti.select(is_aov, 0.5, jy)
            sx = 2.0 * (ti.cast(l_col, ti.f32) + jx) / width - 1.0
            sy = 1.0 - 2.0 * (ti.cast(l_row, ti.f32) + jy) / height
            cdx = sx * rx + sy * ux + fx
            cdy = sx * ry + sy * uy + fy
            cdz = sx * rz + sy * uz + fz
            inv_n = 1.0 / ti.sqrt(cdx * cdx + cdy * cdy + cdz * cdz)
            cdx *= inv_n
            cdy *= inv_n
            cdz *= inv_n
            cos_f = cdx * fx + cdy * fy + cdz * fz
            state = ti.select(fr, s0, state)
            dx = ti.select(fr, cdx, dx)
            dy = ti.select(fr, cdy, dy)
            dz = ti.select(fr, cdz, dz)
            ox = ti.select(fr, cox + cdx * (near / cos_f), ox)
            oy = ti.select(fr, coy + cdy * (near / cos_f), oy)
            oz = ti.select(fr, coz + cdz * (near / cos_f), oz)
            t_seg = ti.select(fr, (far - near) / cos_f, t_seg)
            br = ti.select(fr, 1.0, br)
            bg = ti.select(fr, 1.0, bg)
            bb = ti.select(fr, 1.0, bb)
            lr = ti.select(fr, 0.0, lr)
            lg = ti.select(fr, 0.0, lg)
            lb = ti.select(fr, 0.0, lb)
            prev_pdf = ti.select(fr, 1.0, prev_pdf)
            prev_delta = ti.select(fr, 1, prev_delta)
            seg = ti.select(fr, 0, seg)
            aov = ti.select(fr, ti.select(is_aov, 1, 0), aov)
            cos_fwd = ti.select(fr, cos_f, cos_fwd)
            alive = live != 0
            tracing = alive & (aov == 0)  # lanes of paths, not of AOV rays

            # ---- the next segment's hit ----
            t, k, b1, b2 = trace(ox, oy, oz, dx, dy, dz, t_seg, alive, False, full, node_lo, node_hi, node_i, tri_v,
                                 tri_x)
            t_seg = VF[L](FAR)
            miss = tracing & (k < 0)
            # a constant environment (maps run in render_pass)
            w = mis_weight(prev_delta, prev_pdf, VF[L](env_uniform_pdf), mode)
            sky = miss & (has_env != 0) & (max_depth != 0)
            lr += ti.select(sky, br * env_r * w, 0.0)
            lg += ti.select(sky, bg * env_g * w, 0.0)
            lb += ti.select(sky, bb * env_b * w, 0.0)
            found = alive & (k >= 0)
            hit = found & (aov == 0)
            # the hit triangle's record (see render.pathtracer._packet_records), lane by lane
            kk = ti.max(k, 0)
            gx, gy, gz, tpdf = column(prec, kk, 0), column(prec, kk, 1), column(prec, kk, 2), column(prec, kk, 3)
            car, cag, cab = column(prec, kk, 4), column(prec, kk, 5), column(prec, kk, 6)
            ler, leg, leb = column(prec, kk, 7), column(prec, kk, 8), column(prec, kk, 9)
            mtype, two = ti.cast(column(prec, kk, 10), ti.i32), column(prec, kk, 11)
            chk = ti.cast(column(prec, kk, 12), ti.i32)
            oid, smooth, mat = (ti.cast(column(prec, kk, 13), ti.i32), ti.cast(column(prec, kk, 14), ti.i32),
                                ti.cast(column(prec, kk, 15), ti.i32))
            px = ox + t * dx
            py = oy + t * dy
            pz = oz + t * dz
            # the shading normal: the geometric one where the corners' normals all equal it, else
            # interpolated (ng where that vanishes)
            nsx, nsy, nsz = gx, gy, gz
            wind = VF[L](1.0)
            if ti.static(full):
                n0x, n0y, n0z, n1x, n1y, n1z, n2x, n2y, n2z = gather3(tri_n, kk)
                b0 = 1.0 - b1 - b2  # pt_kernels.corners, lane-wise
                ix = b0 * n0x + b1 * n1x + b2 * n2x
                iy = b0 * n0y + b1 * n1y + b2 * n2y
                iz = b0 * n0z + b1 * n1z + b2 * n2z
                wx = n0x + n1x + n2x
                wy = n0y + n1y + n2y
                wz = n0z + n1z + n2z
                nl = ti.sqrt(ix * ix + iy * iy + iz * iz)
                use = (smooth != 0) & (nl > 0.0)
                inv_l = 1.0 / ti.select(use, nl, 1.0)
                nsx = ti.select(use, ix * inv_l, gx)
                nsy = ti.select(use, iy * inv_l, gy)
                nsz = ti.select(use, iz * inv_l, gz)
                # (applied after the AOVs, which keep the normal as interpolated)
                wind = ti.select((smooth != 0) & (wx * gx + wy * gy + wz * gz < 0.0), -1.0, 1.0)
            # the base colour: a checker (color1 where floor(u s) + floor(v s) is even) or the constant
            if ti.static(full):
                uu, vv = VF[L](0.0), VF[L](0.0)
                for l in ti.static(range(L)):
                    uv = corners(tri_uv, kk[l], b1[l], b2[l])
                    uu[l] = uv.x
                    vv[l] = uv.y
                c1r, c1g, c1b = column(mat_f, mat, 6), column(mat_f, mat, 7), column(mat_f, mat, 8)
                c2r, c2g, c2b = column(mat_f, mat, 9), column(mat_f, mat, 10), column(mat_f, mat, 11)
                csc = column(mat_f, mat, 14)
                parity = (ti.cast(ti.floor(uu * csc), ti.i32) + ti.cast(ti.floor(vv * csc), ti.i32)) & 1
                use1 = (chk != 0) & (parity == 0)
                use2 = (chk != 0) & (parity != 0)
                car = ti.select(use1, c1r, ti.select(use2, c2r, car))
                cag = ti.select(use1, c1g, ti.select(use2, c2g, cag))
                cab = ti.select(use1, c1b, ti.select(use2, c2b, cab))
            # what AOV rays write (render_pass's first-hit AOVs), kept for the end of the segment
            aov_nx, aov_ny, aov_nz, aov_r, aov_g, aov_b = nsx, nsy, nsz, car, cag, cab
            cosd = dx * gx + dy * gy + dz * gz
            front = cosd < 0.0
            # emission seen by BSDF sampling (emitters shine from their front face)
            pdf_light = tpdf * t * t / ti.select(hit, ti.abs(cosd), 1.0)
            w = mis_weight(prev_delta, prev_pdf, pdf_light, mode)
            add = hit & (mtype == EMITTER) & front & (max_depth != 0)
            lr += ti.select(add, br * ler * w, 0.0)
            lg += ti.select(add, bg * leg * w, 0.0)
            lb += ti.select(add, bb * leb * w, 0.0)
            cont = hit & ~((max_depth >= 0) & (seg + 1 >= max_depth)) & ~(~front & (two == 0.0))
            # normals against the winding are turned to its side; then both to the ray's side
            side = ti.select(front, 1.0, -1.0)
            gx *= side
            gy *= side
            gz *= side
            nsx *= wind * side
            nsy *= wind * side
            nsz *= wind * side
            # a frame around the shading normal (pt_kernels.onb)
            sg = ti.select(nsz >= 0.0, 1.0, -1.0)
            oa = -1.0 / (sg + nsz)
            ob = nsx * nsy * oa
            tx = 1.0 + sg * nsx * nsx * oa
            ty = sg * ob
            tz = -sg * nsx
            bx = ob
            by = sg + nsy * nsy * oa
            bz = -nsy
            wo_z = -(dx * nsx + dy * nsy + dz * nsz)
            scale = RAY_EPS * (1.0 + ti.max(ti.max(ti.abs(px), ti.abs(py)), ti.abs(pz)))

            # ---- next-event estimation: one light sample ----
            do_nee = cont & (n_groups > 0) & (ti.max(ti.max(car, cag), cab) > 0.0)
            st, ug = step(state)
            st, ul1 = step(st)
            st, ul2 = step(st)
            st4, upick = step(st)
            g = ti.min(ti.cast(ug * n_groups, ti.i32), n_groups - 1)
            is_area = g < area_group
            is_delta = ~is_area & (g < area_group + n_delta)
            is_env = ~is_area & ~is_delta
            picks = do_nee & is_area & (mode != BSDF_ONLY)
            state = ti.select(do_nee, ti.select(picks, st4, st), state)
            # the sampled direction wi, the target point (area and point lights), radiance / pdf
            wx, wy, wz = VF[L](0.0), VF[L](1.0), VF[L](0.0)
            tgx, tgy, tgz = VF[L](0.0), VF[L](0.0), VF[L](0.0)
            has_target = VI[L](0)
            lir, lig, lib = VF[L](0.0), VF[L](0.0), VF[L](0.0)
            pdf_l = VF[L](0.0)
            if picks.any():  # an emitter triangle picked by power, a point on it uniformly
                pick = find(emit_cdf, n_emit, upick)
                ke = VI[L](0)
                for l in ti.static(range(L)):
                    ke[l] = emit_tri[pick[l]]
                nlx, nly, nlz, epdf = column(prec, ke, 0), column(prec, ke, 1), column(prec, ke, 2), column(prec, ke, 3)
                eer, eeg, eeb = column(prec, ke, 7), column(prec, ke, 8), column(prec, ke, 9)
                v0x, v0y, v0z, f1x, f1y, f1z, f2x, f2y, f2z = gather3(tri_v, ke)
                su = ti.sqrt(ul1)
                a = 1.0 - su
                c = su * ul2
                ax = v0x + a * f1x + c * f2x
                ay = v0y + a * f1y + c * f2y
                az = v0z + a * f1z + c * f2z
                lx = ax - px
                ly = ay - py
                lz = az - pz
                d2 = lx * lx + ly * ly + lz * lz
                inv_d = 1.0 / ti.sqrt(ti.select(d2 > 0.0, d2, 1.0))
                lx *= inv_d
                ly *= inv_d
                lz *= inv_d
                cos_l = -(lx * nlx + ly * nly + lz * nlz)
                ok = picks & (cos_l > 0.0)
                pdf_a = epdf * d2 / ti.select(ok, cos_l, 1.0)
                inv_p = 1.0 / ti.select(ok, pdf_a, 1.0)
                wx, wy, wz = ti.select(picks, lx, wx), ti.select(picks, ly, wy), ti.select(picks, lz, wz)
                tgx, tgy, tgz = ti.select(picks, ax, tgx), ti.select(picks, ay, tgy), ti.select(picks, az, tgz)
                has_target = ti.select(picks, 1, has_target)
                pdf_l = ti.select(ok, pdf_a, pdf_l)
                lir = ti.select(ok, eer * inv_p, lir)
                lig = ti.select(ok, eeg * inv_p, lig)
                lib = ti.select(ok, eeb * inv_p, lib)
            dl = do_nee & is_delta
            if ti.static(full):  # a point or directional light
                kind = VI[L](0)
                li = ti.min(ti.max(g - area_group, 0), ti.max(n_delta - 1, 0))
                for l in ti.static(range(L)):
                    kind[l] = light_i[li[l]]
                pox, poy, poz, dix, diy, diz, pwr, pwg, pwb = gather3(light_f, li)
                point = dl & (kind == 0)
                lx = pox - px
                ly = poy - py
                lz = poz - pz
                d2 = lx * lx + ly * ly + lz * lz
                inv_d = 1.0 / ti.sqrt(ti.select(d2 > 0.0, d2, 1.0))
                inv_dl = 1.0 / ti.sqrt(dix * dix + diy * diy + diz * diz)
                fac = ti.select(point, 1.0 / (ti.select(d2 > 0.0, d2, 1.0) * p_group), 1.0 / p_group)
                wx = ti.select(point, lx * inv_d, ti.select(dl, -dix * inv_dl, wx))
                wy = ti.select(point, ly * inv_d, ti.select(dl, -diy * inv_dl, wy))
                wz = ti.select(point, lz * inv_d, ti.select(dl, -diz * inv_dl, wz))
                tgx, tgy, tgz = ti.select(point, pox, tgx), ti.select(point, poy, tgy), ti.select(point, poz, tgz)
                has_target = ti.select(point, 1, has_target)
                lir = ti.select(dl, pwr * fac, lir)
                lig = ti.select(dl, pwg * fac, lig)
                lib = ti.select(dl, pwb * fac, lib)
            de = do_nee & is_env & (mode != BSDF_ONLY)
            # the constant environment: a direction uniform over the sphere (computed for every lane:
            # cheaper than a branch, which costs the vectoriser its packing)
            z = 1.0 - 2.0 * ul1
            r = ti.sqrt(ti.max(1.0 - z * z, 0.0))
            cph, sph = sincos2pi(ul2)
            wx, wy, wz = ti.select(de, r * cph, wx), ti.select(de, r * sph, wy), ti.select(de, z, wz)
            pdf_l = ti.select(de, env_uniform_pdf, pdf_l)
            lir = ti.select(de, env_r / env_uniform_pdf, lir)
            lig = ti.select(de, env_g / env_uniform_pdf, lig)
            lib = ti.select(de, env_b / env_uniform_pdf, lib)
            # the diffuse BSDF toward wi (f |cos| = base wi_z / pi, its pdf wi_z / pi)
            wi_z = wx * nsx + wy * nsy + wz * nsz
            lit = do_nee & (ti.max(ti.max(lir, lig), lib) > 0.0) & (wo_z > 0.0) & (wi_z > 0.0)
            lit = lit & (ti.max(ti.max(car, cag), cab) * wi_z > 0.0)
            if lit.any():
                pdf_b = wi_z * INV_PI
                w = ti.select(~dl & (mode == MIS), power_heuristic(pdf_l, pdf_b), 1.0)
                # the shadow ray, from the offset origin, aimed at the target and stopping short of it
                off = ti.select(gx * wx + gy * wy + gz * wz >= 0.0, scale, -scale)
                sox = px + gx * off
                soy = py + gy * off
                soz = pz + gz * off
                tsx = tgx - sox
                tsy = tgy - soy
                tsz = tgz - soz
                tsl = ti.max(ti.sqrt(tsx * tsx + tsy * tsy + tsz * tsz), 1e-30)
                tgt = has_target != 0
                sdx = ti.select(tgt, tsx / tsl, wx)
                sdy = ti.select(tgt, tsy / tsl, wy)
                sdz = ti.select(tgt, tsz / tsl, wz)
                t_sh = ti.select(tgt, tsl * (1.0 - 1e-3), FAR)
                _, blocker, _, _ = trace(sox, soy, soz, sdx, sdy, sdz, t_sh, lit, True, False, node_lo, node_hi, node_i,
                                         tri_v, tri_x)
                seen = lit & (blocker < 0)
                f = w * wi_z * INV_PI
                lr += ti.select(seen, br * car * f * lir, 0.0)
                lg += ti.select(seen, bg * cag * f * lig, 0.0)
                lb += ti.select(seen, bb * cab * f * lib, 0.0)

            # ---- BSDF sampling (cosine-weighted): the next segment ----
            st, u1 = step(state)
            st, u2 = step(st)
            st, _u3 = step(st)
            state = ti.select(cont, st, state)
            r = ti.sqrt(u1)
            cph, sph = sincos2pi(u2)
            lz_ = ti.sqrt(ti.max(1.0 - u1, 0.0))
            pdf = lz_ * INV_PI
            cont = cont & (wo_z > 0.0) & (pdf > 0.0) & (ti.max(ti.max(car, cag), cab) > 0.0)
            ndx = r * cph * tx + r * sph * bx + lz_ * nsx
            ndy = r * cph * ty + r * sph * by + lz_ * nsy
            ndz = r * cph * tz + r * sph * bz + lz_ * nsz
            inv_d = 1.0 / ti.sqrt(ndx * ndx + ndy * ndy + ndz * ndz)
            ndx *= inv_d
            ndy *= inv_d
            ndz *= inv_d
            br = ti.select(cont, br * car, br)
            bg = ti.select(cont, bg * cag, bg)
            bb = ti.select(cont, bb * cab, bb)
            prev_pdf = pdf
            prev_delta = VI[L](0)
            off = ti.select(gx * ndx + gy * ndy + gz * ndz >= 0.0, scale, -scale)
            ox = px + gx * off
            oy = py + gy * off
            oz = pz + gz * off
            dx, dy, dz = ndx, ndy, ndz
            seg += 1
            # Russian roulette from RR_DEPTH segments on (a number is drawn only there)
            rr = cont & (seg >= RR_DEPTH)
            st, urr = step(state)
            state = ti.select(rr, st, state)
            q = ti.min(ti.max(ti.max(br, bg), bb), 0.95)
            cont = cont & ~(rr & (urr >= q))
            qd = ti.select(rr & cont, q, 1.0)
            br /= qd
            bg /= qd
            bb /= qd

            # ---- paths that ended: their radiance to their pixel, the lane to the queue ----
            done = alive & ~cont
            for l in ti.static(range(L)):
                if done[l]:
                    at = v * n_pix + pix[l]
                    if aov[l] == 0:
                        # a load and a store, not `+=` (which Taichi makes an atomic add, a
                        # compare-and-swap loop per channel on x86): only this loop iteration
                        # writes its group's pixels, one path after another
                        accum[at] = accum[at] + ti.math.vec3(lr[l], lg[l], lb[l])
                    elif k[l] < 0:  # an AOV ray: the first hit's depth, shading normal, base colour, object
                        depth[at] = ti.math.inf
                        normal[at] = ti.math.vec3(0.0)
                        albedo[at] = ti.math.vec3(0.0)
                        obj[at] = -1
                    else:
                        depth[at] = near + t[l] * cos_fwd[l]
                        normal[at] = ti.math.vec3(aov_nx[l], aov_ny[l], aov_nz[l])
                        albedo[at] = ti.math.vec3(aov_r[l], aov_g[l], aov_b[l])
                        obj[at] = oid[l]
            live = ti.select(done, 0, live)


@ti.kernel
def trace_rays_packets(origins: NDV3, directions: NDV3, t_out: NDF, tri_out: NDI, node_lo: NDV3, node_hi: NDV3,
                       node_i: NDI3, tri_v: NDV3, tri_x: NDV3, full: ti.template()):
    """Closest hit of each ray through this kernel's own traversal and triangle test, as the render
    kernel's variant ``full`` runs it (``lanes(full)`` rays to a packet; the larger variant's leaf
    step, see ``trace``), for tests against render.bvh's brute force; tri_out in leaf order, -1 on a
    miss."""
    L = ti.static(lanes(full))
    n = origins.shape[0]
    for g in range((n + L - 1) // L):
        ox, oy, oz = VF[L](0.0), VF[L](0.0), VF[L](0.0)
        dx, dy, dz = VF[L](0.0), VF[L](0.0), VF[L](1.0)
        active = VI[L](0)
        for l in ti.static(range(L)):
            r = g * L + l
            if r < n:
                o = origins[r]
                d = directions[r]
                ox[l], oy[l], oz[l] = o.x, o.y, o.z
                dx[l], dy[l], dz[l] = d.x, d.y, d.z
                active[l] = 1
        t, k, _, _ = trace(ox, oy, oz, dx, dy, dz, VF[L](FAR), active != 0, False, full, node_lo, node_hi, node_i, tri_v,
                           tri_x)
        for l in ti.static(range(L)):
            r = g * L + l
            if r < n:
                t_out[r] = t[l] if k[l] >= 0 else ti.math.inf
                tri_out[r] = k[l]
