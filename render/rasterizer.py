"""The z-buffer rasterizer: ``rasterize(scene, camera)`` and ``rasterize_batch(pairs)``.

Pipeline (mirrors pbrt's frame -> sample -> radiance layering, STYLE rule 3):
setup (pack scenes, build shadow maps) -> triangle (clip, snap, edge functions, depth test into a
visibility buffer of triangle id + barycentrics) -> fragment (deferred shading of the visible
sample only, then a box resolve). The kernels live in ``render.raster_kernels``; the brute-force
per-pixel reference they are tested against is ``render.raster_reference``.

Direct light only, with the scene's own materials:
- diffuse: Lambert, ``albedo / pi``; metal: GGX (alpha = roughness as given) with separable Smith
  masking and Schlick Fresnel, F0 = color; glass: a tinted reflector (GGX alpha 0.05, dielectric
  Schlick F0 from ior, times color); emitters add their radiance seen from the front face and
  reflect diffusely with their albedo;
- point lights (W/sr, 1/r^2), directional lights (irradiance), emitter triangles replaced by
  ``area_samples`` fixed point samples, each a one-sided cosine lobe of intensity L * A / N
  (together they carry the emitter's power pi * L * A);
- the environment's mean radiance as unoccluded ambient light (a Lambertian surface reflects
  albedo * L_env); background pixels show the environment;
- shadow maps: a cube map per point light and per area sample (the face behind an emitter is not
  rendered), one orthographic map per directional light, looked up with a normal offset of one
  texel plus a depth bias of ``SHADOW_BIAS_TEXELS`` texels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Iterable, Sequence

import numba
from numba.core import event as numba_event
import numpy as np

from .camera import Camera
from .errors import RenderError
from .frame import Frame
from .scene import Scene

# numba picks its threading layer once per process, at the first parallel launch. workqueue avoided
# the stalls seen with OpenMP on small machines (issue 3); NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

from . import raster_kernels as K  # noqa: E402

SSAA_CHOICES = (1, 2, 4)
AREA_SAMPLES = 16          # point samples standing in for all emitter triangles of a scene
CUBE_RESOLUTION = 256      # side of each cube-map face (point lights, area samples)
DIRECTIONAL_RESOLUTION = 1024  # side of a directional light's orthographic map
BAND_MIN_ROWS = 128        # a single view this tall is split into one row band per thread
SHADOW_BIAS_TEXELS = 1.5   # depth bias in texels; with the normal offset no acne on the Cornell box
MAX_SUBSAMPLES = 2 ** 19   # W*ssaa and H*ssaa stay inside the fixed-point guard band
BYTES_PER_SAMPLE = 4 + 4 + 8  # depth, triangle id, barycentrics
BYTES_PER_PIXEL = 12 + 4 + 12 + 12 + 4  # rgb, depth, normal, albedo, id


@functools.lru_cache(maxsize=1)
def _memory_bytes() -> int:
    """Physical memory in bytes (or 8 GiB when the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _check_request(width: int, height: int, ssaa: int, views: int = 1, workers: int = 1) -> None:
    if ssaa not in SSAA_CHOICES:
        raise RenderError(f"ssaa {ssaa!r} is not supported; expected one of {', '.join(map(str, SSAA_CHOICES))}")
    if width < 1 or height < 1:
        raise RenderError(f"image size {width}x{height}; expected width and height >= 1")
    if width * ssaa > MAX_SUBSAMPLES or height * ssaa > MAX_SUBSAMPLES:
        raise RenderError(f"image size {width}x{height} at ssaa {ssaa} exceeds {MAX_SUBSAMPLES} samples per side "
                          "(the rasterizer's fixed-point range); lower the resolution or ssaa")
    need = width * height * (views * BYTES_PER_PIXEL + min(views, workers) * ssaa * ssaa * BYTES_PER_SAMPLE)
    have = _memory_bytes()
    if need > 0.8 * have:
        raise RenderError(f"image size {width}x{height} at ssaa {ssaa} for {views} view(s) needs "
                          f"{need / 2**30:.1f} GiB of buffers, more than 80 % of this machine's {have / 2**30:.1f} GiB; "
                          "lower the resolution, ssaa or the batch size")


# --- setup: cameras, lights, shadow-map projections ---------------------------------------------
@functools.lru_cache(maxsize=4096)
def _view_arrays(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World->clip (4, 4), world->view depth (4,) and the camera record (14,) for the kernels.
    Cached per camera (a frozen value); callers must not modify the arrays."""
    M = camera.projection_matrix() @ camera.view_matrix()
    r, u, f = camera.basis()
    p = np.asarray(camera.position, np.float64)
    dvec = np.array([f[0], f[1], f[2], -f @ p])  # depth along the forward axis
    tan_half = math.tan(math.radians(camera.fov) / 2.0)
    cam = np.array([*camera.position, *r, *u, *f, tan_half, camera.aspect])
    return M, dvec, cam


def _cube_face(light: np.ndarray, axis: int, negative: bool, near: float, far: float):
    """Clip matrix and depth vector of one 90-degree cube-map face looking along +-axis from light.

    Clip x, y are the next two axes in cyclic order (matching ``raster_kernels._shadow_visible``);
    w is the distance along the face's axis, which is also the stored depth.
    """
    s = -1.0 if negative else 1.0
    ua, va = (axis + 1) % 3, (axis + 2) % 3
    M = np.zeros((4, 4))
    M[0, ua], M[0, 3] = 1.0, -light[ua]
    M[1, va], M[1, 3] = 1.0, -light[va]
    M[3, axis], M[3, 3] = s, -s * light[axis]
    a, b = (far + near) / (far - near), -2.0 * far * near / (far - near)
    M[2] = a * M[3]
    M[2, 3] += b
    return M, M[3].copy()


def _ortho_basis(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (right, up) orthogonal to a unit direction."""
    ref = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    right = np.cross(direction, ref)
    right /= np.linalg.norm(right)
    return right, np.cross(right, direction)


def _halton(i: int, base: int) -> float:
    f, r = 1.0, 0.0
    while i > 0:
        f /= base
        r += f * (i % base)
        i //= base
    return r


def area_light_samples(scene: Scene, count: int = AREA_SAMPLES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed point samples on the emitter triangles: positions (N, 3), unit front normals (N, 3) and
    intensity scales (N, 3) float64, where a sample's radiant intensity towards a direction at angle
    theta from its normal is ``scale * cos(theta)`` (W/sr); scale = L_e * A_total / N.

    Triangles are chosen by stratified area-proportional sampling and points within them by a
    Halton (2, 3) sequence, so the set is the same on every call.
    """
    emit = scene.emitter_mask()
    if count <= 0 or not emit.any():
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3))
    rad = np.array([m.radiance for m in scene.materials], np.float64)[scene.material_id]
    idx = np.flatnonzero(emit & (rad.max(axis=1) > 0))
    if idx.size == 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3))
    areas = scene.triangle_areas()[idx]
    total = areas.sum()
    cdf = np.cumsum(areas) / total
    p = scene.positions[idx].astype(np.float64)
    normals = scene.geometric_normals()[idx].astype(np.float64)
    out_p, out_n, out_s = [], [], []
    for k in range(count):
        t = min(int(np.searchsorted(cdf, (k + 0.5) / count)), idx.size - 1)
        r1, r2 = _halton(k + 1, 2), _halton(k + 1, 3)
        a, b = 1.0 - math.sqrt(r1), r2 * math.sqrt(r1)  # uniform on the triangle
        out_p.append(a * p[t, 0] + b * p[t, 1] + (1.0 - a - b) * p[t, 2])
        out_n.append(normals[t])
        out_s.append(rad[idx[t]] * total / count)
    return np.array(out_p), np.array(out_n), np.array(out_s)


def _scene_lights(scene: Scene, pos: np.ndarray, shadows: bool, area_samples: int, cube_res: int, dir_res: int):
    """Packed lights of one scene and the shadow-map faces they need.

    Returns lights_f (L, 20) float64 [position, direction, power, centre, half extent, right, up, -],
    lights_i (L, 3) int64 [kind, map offset (relative to this scene), map side or 0] and the faces as
    a list of (M, dvec, offset, side).
    """
    lo, hi, _ = K.bounds_and_depth(pos, np.zeros(4))
    centre = 0.5 * (lo + hi)
    radius = max(0.5 * float(np.linalg.norm(hi - lo)), 1e-6)
    rows_f, rows_i, faces = [], [], []
    offset = 0

    def cube(pos: np.ndarray, front: np.ndarray | None) -> tuple[int, int]:
        nonlocal offset
        near = 1e-4 * radius
        far = float(np.linalg.norm(pos - centre)) + 2.0 * radius
        start = offset
        for axis in range(3):
            for neg in (False, True):
                M, d = _cube_face(pos, axis, neg, near, far)
                offset += cube_res * cube_res
                if front is not None:
                    # Skip a face whose whole frustum lies behind a one-sided emitter sample.
                    s = -1.0 if neg else 1.0
                    ua, va = (axis + 1) % 3, (axis + 2) % 3
                    corners = [s * np.eye(3)[axis] + cu * np.eye(3)[ua] + cv * np.eye(3)[va]
                               for cu in (-1, 1) for cv in (-1, 1)]
                    if max(float(c @ front) for c in corners) <= 0.0:
                        continue
                faces.append((M, d, start + (2 * axis + int(neg)) * cube_res * cube_res, cube_res))
        return start, cube_res

    for light in scene.lights:
        row = np.zeros(20)
        if light.type == "point":
            pos = np.asarray(light.position, np.float64)
            row[0:3], row[6:9] = pos, light.intensity
            off, res = cube(pos, None) if shadows else (0, 0)
            rows_i.append((K.L_POINT, off, res))
        else:
            d = np.asarray(light.direction, np.float64)
            d /= np.linalg.norm(d)
            right, up = _ortho_basis(d)
            h = radius * 1.01
            row[3:6], row[6:9], row[9:12], row[12], row[13:16], row[16:19] = d, light.irradiance, centre, h, right, up
            if shadows:
                M = np.zeros((4, 4))
                M[0, :3], M[0, 3] = right / h, -right @ centre / h
                M[1, :3], M[1, 3] = up / h, -up @ centre / h
                M[2, :3], M[2, 3] = d / h, -d @ centre / h  # z = depth/h - 1: near at depth 0, far at 2h
                M[3, 3] = 1.0
                dvec = np.array([d[0], d[1], d[2], -d @ centre + h])
                faces.append((M, dvec, offset, dir_res))
                rows_i.append((K.L_DIRECTIONAL, offset, dir_res))
                offset += dir_res * dir_res
            else:
                rows_i.append((K.L_DIRECTIONAL, 0, 0))
        rows_f.append(row)
    sp, sn, ss = area_light_samples(scene, area_samples)
    for p, n, s in zip(sp, sn, ss):
        row = np.zeros(20)
        # Lift the sample off its emitter so the emitter's own surface never shadows it.
        p = p + n * 1e-4 * radius
        row[0:3], row[3:6], row[6:9] = p, n, s
        off, res = cube(p, n) if shadows else (0, 0)
        rows_f.append(row)
        rows_i.append((K.L_AREA_SAMPLE, off, res))
    lights_f = np.array(rows_f, np.float64).reshape(-1, 20)
    lights_i = np.array(rows_i, np.int64).reshape(-1, 3)
    return lights_f, lights_i, faces, offset


def _render_shadow_maps(pts: np.ndarray, chunks: np.ndarray, T: int, faces: list, maps: np.ndarray,
                        parallel: bool | None = None) -> None:
    """Render the ``faces`` of ``_scene_lights`` (all T triangles) into ``maps``: in parallel over
    the faces when there are several and several numba threads (``parallel`` None), else serially
    (the same maps either way)."""
    if parallel is None:
        parallel = len(faces) > 1 and numba.get_num_threads() > 1
    kernel = K.render_shadow_maps if parallel else K.render_shadow_maps_serial
    kernel(pts, chunks, np.array([(0, T)] * len(faces), np.int64), np.array([f[0] for f in faces], np.float64),
           np.array([f[1] for f in faces], np.float64), np.array([f[2] for f in faces], np.int64),
           np.array([f[3] for f in faces], np.int64), maps)


def _rgb(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 from a grey (H, W), (H, W, 1), grey+alpha or RGB(A) image."""
    a = np.asarray(img, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] < 3:
        a = np.repeat(a[..., :1], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


# --- packing ------------------------------------------------------------------------------------
class _Packed:
    """Scenes packed into the flat arrays the kernels take (one scene, or a batch's distinct scenes
    concatenated by ``merge``). Shadow maps are rendered when a scene is packed with shadows."""

    ARRAYS = ("pos", "nrm", "uvs", "mat_id", "obj_id", "tri_cull", "mtype", "mbase", "mrad", "mrough", "mior",
              "mtex", "mchk", "mc1", "mc2", "mscale", "tex_data", "tex_info", "lights_f", "lights_i", "maps",
              "scene_tri", "scene_light", "scene_env", "scene_envtex", "scene_amb")

    @classmethod
    def single(cls, scene: Scene, shadows: bool, area_samples: int, cube_res: int, dir_res: int) -> "_Packed":
        self = cls()
        # Writable C-contiguous copies: kernels compiled for one array kind are not recompiled for
        # another (a Scene's arrays are read-only, a merged batch's are not).
        c = lambda a, dt=None: np.array(a, dtype=dt, order="C", copy=True)  # noqa: E731
        T = scene.num_triangles
        self.pos = c(scene.positions, np.float32)
        self.nrm = c(scene.normals, np.float32)
        self.uvs = c(scene.uvs, np.float32)
        self.mat_id = c(scene.material_id, np.int32)
        self.obj_id = c(scene.object_id, np.int32)
        ma = scene.material_arrays()
        self.mtype, self.mtex, self.mchk = c(ma["type"]), c(ma["texture"]), c(ma["checker"])
        self.mbase, self.mrad = c(ma["base"]), c(ma["radiance"])
        self.mc1, self.mc2 = c(ma["checker1"]), c(ma["checker2"])
        self.mrough, self.mior, self.mscale = c(ma["roughness"]), c(ma["ior"]), c(ma["checker_scale"])
        self.tri_cull = c((1 - ma["two_sided"])[self.mat_id], np.int32)
        images = [_rgb(img) for img in scene.textures]
        e = scene.environment
        rad = np.asarray(e.radiance, np.float64)
        envtex, amb = -1, rad
        if e.image is not None:
            env_img = _rgb(e.image)
            envtex, amb = len(images), rad * env_img.reshape(-1, 3).mean(axis=0)
            images.append(env_img)
        sizes = [im.shape[0] * im.shape[1] for im in images]
        self.tex_data = c(np.concatenate([im.reshape(-1, 3) for im in images]) if images else np.zeros((1, 3)),
                          np.float32)
        self.tex_info = np.array([(sum(sizes[:k]), im.shape[0], im.shape[1]) for k, im in enumerate(images)],
                                 np.int64).reshape(-1, 3)
        self.pts = K.corner_rows(self.pos)
        self.chunks = K.chunk_bounds(self.pos)
        self.lights_f, self.lights_i, faces, size = _scene_lights(scene, self.pos, shadows, area_samples, cube_res,
                                                                  dir_res)
        self.maps = np.full(max(size, 1), np.inf, np.float32)
        if faces:
            _render_shadow_maps(self.pts, self.chunks, T, faces, self.maps)
        self.scene_tri = np.array([[0, T]], np.int64)
        self.scene_light = np.array([[0, len(self.lights_f)]], np.int64)
        self.scene_env = rad.reshape(1, 3).copy()
        self.scene_envtex = np.array([envtex], np.int64)
        self.scene_amb = np.asarray(amb, np.float64).reshape(1, 3).copy()
        lo, hi, _ = K.bounds_and_depth(self.pos, np.zeros(4))
        self.corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        return self

    @classmethod
    def merge(cls, packs: Sequence["_Packed"]) -> "_Packed":
        """Concatenate per-scene packs, offsetting every index into the shared tables."""
        if len(packs) == 1:
            return packs[0]
        self = cls()
        for name in cls.ARRAYS:
            setattr(self, name, np.concatenate([getattr(p, name) for p in packs]))
        t_off = m_off = tx_off = texel_off = l_off = map_off = 0
        cuts = {k: [] for k in ("t", "m", "tx", "texel", "l", "map")}
        for p in packs:
            for k, v in (("t", t_off), ("m", m_off), ("tx", tx_off), ("texel", texel_off), ("l", l_off),
                         ("map", map_off)):
                cuts[k].append(v)
            t_off += len(p.pos)
            m_off += len(p.mtype)
            tx_off += len(p.tex_info)
            texel_off += len(p.tex_data)
            l_off += len(p.lights_f)
            map_off += len(p.maps)
        rep = lambda key, attr: np.repeat(cuts[key], [len(getattr(p, attr)) for p in packs])  # noqa: E731
        self.mat_id = (self.mat_id + rep("m", "mat_id")).astype(np.int32)
        self.mtex = np.where(self.mtex >= 0, self.mtex + rep("tx", "mtex"), -1).astype(np.int32)
        self.tex_info = self.tex_info.copy()
        self.tex_info[:, 0] += rep("texel", "tex_info")
        self.lights_i = self.lights_i.copy()
        self.lights_i[:, 1] += rep("map", "lights_i")
        self.scene_tri = self.scene_tri + np.asarray(cuts["t"])[:, None]
        self.scene_light = self.scene_light + np.asarray(cuts["l"])[:, None]
        self.scene_envtex = np.where(self.scene_envtex >= 0, self.scene_envtex + np.asarray(cuts["tx"]), -1)
        self.pts = np.concatenate([p.pts for p in packs], axis=1)
        self.chunks = K.chunk_bounds(self.pos)
        return self

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in (*self.ARRAYS, "pts", "chunks"))

    def kernel_args(self):
        """The scene arrays in the order ``raster_kernels.render_views`` takes them after the views."""
        return (self.scene_tri, self.scene_light, self.scene_env, self.scene_envtex, self.scene_amb, self.pos,
                self.pts, self.chunks, self.nrm, self.uvs, self.mat_id, self.obj_id, self.tri_cull, self.mtype,
                self.mbase, self.mrad, self.mrough, self.mior, self.mtex, self.mchk, self.mc1, self.mc2, self.mscale,
                self.tex_data, self.tex_info, self.lights_f, self.lights_i, self.maps)


# Recently packed scenes (with their shadow maps), so rendering many views of one scene packs it
# once, as an OpenGL program keeps its vertex buffers. Bounded by memory rather than count (a packed
# 100k-triangle scene is ~12 MB, a dataset room ~1 MB): at most PACK_CACHE_BYTES, least recently used
# first out, and an entry goes as soon as its scene is garbage collected.
_PACK_CACHE: OrderedDict[tuple, tuple[weakref.ref, _Packed, int]] = OrderedDict()
PACK_CACHE_BYTES = 256 << 20
_pack_cache_bytes = 0


def _pack_cache_drop(key: tuple, ref: weakref.ref | None = None) -> None:
    """Remove ``key`` (only if its entry still holds ``ref``, when given)."""
    global _pack_cache_bytes
    entry = _PACK_CACHE.get(key)
    if entry is not None and (ref is None or entry[0] is ref):
        del _PACK_CACHE[key]
        _pack_cache_bytes -= entry[2]


def _pack(scene: Scene, *settings) -> _Packed:
    global _pack_cache_bytes
    key = (id(scene), *settings)
    hit = _PACK_CACHE.get(key)
    if hit is not None and hit[0]() is scene:
        _PACK_CACHE.move_to_end(key)
        return hit[1]
    _pack_cache_drop(key)
    packed = _Packed.single(scene, *settings)
    size = packed.nbytes()
    _PACK_CACHE[key] = (weakref.ref(scene, lambda ref, key=key: _pack_cache_drop(key, ref)), packed, size)
    _pack_cache_bytes += size
    while _pack_cache_bytes > PACK_CACHE_BYTES and len(_PACK_CACHE) > 1:
        _pack_cache_drop(next(iter(_PACK_CACHE)))
    return packed


# Buffers kept for reuse: the output images behind the Frames and the visibility buffers. A render
# loop drops each frame before it asks for the next, and fresh pages cost: the first 512x512 frame
# after other work took ~3 ms more (2,800 page faults for its 11.5 MB of outputs) on the 2-core
# machine we measure on. Every view of an array holds a reference to it, so an array with no more
# references than the pool's own is used by nobody: it can be handed out again, and an image a
# caller keeps is never overwritten (a second thread rendering at the same time finds the first
# one's arrays in use and gets new ones). At most POOL_BYTES are kept, least recently used shape
# first out.
_POOL: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()
_POOL_LOCK = threading.Lock()
POOL_BYTES = 128 << 20
_pool_bytes = 0


def _refs_of_a_free_array() -> int:
    """getrefcount of an array referenced only by a list, read the way ``_buffers`` reads the pool
    (measured, not assumed: interpreters differ in how they count a loop variable's reference)."""
    arrays = [np.empty(1)]
    return next(sys.getrefcount(a) for a in arrays)


_FREE_REFS = _refs_of_a_free_array()


def _buffers(*specs: tuple[tuple[int, ...], type]) -> list[np.ndarray]:
    """One uninitialised array per (shape, dtype): a pooled array nothing references any more, or a
    new one (kept in the pool). Callers get views, never the pooled array itself."""
    global _pool_bytes
    out = []
    with _POOL_LOCK:  # held until the views exist, so two threads never take the same array
        for shape, dtype in specs:
            key = (shape, np.dtype(dtype).str)
            arrays = _POOL.setdefault(key, [])
            _POOL.move_to_end(key)
            arr = next((a for a in arrays if sys.getrefcount(a) <= _FREE_REFS), None)
            if arr is None:
                arr = np.empty(shape, dtype)
                if arr.nbytes <= POOL_BYTES:
                    arrays.append(arr)
                    _pool_bytes += arr.nbytes
            out.append(arr[...])
        while _pool_bytes > POOL_BYTES:
            key, arrays = next(iter(_POOL.items()))
            if arrays:  # (a shape too large to pool has an empty list)
                _pool_bytes -= arrays.pop(0).nbytes
            if not arrays:
                del _POOL[key]
    return out


# --- compilation bookkeeping ------------------------------------------------------------------------
_warmed: set[str] = set()  # the views kernels warm_up compiled in this process


def warm_up(parallel: bool | None = None) -> float:
    """Compile the kernels rendering uses (shadow maps, bounds and the views kernel: its serial form,
    its parallel one, or with None both) on a one-triangle scene, or load them from numba's cache
    (``NUMBA_CACHE_DIR``); returns the seconds spent (0 when this process already did). For a
    process that starts others (dataset generation), which then load the cache instead of all
    compiling at once. A plain render does not need it: each kernel compiles at its first call,
    only those the call uses."""
    want = {"serial", "parallel"} if parallel is None else {"parallel" if parallel else "serial"}
    if want <= _warmed:
        return 0.0
    from .scene import Environment, Light, Material, SceneObject

    t0 = time.perf_counter()
    p = np.array([[[-1, -1, -2], [1, -1, -2], [0, 1, -2]], [[-1, -1, -3], [0, 1, -3], [1, -1, -3]]], np.float32)
    n = np.tile(np.array([0, 0, 1], np.float32), (2, 3, 1))
    tiny = Scene(positions=p, normals=n, uvs=np.zeros((2, 3, 2), np.float32),
                 material_id=np.array([0, 1], np.int32), object_id=np.array([0, 1], np.int32),
                 materials=(Material("m", "diffuse", albedo=(0.5, 0.5, 0.5), texture=0),
                            Material("e", "emitter", radiance=(1, 1, 1), two_sided=False)),
                 objects=(SceneObject("a", "mesh", "m"), SceneObject("b", "mesh", "e")),
                 lights=(Light("point", position=(0, 0, 0), intensity=(1, 1, 1)),
                         Light("directional", irradiance=(1, 1, 1))),
                 environment=Environment(radiance=(0.1, 0.1, 0.1), image=np.ones((2, 4, 3), np.float32)),
                 cameras=(Camera((0, 0, 0), (0, 0, -1), width=4, height=4),),
                 textures=(np.ones((2, 2, 3), np.float32),))
    twin = dataclasses.replace(tiny)  # a second scene object, so the batch path merges two packs
    if "serial" in want:  # the serial views kernel (and shadow maps)
        _render([(tiny, tiny.camera), (twin, twin.camera)], 1, True, 2, 8, 8, False)
    if "parallel" in want:  # the parallel one (one view per thread; with one thread the serial)
        _render([(tiny, tiny.camera), (twin, twin.camera)], 1, True, 2, 8, 8, True)
    pos = np.array(tiny.positions, np.float32)
    _, _, faces, size = _scene_lights(tiny, pos, True, 2, 8, 8)
    for par in (False, True):  # both shadow-map kernels, whichever this process's thread count picks
        _render_shadow_maps(K.corner_rows(pos), K.chunk_bounds(pos), len(pos), faces,
                            np.full(size, np.inf, np.float32), par)
    _warmed.update(want)
    _all_behind_near(tiny, tiny.camera)
    return time.perf_counter() - t0


# --- public API -----------------------------------------------------------------------------------
def _render(pairs, ssaa, shadows, area_samples, cube_res, dir_res, parallel, packs=None, aovs=True) -> list:
    """Render pairs (all with triangles) into Frames without meta (aovs False: only their (H, W, 3)
    rgb arrays, and the AOVs are never allocated). ``packs``: {id(scene): _Packed} already built by
    the caller (a batch of more scenes than the pack cache holds would otherwise pack every scene,
    shadow maps included, a second time)."""
    scenes, index = [], {}
    for scene, _ in pairs:
        if id(scene) not in index:
            index[id(scene)] = len(scenes)
            scenes.append(scene)
    packs = packs or {}
    packed = _Packed.merge([packs[id(sc)] if id(sc) in packs else _pack(sc, bool(shadows), area_samples, cube_res,
                                                                         dir_res) for sc in scenes])
    frames: list[Frame | None] = [None] * len(pairs)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, (_, cam) in enumerate(pairs):
        groups.setdefault((cam.height, cam.width), []).append(k)
    for (h, w), ks in groups.items():
        views = []
        for k in ks:
            scene, cam = pairs[k]
            views.append(_view_arrays(cam))
        view_scene = np.array([index[id(pairs[k][0])] for k in ks], np.int64)
        view_M = np.ascontiguousarray(np.stack([v[0] for v in views]), np.float64)
        view_d = np.ascontiguousarray(np.stack([v[1] for v in views]), np.float64)
        view_cam = np.ascontiguousarray(np.stack([v[2] for v in views]), np.float64)
        nv = len(ks)
        threads = numba.get_num_threads()
        mode = ("views" if parallel and nv > 1 and threads > 1 else
                "bands" if parallel and threads > 1 and h >= BAND_MIN_ROWS else "serial")
        slots = numba.config.NUMBA_NUM_THREADS if mode == "views" else 1
        na = nv if aovs else slots  # AOV images: one per view, or one scratch image per thread
        hs, ws = h * ssaa, w * ssaa
        rgb, depth, normal, albedo, oid, *scratch = _buffers(
            ((nv, h, w, 3), np.float32), ((na, h, w), np.float32), ((na, h, w, 3), np.float32),
            ((na, h, w, 3), np.float32), ((na, h, w), np.int32),
            ((slots, hs, ws), np.float32), ((slots, hs, ws), np.int32), ((slots, hs, ws, 2), np.float32))
        args = (bool(aovs), view_scene, view_M, view_d, view_cam, *packed.kernel_args(), bool(shadows),
                float(SHADOW_BIAS_TEXELS), int(ssaa), rgb, depth, normal, albedo, oid, *scratch)
        if mode == "views":
            K.render_views(1, *args)
        elif mode == "bands":
            K.render_views(threads, *args)
        else:
            K.render_views_serial(*args)
        for m, k in enumerate(ks):
            frames[k] = (Frame(rgb=rgb[m], depth=depth[m], normal=normal[m], albedo=albedo[m], object_id=oid[m])
                         if aovs else rgb[m])
    return frames


def _all_behind_near(scene: Scene, camera: Camera) -> bool:
    """True when every triangle corner is closer than the near plane (nothing can be drawn)."""
    if scene.num_triangles == 0:
        return False
    _, dvec, _ = _view_arrays(camera)
    return bool(K.bounds_and_depth(np.array(scene.positions, np.float32), dvec)[2] < camera.near)


def _box_depths(corners: np.ndarray, camera: Camera) -> tuple[float, float]:
    """Nearest and farthest view depth of the scene's bounding-box corners (8, 3). Every corner
    closer than the near plane puts every triangle there too; every corner beyond it, none (cheap;
    ``_all_behind_near`` is the exact test)."""
    _, dvec, _ = _view_arrays(camera)
    d = corners @ dvec[:3] + dvec[3]
    return float(d.min()), float(d.max())


def rasterize_batch(pairs: Iterable[tuple[Scene, Camera | None]], *, ssaa: int = 1, shadows: bool = True,
                    area_samples: int = AREA_SAMPLES, shadow_resolution: int = CUBE_RESOLUTION,
                    directional_resolution: int = DIRECTIONAL_RESOLUTION, parallel: bool = True) -> list[Frame]:
    """Render many (scene, camera) pairs in one call; returns one ``Frame`` per pair, in order.

    pairs: (Scene, Camera or None for the scene's own camera). Views may differ in size and scene;
        a scene's packed arrays and shadow maps are built once and kept (the most recently used
        (scene, settings) up to ``PACK_CACHE_BYTES``, while the scene lives), so many views of one
        scene, in one call or many, pay for them once.
    ssaa: 1, 2 or 4 samples per pixel side, box-resolved.
    shadows: shadow maps for every light and area sample (False: every light is unoccluded).
    area_samples: point samples standing in for all emitter triangles of each scene.
    shadow_resolution, directional_resolution: cube-face and directional map sides (texels).
    parallel: render views in parallel (numba prange, one view per task); a single view of at least
        ``BAND_MIN_ROWS`` rows is split into one row band per thread instead (each band skips the
        32-triangle chunks whose bounding box misses its rows; on a machine whose other jobs hold
        the cores it can be slower than one thread).
    Frames of views with the same size are views into one stacked (N, H, W, ...) array per AOV. That
    memory may have held frames the caller had dropped (never one it still references, even through
    a slice): a render loop reuses the same pages instead of faulting in fresh ones.
    ``meta`` holds renderer, ssaa, shadows, compile_seconds (JIT or cache-load time spent in this
    call, 0 when warm), render_seconds (this call's wall time after compilation, for the whole batch)
    and views (the batch size).
    Raises RenderError for an unsupported ssaa or a resolution whose buffers would not fit in memory.
    """
    return _batch(pairs, ssaa, shadows, area_samples, shadow_resolution, directional_resolution, parallel, True)


def rasterize_rgb(pairs: Iterable[tuple[Scene, Camera | None]], *, ssaa: int = 1, shadows: bool = True,
                  area_samples: int = AREA_SAMPLES, shadow_resolution: int = CUBE_RESOLUTION,
                  directional_resolution: int = DIRECTIONAL_RESOLUTION, parallel: bool = True) -> list[np.ndarray]:
    """``rasterize_batch`` for callers that keep only the images (dataset generation): one (H, W, 3)
    float32 linear rgb array per pair, the same numbers as the Frames' rgb, without allocating the
    AOVs (at 64 x 64 that is 4x less fresh memory per view). The near-plane warning comes only from
    the scene bounding-box test, not the exact per-triangle one."""
    return _batch(pairs, ssaa, shadows, area_samples, shadow_resolution, directional_resolution, parallel, False)


def _batch(pairs, ssaa, shadows, area_samples, shadow_resolution, directional_resolution, parallel, aovs) -> list:
    pairs = [(s, c if c is not None else s.camera) for s, c in pairs]
    if not pairs:
        return []
    ssaa = int(ssaa)
    workers = numba.config.NUMBA_NUM_THREADS  # visibility buffers: one per pool thread at most
    for (h, w), n in _sizes(pairs).items():
        _check_request(w, h, ssaa, n, workers)
    t0 = time.perf_counter()
    # numba compiles (or loads from its cache) each kernel at its first call: only the kernels this
    # call needs. Both happen under numba's compiler lock, whose events time them apart from the
    # rendering.
    with numba_event.install_listener("numba:compiler_lock", _CompileClock()) as clock:
        frames = _batch_frames(pairs, ssaa, shadows, area_samples, shadow_resolution, directional_resolution,
                               parallel, aovs)
    compile_s = clock.seconds
    if not aovs:
        return frames
    elapsed = max(time.perf_counter() - t0 - compile_s, 0.0)
    for f in frames:
        f.meta.update(renderer="raster", ssaa=ssaa, shadows=bool(shadows), compile_seconds=compile_s,
                      render_seconds=elapsed, views=len(pairs))
    return frames


class _CompileClock(numba_event.TimingListener):
    """numba's timer of an event, for the installing thread only: the seconds it holds numba's
    compiler lock (compiling a kernel or loading it from the cache). numba's listeners hear every
    thread; another thread's events are ignored, and time spent waiting for the lock while another
    thread compiles counts as rendering."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def on_start(self, event):
        if threading.get_ident() == self.thread:
            super().on_start(event)

    def on_end(self, event):
        if threading.get_ident() == self.thread:
            super().on_end(event)

    @property
    def seconds(self) -> float:
        return self.duration if self.done else 0.0


def _batch_frames(pairs, ssaa, shadows, area_samples, shadow_resolution, directional_resolution, parallel,
                  aovs) -> list:
    settings = (bool(shadows), int(area_samples), int(shadow_resolution), int(directional_resolution))
    keep, packs, straddles = [], {}, set()
    for k, (s, c) in enumerate(pairs):
        if s.num_triangles == 0:
            warnings.warn(f"{s.source}: the scene has no triangles; the frame is empty", stacklevel=4)
            continue
        if id(s) not in packs:  # pairs keeps every scene alive, so its id is stable for this call
            packs[id(s)] = _pack(s, *settings)
        near, far = _box_depths(packs[id(s)].corners, c)
        keep.append(k)  # rendered even with nothing in front of the camera: the background shows the environment
        if far < c.near:
            _warn_near(s, c)
        elif near < c.near:  # the near plane cuts the box: an empty frame needs the exact test
            straddles.add(k)
    frames: list = [None] * len(pairs)
    if keep:
        done = _render([pairs[k] for k in keep], ssaa, *settings, parallel, packs, aovs)
        for k, f in zip(keep, done):
            frames[k] = f
            s, c = pairs[k]
            if aovs and k in straddles and f.object_id.max() < 0 and _all_behind_near(s, c):
                _warn_near(s, c)
    if not aovs:
        return [f if f is not None else np.zeros((c.height, c.width, 3), np.float32)
                for f, (_, c) in zip(frames, pairs)]
    return [f if f is not None else Frame.empty(c.height, c.width) for f, (_, c) in zip(frames, pairs)]


def _warn_near(scene: Scene, camera: Camera) -> None:
    warnings.warn(f"{scene.source}: every triangle is closer to the camera than its near plane "
                  f"({camera.near} m); the frame shows only the environment", stacklevel=5)


def _sizes(pairs) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for _, c in pairs:
        out[(c.height, c.width)] = out.get((c.height, c.width), 0) + 1
    return out


def rasterize(scene: Scene, camera: Camera | None = None, *, ssaa: int = 1, shadows: bool = True,
              **options) -> Frame:
    """Rasterize one view of ``scene`` (``camera`` None: the scene's first camera) into a ``Frame``.

    rgb: linear radiance, direct light only (see the module docstring for the shading model);
    depth: metres along the camera's forward axis (inf background); normal: unit world-space shading
    normal as stored on the mesh (not flipped towards the viewer; 0 background); albedo: base colour
    after texture/checker; object_id: int32, -1 background.
    ssaa: 1, 2 or 4 (box resolve of rgb and albedo; depth, normal and id from one sample near the
    pixel centre). options: see ``rasterize_batch`` (area_samples, shadow_resolution,
    directional_resolution, parallel).
    """
    return rasterize_batch([(scene, camera)], ssaa=ssaa, shadows=shadows, **options)[0]


def _raw_geometry(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scene's corners as the raster kernels read them (``corner_rows``), its chunk bounds and
    (T,) int32 1 where a triangle's material is one-sided (back faces culled), for the diagnostics
    below that rasterize without packing or shading."""
    pos = np.array(scene.positions, np.float32)
    two = scene.material_arrays()["two_sided"][scene.material_id]
    return K.corner_rows(pos), K.chunk_bounds(pos), (1 - two).astype(np.int32)


def coverage(scene: Scene, camera: Camera | None = None, cull: bool = True) -> np.ndarray:
    """(H, W) int32: fragments each pixel receives with no depth test (watertightness diagnostics).
    cull: apply back-face culling to one-sided materials as ``rasterize`` does."""
    camera = camera or scene.camera
    M, d, _ = _view_arrays(camera)
    pts, chunks, one_sided = _raw_geometry(scene)
    tri_cull = one_sided if cull else np.zeros(scene.num_triangles, np.int32)
    return K.coverage_count(pts, chunks, tri_cull, M, d, camera.width, camera.height)


def visibility(scene: Scene, camera: Camera | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw visibility buffer at one sample per pixel: triangle index (H, W) int32 (-1 none) and
    view depth (H, W) float32 (inf none). Same clipping, culling and fill rule as ``rasterize``;
    used to compare triangle ids with other rasterizers."""
    camera = camera or scene.camera
    _check_request(camera.width, camera.height, 1)
    M, d, _ = _view_arrays(camera)
    pts, chunks, one_sided = _raw_geometry(scene)
    h, w = camera.height, camera.width
    zbuf = np.full((h, w), np.inf, np.float32)
    tbuf = np.full((h, w), -1, np.int32)
    bbuf = np.empty((h, w, 2), np.float32)
    K.raster_triangles(pts, chunks, 0, scene.num_triangles, one_sided, M, d, w, h, zbuf, tbuf, bbuf,
                       np.zeros((1, 1), np.int32), K.MODE_VISIBILITY)
    return tbuf, zbuf
