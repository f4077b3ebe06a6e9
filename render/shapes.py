"""Tessellation of the analytic shapes and the object transform.

Each ``make_*`` function returns ``(positions, normals, uvs)`` in object space as a triangle soup:
positions and normals (T, 3, 3) float64, uvs (T, 3, 2) float64. Corners are counter-clockwise seen
from outside (the front face). Smooth shapes carry their exact analytic normals; boxes and quads
are flat.
"""

from __future__ import annotations

import functools
import math
import signal
import sys
from pathlib import Path

import numpy as np

from .ctrl_c import ctrl_c_requests

Soup = tuple[np.ndarray, np.ndarray, np.ndarray]


def soup(vertices, normals, uvs, faces) -> Soup:
    """Indexed mesh -> triangle soup: (V,3), (V,3), (V,2), (T,3) int -> (T,3,3), (T,3,3), (T,3,2)."""
    f = np.asarray(faces, np.int64)
    return (np.asarray(vertices, np.float64)[f], np.asarray(normals, np.float64)[f],
            np.asarray(uvs, np.float64)[f])


def _grid_faces(rows: int, cols: int) -> np.ndarray:
    """Two triangles per cell of a (rows+1) x (cols+1) vertex grid, row-major vertex order."""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    a = (i * (cols + 1) + j).ravel()
    b, c, d = a + 1, a + cols + 2, a + cols + 1
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def make_quad(size=(2.0, 2.0)) -> Soup:
    """Rectangle in the xy plane centred at the origin, facing +z; uv (0,0) at (-x,-y), (1,1) at (+x,+y).
    With the default size it is Mitsuba's ``rectangle`` ([-1, 1]^2)."""
    sx, sy = size[0] / 2.0, size[1] / 2.0
    v = [(-sx, -sy, 0), (sx, -sy, 0), (sx, sy, 0), (-sx, sy, 0)]
    uv = [(0, 0), (1, 0), (1, 1), (0, 1)]
    return soup(v, [(0, 0, 1)] * 4, uv, [(0, 1, 2), (0, 2, 3)])


def make_box(size=(2.0, 2.0, 2.0)) -> Soup:
    """Axis-aligned box centred at the origin, flat faces facing outwards (Mitsuba's ``cube`` by default)."""
    hx, hy, hz = (s / 2.0 for s in size)
    faces = []
    # (outward normal axis, sign): each face is a quad mapped by a rotation of the +z quad.
    rots = [np.eye(3),                                           # +z
            _rot_y(180.0),                                       # -z
            _rot_y(90.0), _rot_y(-90.0),                         # +x, -x
            _rot_x(-90.0), _rot_x(90.0)]                         # +y, -y
    for r in rots:
        p, n, uv = make_quad((2.0, 2.0))
        p = (p.reshape(-1, 3) + (0, 0, 1)) @ r.T
        n = n.reshape(-1, 3) @ r.T
        p = p * (hx, hy, hz)
        faces.append((p.reshape(-1, 3, 3), n.reshape(-1, 3, 3), uv))
    return tuple(np.concatenate(x) for x in zip(*faces))


def _sphere_uv(d: np.ndarray) -> np.ndarray:
    u = 0.5 + np.arctan2(d[:, 0], d[:, 2]) / (2 * math.pi)
    v = 1.0 - np.arccos(np.clip(d[:, 1], -1, 1)) / math.pi
    return np.stack([u, v], 1)


def import_trimesh():
    """The trimesh module, imported with Ctrl-C held back until the import ends. trimesh guards
    its optional imports (scipy, networkx, ...) with ``except BaseException``, so a
    KeyboardInterrupt arriving during them would be swallowed and the command would run on as if
    never interrupted; a held Ctrl-C is delivered once the import is done. (Imported lazily:
    trimesh and scipy cost ~1 s and most scenes need neither.)"""
    if "trimesh" in sys.modules:
        import trimesh

        return trimesh
    with ctrl_c_requests(second_raises=False) as presses:
        import trimesh
    if presses:
        signal.raise_signal(signal.SIGINT)  # to whatever handler is in place again
    return trimesh


# trimesh's icospheres of 0..ICOSPHERE_TABLE_LEVELS - 1 subdivisions (3 is the default), stored:
# importing trimesh (and scipy, networkx) costs a process ~0.7 s, a tenth of a 2,000-scene dataset
# worker's life, for tables of 20-1,280 faces. ``write_icosphere_table()`` rewrites the file from
# trimesh; the tests check that it still equals trimesh's output.
ICOSPHERE_TABLE = Path(__file__).with_name("data") / "icospheres.npz"
ICOSPHERE_TABLE_LEVELS = 4


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's unit icosphere with ``subdivisions``: vertices (V, 3) float64 and faces (T, 3)
    int64, exactly as ``trimesh.creation.icosphere`` makes them (from the stored table when it
    holds that level). The arrays are read-only (shared by every call)."""
    if 0 <= subdivisions < ICOSPHERE_TABLE_LEVELS:
        return _icosphere_table()[subdivisions]
    return _trimesh_icosphere(subdivisions)


@functools.lru_cache(maxsize=1)
def _icosphere_table() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The stored levels, read once per process (a sphere of each new radius asked for one)."""
    with np.load(ICOSPHERE_TABLE) as table:
        levels = tuple((table[f"vertices{k}"], table[f"faces{k}"]) for k in range(ICOSPHERE_TABLE_LEVELS))
    for arrays in levels:
        for a in arrays:
            a.flags.writeable = False
    return levels


def _trimesh_icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    ico = import_trimesh().creation.icosphere(subdivisions=int(subdivisions), radius=1.0)
    return np.asarray(ico.vertices, np.float64), np.asarray(ico.faces, np.int64)


def write_icosphere_table(path: str | Path = ICOSPHERE_TABLE) -> Path:
    """Store trimesh's icospheres of 0..ICOSPHERE_TABLE_LEVELS - 1 subdivisions at ``path``
    (atomically)."""
    from .image_io import atomic_path

    arrays = {}
    for level in range(ICOSPHERE_TABLE_LEVELS):
        arrays[f"vertices{level}"], arrays[f"faces{level}"] = _trimesh_icosphere(level)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return Path(path)


def make_sphere(radius=1.0, subdivisions=3, smooth=True) -> Soup:
    """Icosphere (trimesh's subdivided icosahedron) of the given radius. ``subdivisions=0,
    smooth=false`` is an icosahedron with flat faces."""
    v, faces = icosphere(int(subdivisions))
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    p, n, uv = soup(v * radius, v, _sphere_uv(v), faces)
    return (p, n, uv) if smooth else _flat(p, uv)


def _flat(p: np.ndarray, uv: np.ndarray) -> Soup:
    """Replace corner normals by face normals."""
    fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    return p, np.repeat(fn[:, None, :], 3, axis=1), uv


def _revolve(profile_r, profile_y, profile_nr, profile_ny, segments: int, profile_v) -> Soup:
    """Surface of revolution about +y: profile points (r, y) with normals (nr, ny), swept over
    ``segments`` around the axis; u runs around (0 at +z), v along the profile. Counter-clockwise
    seen from outside when the profile runs from bottom to top."""
    phi = np.linspace(0.0, 2 * math.pi, segments + 1)
    s, c = np.sin(phi), np.cos(phi)
    r, y, nr, ny = (np.asarray(a, np.float64) for a in (profile_r, profile_y, profile_nr, profile_ny))
    # vertex grid rows = profile points, cols = angles
    vx = r[:, None] * s[None, :]
    vz = r[:, None] * c[None, :]
    vy = np.broadcast_to(y[:, None], vx.shape)
    nx = nr[:, None] * s[None, :]
    nz = nr[:, None] * c[None, :]
    nyy = np.broadcast_to(ny[:, None], vx.shape)
    verts = np.stack([vx, vy, vz], -1).reshape(-1, 3)
    norms = np.stack([nx, nyy, nz], -1).reshape(-1, 3)
    uu, vv = np.meshgrid(phi / (2 * math.pi), np.asarray(profile_v, np.float64))
    uvs = np.stack([uu, vv], -1).reshape(-1, 2)
    faces = _grid_faces(len(r) - 1, segments)
    # grid order (a, b, c) = (row i col j, row i col j+1, row i+1 col j+1): with x = r sin(phi),
    # z = r cos(phi) increasing phi runs to the right seen from outside, then up the profile, which
    # is counter-clockwise.
    p, n, uv = soup(verts, norms, uvs, faces)
    keep = np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1) > 1e-12
    return p[keep], n[keep], uv[keep]


def _disk(radius: float, y: float, up: bool, segments: int) -> Soup:
    """Flat cap at height y facing +y (up) or -y."""
    phi = np.linspace(0.0, 2 * math.pi, segments + 1)
    ring = np.stack([radius * np.sin(phi), np.full_like(phi, y), radius * np.cos(phi)], 1)
    centre = np.array([[0.0, y, 0.0]])
    verts = np.concatenate([centre, ring])
    ny = 1.0 if up else -1.0
    norms = np.tile([0.0, ny, 0.0], (len(verts), 1))
    uvs = 0.5 + 0.5 * verts[:, [0, 2]] / radius
    k = np.arange(segments)
    faces = np.stack([np.zeros(segments, int), k + 1, k + 2], 1)
    if not up:
        faces = faces[:, [0, 2, 1]]
    return soup(verts, norms, uvs, faces)


def make_cylinder(radius=1.0, height=2.0, segments=32, caps=True, smooth=True) -> Soup:
    """Cylinder about the y axis from y = -height/2 to +height/2, optionally capped."""
    h = height / 2.0
    parts = [_revolve([radius, radius], [-h, h], [1, 1], [0, 0], int(segments), [0, 1])]
    if caps:
        parts += [_disk(radius, h, True, int(segments)), _disk(radius, -h, False, int(segments))]
    p, n, uv = (np.concatenate(x) for x in zip(*parts))
    return (p, n, uv) if smooth else _flat(p, uv)


def make_cone(radius=1.0, height=2.0, segments=32, caps=True, smooth=True) -> Soup:
    """Cone about the y axis: base of the given radius at y = -height/2, apex at +height/2."""
    h = height / 2.0
    s = math.hypot(radius, height)
    nr, ny = height / s, radius / s  # exact side normal (radial, up) components
    parts = [_revolve([radius, 0.0], [-h, h], [nr, nr], [ny, ny], int(segments), [0, 1])]
    if caps:
        parts.append(_disk(radius, -h, False, int(segments)))
    p, n, uv = (np.concatenate(x) for x in zip(*parts))
    return (p, n, uv) if smooth else _flat(p, uv)


def make_capsule(radius=0.5, height=2.0, segments=32, rings=8, smooth=True) -> Soup:
    """Capsule about the y axis: total height ``height`` (>= 2 radius), hemispherical ends."""
    h = max(height / 2.0 - radius, 0.0)
    t = np.linspace(-math.pi / 2, math.pi / 2, 2 * int(rings) + 1)
    lower, upper = t[: int(rings) + 1], t[int(rings):]
    r = np.concatenate([radius * np.cos(lower), radius * np.cos(upper)])
    y = np.concatenate([-h + radius * np.sin(lower), h + radius * np.sin(upper)])
    nr = np.concatenate([np.cos(lower), np.cos(upper)])
    ny = np.concatenate([np.sin(lower), np.sin(upper)])
    v = (y - y[0]) / (y[-1] - y[0])
    p, n, uv = _revolve(r, y, nr, ny, int(segments), v)
    return (p, n, uv) if smooth else _flat(p, uv)


def make_torus(major_radius=1.0, minor_radius=0.25, segments=48, rings=16, smooth=True) -> Soup:
    """Torus about the y axis (the ring lies in the xz plane)."""
    t = np.linspace(-math.pi, math.pi, int(rings) + 1)
    r = major_radius - minor_radius * np.cos(t)
    y = -minor_radius * np.sin(t)
    nr, ny = -np.cos(t), -np.sin(t)
    p, n, uv = _revolve(r, y, nr, ny, int(segments), (t + math.pi) / (2 * math.pi))
    return (p, n, uv) if smooth else _flat(p, uv)


# --- transforms ---------------------------------------------------------------------------------
def _rot_x(deg):
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _rot_y(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _rot_z(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def rotation_xyz(deg) -> np.ndarray:
    """Euler XYZ in degrees: rotate about x first, then y, then z (world axes): R = Rz Ry Rx.

    Entries within 1e-15 of 0 or +-1 are snapped, so quarter turns are exact (cos 90 degrees is
    6e-17 in floating point); otherwise two walls meeting at a corner would not share the corner
    vertex bit for bit and a watertight rasterizer could show a crack between them.
    Returns a read-only array, cached per angle triple (datasets repeat the same few rotations).
    """
    return _rotation_xyz(*(float(a) for a in deg))


@functools.lru_cache(maxsize=4096)
def _rotation_xyz(ax: float, ay: float, az: float) -> np.ndarray:
    r = _rot_z(az) @ _rot_y(ay) @ _rot_x(ax)
    r[np.abs(r) < 1e-15] = 0.0
    r[np.abs(np.abs(r) - 1.0) < 1e-15] = np.sign(r[np.abs(np.abs(r) - 1.0) < 1e-15])
    r.flags.writeable = False
    return r


def apply_transform(s: Soup, translate, rotate, scale) -> Soup:
    """Object -> world: p' = R (S p) + t, n' = normalize(R S^-1 n). A mirroring scale (negative
    determinant) reverses corner order so the front face stays counter-clockwise."""
    p, n, uv = s
    sc = np.asarray(scale, np.float64)
    r = rotation_xyz(rotate)
    # (3T, 3) @ (3, 3): one matrix product with R S (and R S^-1) folded, not T stacked 3 x 3 ones
    p2 = (p.reshape(-1, 3) @ (r * sc).T).reshape(p.shape)
    p2 += np.asarray(translate, np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # degenerate or huge input: the loader drops or refuses it
        n2 = (n.reshape(-1, 3) @ (r / sc).T).reshape(n.shape)
        n2 /= np.sqrt(np.einsum("...i,...i->...", n2, n2))[..., None]
    if np.prod(np.sign(sc)) < 0:  # (the signs: the product of huge scales overflows)
        order = [0, 2, 1]
        p2, n2, uv = p2[:, order], n2[:, order], uv[:, order]
    return p2, n2, uv


def freeze_params(params: dict) -> tuple:
    """Shape parameters as a hashable, order-independent key (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


def _cached(make):
    """Memoise a tessellation by its parameters (datasets build thousands of similar shapes); the
    arrays handed out are read-only so a caller cannot change the cached copy."""

    @functools.lru_cache(maxsize=512)
    def cached(*items):
        out = make(**dict(items))
        for a in out:
            a.flags.writeable = False
        return out

    @functools.wraps(make)
    def call(**params):
        return cached(*freeze_params(params))

    return call


SHAPES = {name: _cached(fn) for name, fn in {
    "quad": make_quad,
    "box": make_box,
    "sphere": make_sphere,
    "cylinder": make_cylinder,
    "cone": make_cone,
    "capsule": make_capsule,
    "torus": make_torus,
}.items()}
