"""Procedural scene families: ``(rng, **params) -> Scene``, plus each family's camera sampler.

Each family builds a scene *description* (the TOML format as a dict) and loads it through the same
validating loader as a file, so a generated scene written back to TOML reloads identically.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .camera import Camera
from .loader import scene_from_dict
from .scene import Scene

Description = dict[str, Any]


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _f(xs) -> list[float]:
    return [round(float(x), 6) for x in xs]


def _camera(position, look_at, fov, width, height) -> dict:
    return {"position": _f(position), "look_at": _f(look_at), "up": [0.0, 1.0, 0.0],
            "fov": float(fov), "width": int(width), "height": int(height)}


# --- Cornell box (Mitsuba 3's mi.cornell_box()) --------------------------------------------------
def cornell_box_description(rng=None, width: int = 256, height: int = 256) -> Description:
    """Mitsuba 3's ``cornell_box()``: box [-1, 1]^3 open towards +z, camera at (0, 0, 3.9).

    Quads are Mitsuba rectangles ([-1, 1]^2 facing +z) with the same to_world transforms; the boxes
    are Mitsuba cubes ([-1, 1]^3). The light is one-sided (faces -y) and reflects with the white
    albedo, as Mitsuba gives it the white BSDF.
    """
    white = [0.885809, 0.698859, 0.666422]
    wall = lambda name, t, r, m: {"shape": "quad", "name": name, "material": m, "translate": t, "rotate": r}  # noqa: E731
    return {
        "camera": _camera((0, 0, 3.9), (0, 0, 0), 39.3077, width, height),
        "materials": {
            "white": {"type": "diffuse", "albedo": white},
            "red": {"type": "diffuse", "albedo": [0.570068, 0.0430135, 0.0443706]},
            "green": {"type": "diffuse", "albedo": [0.105421, 0.37798, 0.076425]},
            "light": {"type": "emitter", "radiance": [18.387, 13.9873, 6.75357], "albedo": list(white)},
        },
        "objects": [
            wall("floor", [0.0, -1.0, 0.0], [-90.0, 0.0, 0.0], "white"),
            wall("ceiling", [0.0, 1.0, 0.0], [90.0, 0.0, 0.0], "white"),
            wall("back", [0.0, 0.0, -1.0], [0.0, 0.0, 0.0], "white"),
            wall("green_wall", [1.0, 0.0, 0.0], [0.0, -90.0, 0.0], "green"),
            wall("red_wall", [-1.0, 0.0, 0.0], [0.0, 90.0, 0.0], "red"),
            {"shape": "box", "name": "small_box", "material": "white", "translate": [0.335, -0.7, 0.38],
             "rotate": [0.0, -17.0, 0.0], "scale": [0.3, 0.3, 0.3]},
            {"shape": "box", "name": "large_box", "material": "white", "translate": [-0.33, -0.4, -0.28],
             "rotate": [0.0, 18.25, 0.0], "scale": [0.3, 0.61, 0.3]},
            {"shape": "quad", "name": "light", "material": "light", "translate": [0.0, 0.99, 0.01],
             "rotate": [90.0, 0.0, 0.0], "scale": [0.23, 0.19, 0.19]},
        ],
        "environment": {"radiance": [0.0, 0.0, 0.0]},
    }


def cornell_cameras(rng, n: int, width: int = 256, height: int = 256) -> list[Camera]:
    """Views from in front of the open side, jittered around Mitsuba's camera."""
    rng = _rng(rng)
    cams = []
    for _ in range(n):
        yaw = rng.uniform(-0.35, 0.35)
        pitch = rng.uniform(-0.2, 0.2)
        pos = 3.9 * np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
        cams.append(Camera(tuple(pos), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), 39.3077, width, height))
    return cams


# --- rooms_ring (GQN rooms_ring_camera) ------------------------------------------------------------
ROOM_HALF = 3.5
ROOM_WALL_HEIGHT = 3.0
RING_RADIUS = 2.8
RING_HEIGHT = 1.2
RING_TARGET_HEIGHT = 0.5
ROOM_SHAPES = ("sphere", "cube", "cylinder", "cone", "icosahedron", "capsule", "torus")
WALL_COLORS = ([0.70, 0.25, 0.20], [0.25, 0.45, 0.70], [0.65, 0.60, 0.30], [0.40, 0.60, 0.35],
               [0.60, 0.45, 0.65], [0.75, 0.75, 0.72])
FLOOR_COLORS = ([0.55, 0.55, 0.55], [0.45, 0.35, 0.25], [0.30, 0.40, 0.50], [0.60, 0.55, 0.45])


def _hue_colour(hue: float, rng: np.random.Generator) -> list[float]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9))
    return _f((r, g, b))


def _room_object(kind: str, size: float, x: float, z: float, yaw: float, material: str) -> dict:
    """An object of height ~``size`` standing on the floor at (x, z): a fixed shape of height ~2 m
    with ``scale`` = size / 2, so that its tessellation is made once and cached, not once per scene."""
    s = size / 2.0
    base = {"material": material, "rotate": [0.0, round(yaw, 4), 0.0], "scale": s}
    if kind == "sphere":
        return {**base, "shape": "sphere", "radius": 1.0, "translate": _f((x, s, z))}
    if kind == "icosahedron":
        return {**base, "shape": "sphere", "radius": 1.0, "subdivisions": 0, "smooth": False, "translate": _f((x, s, z))}
    if kind == "cube":
        e = 2.0 / math.sqrt(3.0) * 1.2
        return {**base, "shape": "box", "size": _f((e, e, e)), "translate": _f((x, e * s / 2, z))}
    if kind in ("cylinder", "cone"):
        return {**base, "shape": kind, "radius": 0.8, "height": 2.0, "translate": _f((x, s, z))}
    if kind == "capsule":
        return {**base, "shape": "capsule", "radius": 0.5, "height": 2.0, "translate": _f((x, s, z))}
    if kind == "torus":
        return {**base, "shape": "torus", "major_radius": 0.8, "minor_radius": 0.3, "translate": _f((x, 0.3 * s, z))}
    raise ValueError(f"unknown room object {kind!r}")


def rooms_ring_description(rng=None, min_objects: int = 1, max_objects: int = 3, width: int = 64,
                           height: int = 64) -> Description:
    """A square room (walls at +-3.5 m, 3 m high, open ceiling under a sky-ambient environment) with
    1-3 objects on a 3x3 grid of cells (+-1.5 m, jittered), hue-spaced colours, random size and yaw,
    and one directional light from a random direction above."""
    rng = _rng(rng)
    n = int(rng.integers(min_objects, max_objects + 1))
    wall_colour = WALL_COLORS[int(rng.integers(len(WALL_COLORS)))]
    floor_colour = FLOOR_COLORS[int(rng.integers(len(FLOOR_COLORS)))]
    floor = {"type": "diffuse", "albedo": _f(floor_colour)}
    if rng.random() < 0.5:
        floor["checker"] = {"color1": _f(floor_colour), "color2": _f(np.asarray(floor_colour) * 0.5), "scale": 4.0}
    materials = {"floor": floor, "wall": {"type": "diffuse", "albedo": _f(wall_colour)}}
    h = ROOM_WALL_HEIGHT / 2.0
    size = [2 * ROOM_HALF, ROOM_WALL_HEIGHT]
    objects = [
        {"shape": "quad", "name": "floor", "material": "floor", "size": [2 * ROOM_HALF, 2 * ROOM_HALF],
         "rotate": [-90.0, 0.0, 0.0]},
        {"shape": "quad", "name": "wall_north", "material": "wall", "size": list(size), "translate": [0.0, h, -ROOM_HALF]},
        {"shape": "quad", "name": "wall_south", "material": "wall", "size": list(size), "translate": [0.0, h, ROOM_HALF],
         "rotate": [0.0, 180.0, 0.0]},
        {"shape": "quad", "name": "wall_east", "material": "wall", "size": list(size), "translate": [ROOM_HALF, h, 0.0],
         "rotate": [0.0, -90.0, 0.0]},
        {"shape": "quad", "name": "wall_west", "material": "wall", "size": list(size), "translate": [-ROOM_HALF, h, 0.0],
         "rotate": [0.0, 90.0, 0.0]},
    ]
    cells = rng.choice(9, size=n, replace=False)
    hue0 = rng.random()
    for k, cell in enumerate(cells):
        cx, cz = (int(cell) % 3 - 1) * 1.5, (int(cell) // 3 - 1) * 1.5
        x, z = cx + rng.uniform(-0.35, 0.35), cz + rng.uniform(-0.35, 0.35)
        kind = ROOM_SHAPES[int(rng.integers(len(ROOM_SHAPES)))]
        materials[f"object{k}"] = {"type": "diffuse", "albedo": _hue_colour(hue0 + k / n + rng.uniform(-0.05, 0.05), rng)}
        obj = _room_object(kind, float(rng.uniform(0.6, 1.1)), x, z, float(rng.uniform(0, 360)), f"object{k}")
        obj["name"] = f"{kind}{k}"
        objects.append(obj)
    theta = rng.uniform(math.radians(25), math.radians(60))  # from the zenith
    phi = rng.uniform(0, 2 * math.pi)
    direction = -np.array([math.sin(theta) * math.cos(phi), math.cos(theta), math.sin(theta) * math.sin(phi)])
    cam = _rooms_ring_default_camera(width, height)
    return {
        "camera": _camera(cam.position, cam.look_at, cam.fov, width, height),
        "materials": materials,
        "objects": objects,
        "lights": [{"type": "directional", "direction": _f(direction), "irradiance": [2.5, 2.5, 2.5]}],
        "environment": {"radiance": [0.3, 0.3, 0.3]},
    }


@functools.lru_cache(maxsize=8)
def _rooms_ring_default_camera(width: int, height: int) -> Camera:
    """The scene's own camera (the first of seed 0's ring), the same for every scene of a size."""
    return rooms_ring_cameras(np.random.default_rng(0), 1, width, height)[0]


def rooms_ring_cameras(rng, n: int, width: int = 64, height: int = 64) -> list[Camera]:
    """Cameras on a ring of radius 2.8 m at height 1.2 m, at uniformly random angles, looking at
    (0, 0.5, 0) (the room's centre), fov 45 degrees."""
    rng = _rng(rng)
    cams = []
    for a in rng.uniform(0, 2 * math.pi, size=n):
        pos = (RING_RADIUS * math.sin(a), RING_HEIGHT, RING_RADIUS * math.cos(a))
        cams.append(Camera(pos, (0.0, RING_TARGET_HEIGHT, 0.0), (0.0, 1.0, 0.0), 45.0, width, height))
    return cams


# --- shepard_metzler ----------------------------------------------------------------------------
SM_CAMERA_DISTANCE = 9.0
_STEPS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


def shepard_metzler_description(rng=None, cubes: int = 7, width: int = 64, height: int = 64) -> Description:
    """``cubes`` unit cubes joined face to face by a self-avoiding random walk on the integer grid,
    each a random colour, centred on the origin; lit by a directional light and a grey sky."""
    rng = _rng(rng)
    cells = [np.zeros(3, int)]
    while len(cells) < cubes:
        options = [c + s for c in cells[-1:] for s in _STEPS if not any((c + s == o).all() for o in cells)]
        if not options:  # boxed in: restart the walk (rare for 7 cubes)
            cells = [np.zeros(3, int)]
            continue
        cells.append(options[int(rng.integers(len(options)))])
    centre = np.mean(cells, axis=0)
    materials, objects = {}, []
    for k, c in enumerate(cells):
        materials[f"cube{k}"] = {"type": "diffuse", "albedo": _hue_colour(rng.random(), rng)}
        objects.append({"shape": "box", "name": f"cube{k}", "material": f"cube{k}", "size": [1.0, 1.0, 1.0],
                        "translate": _f(np.asarray(c, float) - centre)})
    cam = shepard_metzler_cameras(np.random.default_rng(0), 1, width, height)[0]
    return {
        "camera": _camera(cam.position, cam.look_at, cam.fov, width, height),
        "materials": materials,
        "objects": objects,
        "lights": [{"type": "directional", "direction": [-0.3, -1.0, -0.5], "irradiance": [2.5, 2.5, 2.5]}],
        "environment": {"radiance": [0.35, 0.35, 0.35]},
    }


def shepard_metzler_cameras(rng, n: int, width: int = 64, height: int = 64) -> list[Camera]:
    """Cameras at distance 9 m from the origin, yaw uniform in [0, 2 pi), elevation uniform in
    [-60, 60] degrees, looking at the origin, fov 45 degrees."""
    rng = _rng(rng)
    cams = []
    for _ in range(n):
        yaw, elev = rng.uniform(0, 2 * math.pi), rng.uniform(-math.pi / 3, math.pi / 3)
        pos = SM_CAMERA_DISTANCE * np.array([math.cos(elev) * math.sin(yaw), math.sin(elev), math.cos(elev) * math.cos(yaw)])
        cams.append(Camera(tuple(pos), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), 45.0, width, height))
    return cams


# --- registry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """A procedural family: ``describe(rng, **params)`` gives the TOML description of one scene;
    ``cameras(rng, n, width, height)`` samples n viewpoints of the family's camera distribution."""

    name: str
    describe: Callable[..., Description]
    cameras: Callable[..., list[Camera]]

    def __call__(self, rng=None, **params) -> Scene:
        return scene_from_dict(self.describe(_rng(rng), **params), source=f"<{self.name}>")


FAMILIES: dict[str, Family] = {
    "cornell_box": Family("cornell_box", cornell_box_description, cornell_cameras),
    "rooms_ring": Family("rooms_ring", rooms_ring_description, rooms_ring_cameras),
    "shepard_metzler": Family("shepard_metzler", shepard_metzler_description, shepard_metzler_cameras),
}

cornell_box = FAMILIES["cornell_box"]
rooms_ring = FAMILIES["rooms_ring"]
shepard_metzler = FAMILIES["shepard_metzler"]


def make_scene(name: str, seed: int = 0, **params) -> Scene:
    """Build one scene of a named family with ``np.random.default_rng(seed)``."""
    return FAMILIES[name](np.random.default_rng(seed), **params)
