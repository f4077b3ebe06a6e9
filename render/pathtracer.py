"""Physically based path tracer (Taichi on the CPU or a CUDA GPU) with Mitsuba 3's radiometry.

``pathtrace(scene, camera, spp=…)`` renders a ``Frame`` (``pathtrace_views`` several views of a scene
at once): unidirectional path tracing over a SAH BVH,
next-event estimation combined with BSDF sampling by the power heuristic, Russian roulette from
depth 5, diffuse / GGX metal / smooth glass / emitters, textures and checkers, point, directional,
area and environment light. The loops are pbrt's: ``pathtrace`` → passes → ``render_pass`` (pixel ×
sample) → ``radiance(ray)`` (in ``render.pt_kernels``).

Taichi is imported and initialised on the first call (never on ``import render``), once per process
for a backend; its offline cache keeps compiled kernels between processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bvh import BLOCK, BLOCK_COST, MAX_BLOCKS, STACK_SIZE, build_bvh
from .camera import Camera
from .cpuinfo import cpu_model
from .ctrl_c import ctrl_c_requests
from .errors import RenderError
from .frame import Frame
from .notice import notice_if_slow
from .scene import DIFFUSE, EMITTER, FAR, MAX_COORDINATE, Scene
from .ti_frontend import memoized_frame_info, memoized_frontend, patched_attributes

BACKENDS = ("auto", "cpu", "gpu")
STRATEGIES = {"mis": 0, "nee": 1, "bsdf": 2}  # must match render.pt_kernels MIS, NEE_ONLY, BSDF_ONLY
# Triangles per BVH leaf at most: three SIMD blocks. With one block per leaf (and the SAH pricing a
# block at 2 triangle tests) the Cornell box's tree had 13 nodes and traced 1.64 M paths/s; with
# three (and 1.5 per block) it has 3 nodes and traces 2.12 (+29 %), while rooms_ring views and a
# 100k-triangle mesh stayed within 2 % (four interleaved rounds on the idle 2-core machine): on
# small scenes a node visit (two box tests, a stack push, branches) costs more than the SAH assumed.
LEAF_MAX = 3 * BLOCK
# The packet kernel (render.pt_packets) tests a leaf's triangles one at a time, each against all its
# lanes, so it has a tree of its own: leaves of up to PACKET_LEAF_MAX triangles, the SAH pricing a
# triangle test at PACKET_TRI_COST node visits (a packet's visit reduces its lanes' box tests to one
# branch and pushes a node: dearer than one test). Medians of 4 alternating rounds, 2-core Xeon,
# M paths/s, block tree -> (16, 0.5): rooms_ring views 3.27 -> 3.48, shepard_metzler views
# 16.6 -> 17.8, the Cornell box 3.50 -> 3.63, the 328k-triangle mesh 0.52 -> 0.49 (noisy: 0.43-0.53
# per round). (8, 1.0): 3.48, -, 3.53, 0.43; (16, 0.25): 3.40, 17.3, 3.61, 0.48.
# After the packet kernel's box test went to plain min/max (3411fe2), (16, 1.0) measured the box
# and rooms_ring views 2-3 % faster and the 328k mesh 4 % slower (three alternating rounds): kept.
PACKET_LEAF_MAX = 16
PACKET_TRI_COST = 0.5

MAX_PASS_SPP = 16  # samples per pixel of one pass once the first passes have shown the speed
# A quiet CPU render's passes (_quiet_schedule): up to this many paths per view (~1 s of the packet
# kernel on the Cornell box on a 2-core machine), so that one pass takes all of a dataset view's or
# the Cornell bench's samples while a Ctrl-C (honoured between passes: a launch cannot be stopped)
# still acts within seconds on one view (V views in a launch: V times that)
QUIET_PASS_PATHS = 2**22
MAX_SPP = 2**31 - 1  # sample indices are 32-bit in the kernels (with --time, a huge spp means "until the time is up")

_state: dict[str, Any] = {"backend": None, "device": None, "kernels": None}
_packed_cache: "weakref.WeakKeyDictionary[Scene, dict[str, dict]]" = weakref.WeakKeyDictionary()  # by layout


def _layout_args(layout: str) -> dict:
    """render.bvh.build_bvh's keyword arguments for the tree of each kernel (_pack's layouts)."""
    return {"blocks": dict(max_leaf=LEAF_MAX, width=BLOCK, block_cost=BLOCK_COST),  # one-path kernel, CPU
            "single": dict(),  # the one-path kernel on a GPU: render.bvh's small leaves, one by one
            "packets": dict(max_leaf=PACKET_LEAF_MAX, width=1, block_cost=PACKET_TRI_COST)}[layout]


# --- backend ---------------------------------------------------------------------------------------
def _cpu_name() -> str:
    return f"{cpu_model()} ({os.cpu_count()} threads)"


def _gpu_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "CUDA GPU"
    except (OSError, subprocess.SubprocessError):
        return "CUDA GPU"


def _cuda_driver_loadable() -> bool:
    """Whether the CUDA driver library loads. Checked before asking Taichi for CUDA: without a
    driver Taichi prints two warnings and starts a CPU runtime that would be thrown away."""
    import ctypes

    for name in (("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            pass
    return False


def init_backend(backend: str = "auto") -> tuple[str, str]:
    """Initialise Taichi for ``backend`` ("cpu", "gpu" = CUDA, "auto" = CUDA if present else CPU)
    unless it already runs that backend. Returns (backend actually used, device description).

    The offline cache is on (Taichi reads its path from ``TI_OFFLINE_CACHE_FILE_PATH`` if set), so a second process
    loads compiled kernels instead of compiling them.
    """
    if backend not in BACKENDS:
        raise RenderError(f"backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    current = _state["backend"]
    if current is not None and (backend == "auto" or backend == current):
        return current, _state["device"]
    # Taichi prints its banner (at import) and its arch (at init) to stdout: send them to stderr, so
    # stdout carries only what our callers print (the CLI's one-line results are parsed by scripts).
    # Taichi takes a redirected stdout at import for a notebook's and wraps every kernel call to
    # flush its print buffer; our kernels print nothing, so that buffer stays off unless the user
    # asked for it (TI_ENABLE_PYBUF).
    ours = "TI_ENABLE_PYBUF" not in os.environ
    if ours:
        os.environ["TI_ENABLE_PYBUF"] = "0"
    try:
        with contextlib.redirect_stdout(sys.stderr), memoized_frame_info():  # (see render.ti_frontend)
            import taichi as ti
    finally:
        if ours:
            os.environ.pop("TI_ENABLE_PYBUF", None)

    if current is not None:
        ti.reset()
        _state.update(backend=None, device=None, kernels=None)
        for layouts in list(_packed_cache.values()):  # device copies belong to the old runtime
            for packed in layouts.values():
                for key in [k for k in packed if isinstance(k, tuple)]:
                    del packed[key]
    kwargs = dict(offline_cache=True, default_fp=ti.f32, default_ip=ti.i32, log_level=ti.WARN)
    used = None
    if backend in ("gpu", "auto") and _cuda_driver_loadable():
        try:
            with contextlib.redirect_stdout(sys.stderr):
                ti.init(arch=ti.cuda, **kwargs)
            if ti.lang.impl.current_cfg().arch == ti.cuda:
                used = "gpu"
            else:
                ti.reset()
        except Exception:  # no usable GPU: Taichi raises or falls back, depending on the version
            used = None
    if used is None and backend == "gpu":
        raise RenderError("the gpu backend needs a CUDA GPU and none was found; use the cpu or auto backend "
                          "(--backend cpu or auto)")
    if used is None:
        with contextlib.redirect_stdout(sys.stderr):
            ti.init(arch=ti.cpu, **kwargs)
        used = "cpu"
    with memoized_frontend():  # (its ti.func decorators: see render.ti_frontend)
        from . import pt_kernels

    _state.update(backend=used, device=_gpu_name() if used == "gpu" else _cpu_name(), kernels=pt_kernels)
    return used, _state["device"]


# --- scene packing ---------------------------------------------------------------------------------
def _luminance(rgb) -> np.ndarray:
    return np.asarray(rgb, np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def _environment_distribution(image: np.ndarray, radiance) -> tuple[np.ndarray, np.ndarray]:
    """Sampling distribution of an equirect environment map (H, W, 3) times ``radiance``: each texel's
    probability is its luminance times the solid angle it spans (sin theta of its row), after taking
    the brightest of its 3 x 3 neighbourhood (x wraps, y clamps, as the bilinear lookup does), so every
    direction the lookup can light has a positive density. Returns (env_cdf, env_pmf) as
    ``render.pt_kernels`` documents them (float32)."""
    h, w = image.shape[:2]
    lum = np.maximum(_luminance(image.reshape(-1, 3) * np.asarray(radiance, np.float64)).reshape(h, w), 0.0)
    padded = np.pad(lum, ((1, 1), (0, 0)), mode="edge")
    dilated = np.zeros_like(lum)
    for dy in range(3):
        for dx in (-1, 0, 1):
            dilated = np.maximum(dilated, np.roll(padded[dy:dy + h], dx, axis=1))
    sin_theta = np.sin((np.arange(h) + 0.5) / h * math.pi)[:, None]
    weight = dilated * sin_theta
    if not weight.sum() > 0.0:  # a black map: uniform over the sphere
        weight = np.broadcast_to(sin_theta, (h, w))
    pmf = weight / weight.sum()
    rows = pmf.sum(axis=1)
    row_cdf = np.cumsum(rows)
    row_cdf[-1] = 1.0
    col_cdf = np.cumsum(pmf, axis=1) / np.maximum(rows, 1e-300)[:, None]
    col_cdf[:, -1] = 1.0
    return (np.concatenate([row_cdf, col_cdf.ravel()]).astype(np.float32), pmf.ravel().astype(np.float32))


def _simd_leaves(backend: str) -> bool:
    """The BVH leaf layout the kernels use on a backend (``render.pt_kernels.intersect``'s simd).

    On the CPU, leaves of up to BLOCK triangles tested together in SIMD lanes (LLVM vectorises the
    block's test). On a GPU each thread is already one SIMT lane, and a block's 72 floats in
    registers made the CUDA kernel 0.47x as fast as small leaves tested one by one
    (bench/results/gpu), so there the BVH keeps render.bvh's one-by-one leaves."""
    return backend == "cpu"


RAND_LEVELS = 2 ** 24  # pt_kernels.rand() returns m / 2**24, m = 0 .. 2**24 - 1


def emitter_cdf(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float32 CDF the kernel's binary search picks emitters from (index k takes the uniforms
    u with cdf[k-1] < u <= cdf[k]), and the probability (E,) float64 with which it really picks each.

    That probability, not power / total, is what the light pdf must use: with a million emitters
    a bin spans only ~16 of rand()'s 2**24 levels and ~16 float32 steps of the CDF, so the two differ
    by several per cent (a bin can even be empty), and an estimator weighted with the nominal pmf
    would make a uniformly bright emitter blotchy."""
    pmf = power / power.sum()
    cdf = np.cumsum(pmf).astype(np.float32)
    cdf[-1] = 1.0
    upto = np.minimum(np.floor(cdf.astype(np.float64) * RAND_LEVELS) + 1.0, RAND_LEVELS)  # levels m with m/2^24 <= cdf[k]
    return cdf, np.diff(upto, prepend=0.0) / RAND_LEVELS


def _no_denormals(a: np.ndarray) -> np.ndarray:
    """float32 ``a`` with magnitudes below 1e-30 set to 0 (denormal arithmetic is slow on x86)."""
    return np.where(np.abs(a) < 1e-30, np.float32(0.0), a)


def _pack(scene: Scene, simd: bool = True, packets: bool = False) -> dict[str, np.ndarray]:
    """The scene as the flat arrays ``render.pt_kernels`` documents (triangles in BVH leaf order),
    with SIMD leaf blocks (``_simd_leaves``) or leaves tested one by one, in the tree of the
    one-path kernel on a GPU or, with ``packets``, of the packet kernel (``_layout_args``)."""
    layout = "blocks" if simd else "packets" if packets else "single"
    cached = _packed_cache.setdefault(scene, {}).get(layout)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    bvh = build_bvh(scene.positions, **_layout_args(layout))
    order = bvh.tri_index
    pos = np.asarray(scene.positions, np.float32)[order]  # (T, 3, 3) leaf order
    pos = _no_denormals(pos)
    tri_v = np.stack([pos[:, 0], pos[:, 1] - pos[:, 0], pos[:, 2] - pos[:, 0]], axis=1).reshape(-1, 3)
    tri_x = np.zeros((1, 3), np.float32)  # placeholder: only the packet kernel's triangle test reads it
    if layout == "packets":  # e1 x e2 of each triangle
        e = tri_v.reshape(-1, 3, 3).astype(np.float64)
        tri_x = _no_denormals(np.cross(e[:, 1], e[:, 2]).astype(np.float32))
    node_i = np.stack([bvh.node_a, bvh.node_b, bvh.node_axis], axis=1).astype(np.int32)
    if simd:
        tri_blk, node_i = _triangle_blocks(tri_v.reshape(-1, 3, 3), node_i)
    else:
        tri_blk = np.zeros((1, 9, BLOCK), np.float32)  # unused placeholder: the kernels read tri_v
    tri_n = np.asarray(scene.normals, np.float32)[order].reshape(-1, 3)
    tri_uv = np.asarray(scene.uvs, np.float32)[order].reshape(-1, 2)
    tri_i = np.stack([scene.material_id[order], scene.object_id[order]], axis=1).astype(np.int32)

    mats = scene.material_arrays()
    n_mat = len(scene.materials)
    mat_i = np.stack([mats["type"], mats["texture"], mats["checker"]], axis=1).astype(np.int32)
    mat_f = np.zeros((n_mat, 16), np.float32)
    mat_f[:, 0:3] = mats["base"]
    mat_f[:, 3:6] = np.where(mats["type"][:, None] == EMITTER, mats["radiance"], 0.0)
    mat_f[:, 6:9] = mats["checker1"]
    mat_f[:, 9:12] = mats["checker2"]
    mat_f[:, 12] = mats["roughness"]
    mat_f[:, 13] = mats["ior"]
    mat_f[:, 14] = mats["checker_scale"]
    mat_f[:, 15] = mats["two_sided"]

    # emitter triangles, picked in proportion to their emitted power (area x luminance)
    is_emit = mats["type"][tri_i[:, 0]] == EMITTER
    area = 0.5 * np.linalg.norm(np.cross(pos[:, 1] - pos[:, 0], pos[:, 2] - pos[:, 0]).astype(np.float64), axis=1)
    power = np.where(is_emit, area * _luminance(mat_f[tri_i[:, 0], 3:6]), 0.0)
    emit_tri = np.flatnonzero(power > 0)
    # in the scene's triangle order, not the tree's: a random number then picks the same emitter
    # whatever BVH was built (leaf sizes, backend), and images differ between trees by rounding only
    emit_tri = emit_tri[np.argsort(order[emit_tri], kind="stable")].astype(np.int32)
    n_emit = len(emit_tri)

    lights = scene.light_arrays()
    n_delta = int(len(lights["type"]))
    env = scene.environment
    env_rad = np.asarray(env.radiance, np.float32)
    has_env = bool(env_rad.max() > 0.0)
    n_groups = (1 if n_emit else 0) + n_delta + (1 if has_env else 0)
    p_group = 1.0 / max(n_groups, 1)

    tri_pdf = np.zeros(len(pos), np.float32)
    emit_cdf = np.ones(1, np.float32)
    if n_emit:
        emit_cdf, pmf = emitter_cdf(power[emit_tri])
        tri_pdf[emit_tri] = (p_group * pmf / area[emit_tri]).astype(np.float32)

    def rgb(img) -> np.ndarray:  # (H, W, 3) float32 from grey, grey+alpha, RGB or RGBA
        img = np.asarray(img, np.float32)
        img = img[..., None] if img.ndim == 2 else img
        return np.repeat(img[..., :1], 3, axis=2) if img.shape[2] < 3 else img[..., :3]

    textures = [rgb(t) for t in scene.textures]
    env_tex = -1
    if env.image is not None and has_env:
        env_tex = len(textures)
        textures.append(rgb(env.image))
    tex_info = np.zeros((max(len(textures), 1), 3), np.int32)
    offset = 0
    for i, t in enumerate(textures):
        tex_info[i] = (offset, t.shape[1], t.shape[0])
        offset += t.shape[0] * t.shape[1]
    tex = np.concatenate([t.reshape(-1, 3) for t in textures]) if textures else np.zeros((1, 3), np.float32)

    env_cdf, env_pmf = np.ones(1, np.float32), np.ones(1, np.float32)
    if env_tex >= 0:
        env_cdf, env_pmf = _environment_distribution(textures[env_tex], env_rad)
    light_f = np.stack([lights["position"], lights["direction"], lights["power"]], axis=1).reshape(-1, 3)
    params = np.array([*env_rad, env_tex, n_emit, n_delta, int(has_env), n_groups], np.float32)
    packed = {
        "tri_v": tri_v, "tri_n": tri_n, "tri_uv": tri_uv, "tri_i": tri_i, "tri_pdf": tri_pdf,
        "node_lo": bvh.node_lo, "node_hi": bvh.node_hi,
        "node_i": node_i, "tri_blk": tri_blk, "tri_x": tri_x,
        "emit_tri": emit_tri if n_emit else np.zeros(1, np.int32), "emit_cdf": emit_cdf,
        "mat_i": mat_i, "mat_f": mat_f, "tex": tex.astype(np.float32), "tex_info": tex_info,
        "light_i": lights["type"] if n_delta else np.zeros(1, np.int32),
        "light_f": light_f.astype(np.float32) if n_delta else np.zeros((3, 3), np.float32),
        "env_cdf": env_cdf, "env_pmf": env_pmf, "params": params, "tri_order": order, "bvh_depth": bvh.depth,
        "bvh_nodes": bvh.num_nodes,
        "bvh_seconds": time.perf_counter() - t0,
    }
    if bvh.depth >= STACK_SIZE:
        raise RenderError(f"BVH depth {bvh.depth} exceeds the traversal stack ({STACK_SIZE})")
    if len(tri_blk) > MAX_BLOCKS:
        raise RenderError(f"{scene.num_triangles} triangles make {len(tri_blk)} BVH leaf blocks; the path "
                          f"tracer handles at most {MAX_BLOCKS}")
    _packed_cache[scene][layout] = packed
    return packed


def _triangle_blocks(v0e1e2: np.ndarray, node_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each leaf's triangles as blocks of BLOCK lanes for the kernels' SIMD test.

    v0e1e2: (T, 3, 3) v0, e1, e2 per triangle in leaf order; node_i: (N, 3) (a, b, axis).
    Returns tri_blk (B, 9, BLOCK) float32 — row c of block b is component c (v0 xyz, e1 xyz, e2 xyz)
    of its lanes; unused lanes are zero (det = 0: never hit) — and node_i with each leaf's third
    entry (its unused split axis) set to the leaf's first block: block j of a leaf with triangles
    a .. a + b - 1 holds triangles a + BLOCK j + lane."""
    node_i = node_i.copy()
    leaves = np.flatnonzero(node_i[:, 1] > 0)
    start, count = node_i[leaves, 0].astype(np.int64), node_i[leaves, 1].astype(np.int64)
    n_blocks = (count + BLOCK - 1) // BLOCK
    first = np.concatenate([[0], np.cumsum(n_blocks)[:-1]])
    node_i[leaves, 2] = first
    leaf = np.repeat(np.arange(len(leaves)), count)  # per triangle of the leaves, in leaf order
    offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # position in its leaf
    blk = np.zeros((int(n_blocks.sum()), 9, BLOCK), np.float32)
    blk[first[leaf] + offset // BLOCK, :, offset % BLOCK] = v0e1e2.reshape(-1, 9)[start[leaf] + offset]
    return blk, node_i


def _camera_row(cam: Camera) -> np.ndarray:
    """A view's row of ``render_pass``'s cams: origin, right * tan * aspect, up * tan, forward, near, far."""
    right, up, fwd = cam.basis()
    tan_half = math.tan(math.radians(cam.fov) / 2.0)
    # far clamped to FAR, beyond every hit: a far of 1e300 would become inf, which the fast-math
    # kernels assume never occurs
    return np.concatenate([cam.position, right * tan_half * cam.aspect, up * tan_half, fwd,
                           [cam.near, min(cam.far, FAR)]]).astype(np.float32)


_DEVICE_KEYS = ("tri_v", "tri_n", "tri_uv", "tri_i", "tri_pdf", "node_lo", "node_hi", "node_i", "tri_blk",
                "emit_tri", "emit_cdf", "mat_i", "mat_f", "tex", "tex_info", "light_i", "light_f", "env_cdf",
                "env_pmf")  # the one-path kernel's scene arguments, in its order
_ARRAY_KEYS = _DEVICE_KEYS + ("tri_x",)  # and what the packet kernel reads besides (_PACKET_KEYS)


def _device_arrays(packed: dict, backend: str) -> dict:
    """Kernel arguments: numpy arrays on the CPU (zero-copy), Taichi ndarrays on a GPU (uploaded once)."""
    if backend == "cpu":
        return {k: packed[k] for k in _ARRAY_KEYS}
    key = ("_dev", backend)
    if key not in packed:
        import taichi as ti

        dev = {}
        for k in _ARRAY_KEYS:
            a = np.ascontiguousarray(packed[k])
            if k == "tri_blk":
                nd = ti.ndarray(dtype=ti.types.matrix(9, BLOCK, ti.f32), shape=a.shape[0])
            elif a.ndim == 2 and a.shape[1] in (2, 3) and k not in ("mat_f",):
                dt = {(np.float32, 3): ti.math.vec3, (np.float32, 2): ti.math.vec2,
                      (np.int32, 3): ti.math.ivec3, (np.int32, 2): ti.math.ivec2}[(a.dtype.type, a.shape[1])]
                nd = ti.ndarray(dtype=dt, shape=a.shape[0])
            else:
                nd = ti.ndarray(dtype=ti.f32 if a.dtype == np.float32 else ti.i32, shape=a.shape)
            nd.from_numpy(a)
            dev[k] = nd
        packed[key] = dev
    return packed[key]


# --- the entry point -------------------------------------------------------------------------------
# On the CPU, scenes the packet kernel covers run in it (render.pt_packets: 16 or 8 paths per thread
# in SIMD); False runs every scene in the one-path-per-thread kernel (tests compare the two).
CPU_PACKETS = True


_PACKET_KEYS = ("tri_v", "tri_n", "tri_uv", "node_lo", "node_hi", "node_i", "emit_tri", "emit_cdf", "mat_f",
                "light_i", "light_f", "tri_x")


def _packet_records(packed: dict) -> np.ndarray:
    """What the packet kernel reads of a hit triangle, in one row per triangle (leaf order) so that a
    lane's loads are adjacent: (T, 16) float32 of the unit geometric normal (e1 x e2), the light
    density tri_pdf, the material's base colour and radiance, its type, two-sidedness and checker
    flag, the object id, whether the corners' normals differ from the geometric one (1: interpolate
    them), and the material id. Ids are exact as float32 below 2**24."""
    if "packet_records" not in packed:
        v = packed["tri_v"].reshape(-1, 3, 3).astype(np.float64)
        ng = np.cross(v[:, 1], v[:, 2])
        ng /= np.linalg.norm(ng, axis=1, keepdims=True)
        n = packed["tri_n"].reshape(-1, 3, 3).astype(np.float64)
        smooth = (np.abs(n - ng[:, None, :]) > 1e-6).any(axis=(1, 2))
        m = packed["tri_i"][:, 0]
        mat_i, mat_f = packed["mat_i"], packed["mat_f"]
        rec = np.concatenate([ng, packed["tri_pdf"][:, None], mat_f[m, 0:6], mat_i[m, 0:1], mat_f[m, 15:16],
                              mat_i[m, 2:3], packed["tri_i"][:, 1:2], smooth[:, None], m[:, None]], axis=1)
        packed["packet_records"] = np.ascontiguousarray(rec, np.float32)
    return packed["packet_records"]


def _packet_scene(scene: Scene) -> bool:
    """Whether render.pt_packets covers a scene: diffuse and emitter materials without image
    textures (checkers are fine), and no environment map (a constant environment is fine: _pack
    packs an image only when the radiance is above 0)."""
    mats = scene.material_arrays()
    env = scene.environment
    env_map = env.image is not None and bool(np.asarray(env.radiance, np.float32).max() > 0.0)  # as _pack
    return bool(np.isin(mats["type"], (DIFFUSE, EMITTER)).all() and (mats["texture"] < 0).all() and not env_map)


def _pass_schedule(spp: int, first: int = 1, largest: int = MAX_PASS_SPP):
    """Samples per pass: first, first, then doubling up to largest (default 1, 1, 2, 4, 8, 16, 16, ...:
    a quick first pass, then big ones), summing to spp. A generator: a huge spp under a time budget
    must not build its whole list first."""
    size, total, passes = first, 0, 0
    while total < spp:
        n = min(size, spp - total)
        yield n
        total += n
        passes += 1
        if passes > 1:
            size = min(size * 2, largest)


def _quiet_schedule(spp: int, pixels: int):
    """Samples per pass of a quiet CPU render (no progress bar, time budget or Ctrl-C handling) of
    views of ``pixels`` pixels: as many as QUIET_PASS_PATHS paths per view allow, at least
    MAX_PASS_SPP, in every pass; a function of the view's settings, not of how many views share
    the launches."""
    size = max(MAX_PASS_SPP, QUIET_PASS_PATHS // max(pixels, 1))
    return _pass_schedule(spp, first=size, largest=size)


def pathtrace(scene: Scene, camera: Camera | None = None, *, spp: int, max_depth: int = 8, seed: int = 0,
              backend: str = "auto", time_budget: float | None = None, progress: bool = False,
              strategy: str = "mis", interruptible: bool = False) -> Frame:
    """Render ``scene`` through ``camera`` (default: ``scene.camera``) by path tracing.

    spp: samples per pixel (box filter: each sample is uniform over its pixel).
    max_depth: path segments, as Mitsuba's ``path``: 0 = black (the AOVs are still written),
        1 = emitters seen directly, 2 = + direct light, -1 = unbounded (Russian roulette ends
        paths; it starts at depth 5 in every case).
    seed: the image is a pure function of (scene, camera, spp, max_depth, seed, backend) and of the
        passes it renders in: the same call gives the same image bit for bit, whatever the thread
        count. Passes are 1, 1, 2, 4, 8, 16, 16, ... samples per pixel, except on the CPU with no
        progress bar, time budget or Ctrl-C handling, where they are as big as 2**22 paths per
        view allow (faster; one pass up to 64 spp at 256 x 256); a pixel's samples are then summed
        in another order, so the two agree to float rounding, not bit for bit. A time budget
        renders a prefix of the passes' sample sequence.
    backend: "cpu", "gpu" (CUDA) or "auto" (CUDA if present, else CPU).
    time_budget: seconds of wall time from the call (scene packing, BVH build and kernel compile or
        cache load included: the budget is the caller's wait); passes stop at the last whole pass
        inside it (at least one pass runs), and ``meta["spp"]`` says how many samples were taken.
    progress: show a tqdm bar over samples.
    strategy: "mis" (default); "nee" or "bsdf" use one light-transport strategy alone (for tests).
    interruptible: Ctrl-C ends the render at the end of the pass in hand (at least one pass runs),
        as a time budget would, with ``meta["interrupted"]`` True; a second Ctrl-C raises
        KeyboardInterrupt as usual. For the command line, which writes what was rendered.

    Returns a Frame: rgb (H, W, 3) float32 linear radiance, AOVs from the first hit through each
    pixel centre, and ``meta`` with renderer, settings, backend, device, kernel, passes,
    paths_per_second, compile_seconds and render_seconds.
    """
    camera = scene.camera if camera is None else camera
    return pathtrace_views(scene, [camera], spp=spp, max_depth=max_depth, seeds=[seed], backend=backend,
                           time_budget=time_budget, progress=progress, strategy=strategy,
                           interruptible=interruptible)[0]


def pathtrace_views(scene: Scene, cameras, *, spp: int, max_depth: int = 8, seeds=None, backend: str = "auto",
                    time_budget: float | None = None, progress: bool = False, strategy: str = "mis",
                    interruptible: bool = False) -> list[Frame]:
    """Render several views of one scene in the same kernel launches (one per pass), for many small
    views (datasets) where one launch per view would leave the threads or the GPU idle.

    cameras: Cameras of one size. seeds: one per camera (default 0, 1, 2, ...). View k is bit for bit
    ``pathtrace(scene, cameras[k], seed=seeds[k], ...)`` with the other arguments as documented
    there. Returns one Frame per camera; each one's meta describes the whole call (paths_per_second,
    render_seconds, ...) and adds ``views``.
    """
    cameras = list(cameras)
    if not cameras:
        return []
    seeds = list(range(len(cameras))) if seeds is None else list(seeds)
    if len(seeds) != len(cameras):
        raise RenderError(f"{len(seeds)} seeds for {len(cameras)} cameras; expected one seed per camera")
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) > 1:
        raise RenderError(f"cameras of sizes {sorted(sizes)}; expected one size for all the views of a call")
    reach = max(float(np.abs(c.position).max()) for c in cameras)
    if reach > MAX_COORDINATE:  # the kernels' FAR assumes every ray starts within the scene's range
        raise RenderError(f"a camera {reach:.3g} m from the origin; expected positions within +-{MAX_COORDINATE:.0e} m")
    if not isinstance(spp, (int, np.integer)) or not 1 <= spp <= MAX_SPP:
        raise RenderError(f"spp {spp!r}; expected an integer from 1 to {MAX_SPP}")
    if not isinstance(max_depth, (int, np.integer)) or max_depth < -1:
        raise RenderError(f"max_depth {max_depth!r}; expected -1 (unbounded) or an integer >= 0")
    if strategy not in STRATEGIES:
        raise RenderError(f"strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if time_budget is not None and not time_budget > 0:
        raise RenderError(f"time_budget {time_budget!r}; expected seconds > 0")
    if scene.num_triangles == 0:
        raise RenderError(f"{scene.source}: the scene has no triangles")

    t_start = time.perf_counter()
    used, device = init_backend(backend)
    k = _state["kernels"]
    packets = used == "cpu" and CPU_PACKETS and _packet_scene(scene)
    simd = _simd_leaves(used) and not packets
    with notice_if_slow(f"building the BVH over {scene.num_triangles} triangles (a first run also compiles its "
                        "numba code, cached afterwards)", after=2.0 if progress else None):
        packed = _pack(scene, simd, packets)
    dev = _device_arrays(packed, used)
    params = packed["params"]
    W, H = cameras[0].width, cameras[0].height
    V = len(cameras)
    cams = np.stack([_camera_row(c) for c in cameras])
    seed32 = np.array([int(x) & 0xFFFFFFFF for x in seeds], np.uint32)

    import taichi as ti

    def buffer(dtype, vec: bool):
        """An output array: numpy on the CPU (zero-copy), a device ndarray on a GPU (numpy arguments
        would be copied both ways at every pass)."""
        if used == "cpu":
            return np.zeros((V * H * W, 3) if vec else (V * H * W,), dtype)
        nd = ti.ndarray(dtype=ti.math.vec3 if vec else (ti.f32 if dtype == np.float32 else ti.i32), shape=V * H * W)
        nd.fill(0)
        return nd

    def small(a: np.ndarray):  # per-view inputs: numpy on the CPU, uploaded once on a GPU
        if used == "cpu":
            return a
        nd = ti.ndarray(dtype=ti.u32 if a.dtype == np.uint32 else ti.f32, shape=a.shape)
        nd.from_numpy(a)
        return nd

    accum = buffer(np.float32, True)
    depth_arr, normal_arr = buffer(np.float32, False), buffer(np.float32, True)
    albedo_arr, obj_arr = buffer(np.float32, True), buffer(np.int32, False)
    scene_args = [dev[n] for n in _DEVICE_KEYS]
    views_args = (small(seed32), small(cams))
    max_d = int(max_depth)
    mode = STRATEGIES[strategy]

    aovs = (depth_arr, normal_arr, albedo_arr, obj_arr)
    if packets:
        with memoized_frontend():
            from .pt_packets import compile_settings, render_pass_packets
            from .pt_packets import lanes as lanes_of

        records = _packet_records(packed)
        # two compiled variants: scenes with interpolated normals, checkers or point/directional
        # lights, and scenes with none (code a scene does not need costs the vectorised loop ~25 %
        # even when skipped at run time; within the first variant each costs only 1-2 %)
        full = bool(records[:, 14].any() or records[:, 12].any() or int(params[5]) > 0)

        def render_pass(w, h, v, sample0, n):
            render_pass_packets(accum, *aovs, w, h, v, sample0, n, *views_args, max_d, mode,
                                *(dev[key] for key in _PACKET_KEYS), params, records, full)
    else:
        def render_pass(w, h, v, sample0, n):
            k.render_pass(accum, *aovs, w, h, v, sample0, n, *views_args, max_d, mode, *scene_args, params, simd)
    # Compile (or load from the offline cache) with an empty launch, so the timings separate the two.
    t_c = time.perf_counter()
    with notice_if_slow("compiling the path tracer's Taichi kernel (first run only, up to a minute; later runs "
                        "load it from Taichi's offline cache)", after=2.0 if progress else None), \
            _compile_config(**(compile_settings(full) if packets else {})), memoized_frontend():
        render_pass(0, 0, 0, 0, 0)
        ti.sync()
    compile_seconds = time.perf_counter() - t_c

    t_r = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        what = f"path {W}x{H}" + (f" x{V} views" if V > 1 else "")
        bar = tqdm(total=spp, unit="spp", desc=f"{what} {used}", leave=False)
    done = passes = 0
    first_pass_seconds = None
    last = None  # (samples, seconds) of the latest pass: predicts the next one under a time budget
    # Passes let a progress bar, a time budget or Ctrl-C act between them. With none of those on the
    # CPU the passes are as big as _quiet_schedule allows (one for a dataset's views): each pass ends
    # in a sync, and a packet thread's lanes run idle at the tail of its queue once per pass
    # (rooms_ring views: 3.60 M paths/s in one pass of 64 spp, 3.42 in the 1, 1, 2, 4, 8, 16, ...
    # schedule; medians of 4 alternating rounds, 2-core Xeon).
    quiet = used == "cpu" and not progress and time_budget is None and not interruptible
    with ctrl_c_requests(interruptible) as stop:
        for n in (_quiet_schedule(spp, W * H) if quiet else _pass_schedule(spp)):
            if stop and done > 0:  # Ctrl-C: keep the passes done
                break
            if time_budget is not None and last is not None:
                elapsed = time.perf_counter() - t_start
                if elapsed + last[1] * n / last[0] > time_budget:
                    break
            tp = time.perf_counter()
            render_pass(W, H, V, done, n)
            ti.sync()
            dt = time.perf_counter() - tp
            last = (n, dt)
            if first_pass_seconds is None:
                first_pass_seconds = time.perf_counter() - t_start
            done += n
            passes += 1
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    render_seconds = time.perf_counter() - t_r
    host = (lambda a: a) if used == "cpu" else (lambda a: a.to_numpy())  # noqa: E731
    acc, depth_arr, normal_arr, albedo_arr, obj_arr = map(host, (accum, depth_arr, normal_arr, albedo_arr, obj_arr))
    rgb = (acc / np.float32(done)).reshape(V, H, W, 3).astype(np.float32)
    meta = {
        "renderer": "path", "spp": done, "spp_requested": int(spp), "passes": passes, "max_depth": max_d,
        "strategy": strategy, "backend": used, "device": device, "kernel": "packet" if packets else "path",
        "lanes": lanes_of(full) if packets else 1, "width": W, "height": H, "views": V,
        "paths_per_second": V * W * H * done / max(render_seconds, 1e-9),
        "compile_seconds": compile_seconds, "render_seconds": render_seconds,
        "first_pass_seconds": first_pass_seconds, "total_seconds": time.perf_counter() - t_start,
        "interrupted": bool(stop) and done < spp,
        "bvh_seconds": packed["bvh_seconds"], "bvh_nodes": packed["bvh_nodes"], "bvh_depth": packed["bvh_depth"],
        "triangles": scene.num_triangles,
    }
    depth_arr, normal_arr = depth_arr.reshape(V, H, W), normal_arr.reshape(V, H, W, 3)
    albedo_arr, obj_arr = albedo_arr.reshape(V, H, W, 3), obj_arr.reshape(V, H, W)
    return [Frame(rgb=rgb[v], depth=depth_arr[v], normal=normal_arr[v], albedo=albedo_arr[v], object_id=obj_arr[v],
                  meta={**meta, "seed": int(seeds[v])}) for v in range(V)]


@contextlib.contextmanager
def _compile_config(**settings):
    """Taichi's compile settings (CompileConfig fields) changed for the kernels compiled (or loaded
    from its offline cache) within the block, and restored after it."""
    import taichi as ti

    cfg = ti.lang.impl.current_cfg()
    with patched_attributes([(cfg, name, value) for name, value in settings.items()]):
        yield


# --- probes for tests -------------------------------------------------------------------------------
def trace_rays(scene: Scene, origins: np.ndarray, directions: np.ndarray, backend: str = "cpu",
               packets: bool | str = False):
    """Closest hits through the kernels' BVH traversal. origins, directions: (R, 3).
    packets: through the packet kernel's own traversal and triangle test (render.pt_packets, its
    tree, its smaller variant's lanes and leaf step; the CPU only); "vector": its larger variant's
    (pt_packets.trace's vector_step). Returns t (R,) float32 (inf on a miss) and the original
    triangle id (R,) int32 (-1)."""
    used, _ = init_backend(backend)
    if packets and used != "cpu":
        raise RenderError("the packet kernel runs on the CPU only")
    packed = _pack(scene, simd := _simd_leaves(used) and not packets, packets)
    dev = _device_arrays(packed, used)
    o = np.ascontiguousarray(origins, np.float32)
    d = np.ascontiguousarray(directions, np.float32)
    t = np.zeros(len(o), np.float32)
    tri = np.zeros(len(o), np.int32)
    if packets:
        with memoized_frontend():
            from .pt_packets import trace_rays_packets

        trace_rays_packets(o, d, t, tri, dev["node_lo"], dev["node_hi"], dev["node_i"], dev["tri_v"], dev["tri_x"],
                           packets == "vector")
    else:
        _state["kernels"].trace_rays(o, d, t, tri, dev["node_lo"], dev["node_hi"], dev["node_i"], dev["tri_v"],
                                     dev["tri_blk"], simd)
    return t, np.where(tri >= 0, packed["tri_order"][np.maximum(tri, 0)], -1).astype(np.int32)


def _probe_backend() -> None:
    """Probes run on whatever backend this process already uses (the CPU if none yet)."""
    init_backend(_state["backend"] or "cpu")


def _environment_of(scene: Scene) -> tuple[dict, int, int]:
    """The scene's packed arrays and its environment map's width and height (it must have one)."""
    _probe_backend()
    packed = _pack(scene, _simd_leaves(_state["backend"]))
    env_tex = int(packed["params"][3])
    if env_tex < 0:
        raise RenderError(f"{scene.source}: the scene has no environment map")
    _, w, h = (int(x) for x in packed["tex_info"][env_tex])
    return packed, w, h


def sample_environment(scene: Scene, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directions (N, 3) drawn from the scene's environment map by next-event estimation's sampling,
    at uniforms u (N, 2), and their solid-angle density (N,) (for tests)."""
    packed, w, h = _environment_of(scene)
    u = np.ascontiguousarray(u, np.float32)
    d, pdf = np.zeros((len(u), 3), np.float32), np.zeros(len(u), np.float32)
    _state["kernels"].env_sample_probe(u, packed["env_cdf"], packed["env_pmf"], w, h, d, pdf)
    return d, pdf


def environment_pdf(scene: Scene, directions: np.ndarray) -> np.ndarray:
    """The density (per steradian) with which ``sample_environment`` draws each unit direction (N, 3)."""
    packed, w, h = _environment_of(scene)
    pdf = np.zeros(len(directions), np.float32)
    _state["kernels"].env_pdf_probe(np.ascontiguousarray(directions, np.float32), packed["env_pmf"], w, h, pdf)
    return pdf


@dataclass
class BSDFSamples:
    """N samples of one BSDF from a fixed wo, in its local frame (z = shading normal)."""

    wi: np.ndarray  # (N, 3)
    weight: np.ndarray  # (N, 3) f |cos| / pdf
    pdf: np.ndarray  # (N,) solid-angle pdf (1 for delta lobes)
    delta: np.ndarray  # (N,) int32
    eval: np.ndarray  # (N, 3) bsdf_eval's f |cos| at wi
    eval_pdf: np.ndarray  # (N,) bsdf_eval's pdf at wi


MATERIAL_CODES = {"diffuse": 0, "metal": 1, "glass": 2, "emitter": 3}


def sample_bsdf(material: str, base, wo, n: int, *, roughness: float = 0.0, ior: float = 1.5,
                entering: bool = True, seed: int = 0) -> BSDFSamples:
    """Draw n samples of a material's BSDF from direction wo (local frame, unit)."""
    _probe_backend()
    wi, w, e = (np.zeros((n, 3), np.float32) for _ in range(3))
    pdf, epdf = np.zeros(n, np.float32), np.zeros(n, np.float32)
    delta = np.zeros(n, np.int32)
    _state["kernels"].bsdf_probe(MATERIAL_CODES[material], list(map(float, base)), float(roughness), float(ior),
                                 int(entering), list(map(float, wo)), int(seed) & 0xFFFFFFFF, wi, w, pdf, delta, e,
                                 epdf)
    return BSDFSamples(wi, w, pdf, delta, e, epdf)


def eval_bsdf(material: str, base, wo, wis: np.ndarray, *, roughness: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """f |cos| (N, 3) and sampling pdf (N,) of a non-delta BSDF at directions wis (N, 3), local frame."""
    _probe_backend()
    wis = np.ascontiguousarray(wis, np.float32)
    fc = np.zeros((len(wis), 3), np.float32)
    pdf = np.zeros(len(wis), np.float32)
    _state["kernels"].bsdf_eval_probe(MATERIAL_CODES[material], list(map(float, base)), float(roughness),
                                      list(map(float, wo)), wis, fc, pdf)
    return fc, pdf
