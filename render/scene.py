"""The in-memory scene: one frozen record of numpy arrays that every renderer reads.

Loaders (``render.loader``) and procedural families (``render.families``) produce a ``Scene``;
renderers only read it. Every shape has already become triangles, so all renderers see exactly
the same geometry.

Triangle storage is a *triangle soup*: triangle ``t`` has its own three corners, so flat and smooth
shading are both exact (a flat triangle's three corner normals equal its face normal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .camera import Camera

# Material type codes used by the kernels (render.scene.MATERIAL_TYPES[name]).
DIFFUSE, METAL, GLASS, EMITTER = 0, 1, 2, 3
MATERIAL_TYPES = {"diffuse": DIFFUSE, "metal": METAL, "glass": GLASS, "emitter": EMITTER}
# Light type codes.
POINT, DIRECTIONAL = 0, 1
LIGHT_TYPES = {"point": POINT, "directional": DIRECTIONAL}

Vec3 = tuple[float, float, float]


# Scene coordinates (vertices and cameras) stay within +-MAX_COORDINATE metres (render.loader refuses
# the rest). The path tracer's float32 ray-triangle test keeps the barycentrics scaled by the
# determinant (t * det grows as size**3), which overflows for triangles larger than ~7e12.
MAX_COORDINATE = 1e12
# Where the path tracer ends an unbounded segment (and the largest far plane it uses): beyond every
# hit, since within +-MAX_COORDINATE none lies farther than 3.5e12. A triangle's |det| (|d| |e1| |e2|)
# then stays below 1.2e25 and its test t < FAR |det| finite in float32 (a 1e30 end overflowed it to
# inf for triangles larger than ~2e4 m, a comparison the fast-math kernels assume never meets inf).
FAR = 10.0 * MAX_COORDINATE


@dataclass(frozen=True)
class Checker:
    """A procedural checkerboard in uv space: ``color1`` where floor(u*scale)+floor(v*scale) is even."""

    color1: Vec3
    color2: Vec3
    scale: float = 8.0  # squares per uv unit


@dataclass(frozen=True)
class Material:
    """One entry of the material table (linear RGB reflectances in [0, 1]).

    type: "diffuse" | "metal" | "glass" | "emitter".
    albedo: diffuse reflectance (diffuse; emitter's own diffuse reflection, default black).
    color: metal's F0 (Schlick) or glass's transmission/reflection tint.
    roughness: metal's GGX alpha in [0, 1], used as given (Mitsuba's ``alpha``; not squared).
    ior: glass's index of refraction (inside / outside).
    radiance: emitter's radiance, W m^-2 sr^-1, from the front face only.
    texture: index into ``Scene.textures`` replacing the base colour (albedo or color), or -1.
    texture_file: the file that texture came from (kept for writing the scene back).
    checker: a checkerboard replacing the base colour, or None.
    two_sided: scatters light on both sides. One-sided (False): the rasterizer culls back faces
        (OpenGL), the path tracer sees them black but opaque (Mitsuba's one-sided BSDFs; glass
        keeps both sides there, as a dielectric does); emitters emit from the front face only
        either way.
    """

    name: str
    type: str
    albedo: Vec3 = (0.0, 0.0, 0.0)
    color: Vec3 = (1.0, 1.0, 1.0)
    roughness: float = 0.0
    ior: float = 1.5
    radiance: Vec3 = (0.0, 0.0, 0.0)
    texture: int = -1
    texture_file: str | None = None
    checker: Checker | None = None
    two_sided: bool = True

    @property
    def base_color(self) -> Vec3:
        """The colour a texture or checker replaces: ``color`` for metal and glass, else ``albedo``."""
        return self.color if self.type in ("metal", "glass") else self.albedo


@dataclass(frozen=True)
class Light:
    """A delta light. point: ``position`` (m) and ``intensity`` (W sr^-1).
    directional: ``direction`` the light travels (unit) and ``irradiance`` (W m^-2)."""

    type: str
    position: Vec3 = (0.0, 0.0, 0.0)
    intensity: Vec3 = (0.0, 0.0, 0.0)
    direction: Vec3 = (0.0, -1.0, 0.0)
    irradiance: Vec3 = (0.0, 0.0, 0.0)


@dataclass(frozen=True, eq=False)
class Environment:
    """Light arriving from infinitely far away.

    radiance: constant radiance (W m^-2 sr^-1) from every direction, or the multiplier of ``image``.
    image: optional (H, W, 3) float32 linear equirectangular map, oriented as Mitsuba 3's ``envmap``:
        column u = atan2(d_x, -d_z)/(2 pi) (wrapping; column j centred at u = (j + 0.5)/W), row
        v = acos(d_y)/pi with row i centred at v = i/(H - 1) (row 0 straight up, the last row
        straight down). So the map's centre is seen looking along +z, its left and right edges along
        -z, u = 0.25 along +x; bilinear between texel centres.
    file: where ``image`` came from.
    """

    radiance: Vec3 = (0.0, 0.0, 0.0)
    image: np.ndarray | None = None
    file: str | None = None


@dataclass(frozen=True)
class SceneObject:
    """The source description of one object, kept so a scene can be written back and re-tessellated
    to the same arrays. ``params`` holds the shape's own keys (radius, size, file, ...)."""

    name: str
    shape: str
    material: str
    params: dict[str, Any] = field(default_factory=dict)
    translate: Vec3 = (0.0, 0.0, 0.0)
    rotate: Vec3 = (0.0, 0.0, 0.0)
    scale: Vec3 = (1.0, 1.0, 1.0)


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything a renderer reads. Arrays are read-only.

    positions: (T, 3, 3) float32 world-space triangle corners; counter-clockwise is the front face.
    normals: (T, 3, 3) float32 unit shading normals per corner.
    uvs: (T, 3, 2) float32 texture coordinates per corner.
    material_id: (T,) int32 index into ``materials``.
    object_id: (T,) int32 index into ``objects``.
    materials, objects, lights, cameras: small records (see their classes).
    environment: constant or image-based distant light.
    textures: linear float32 (H, W, 3) images referenced by ``Material.texture``.
    source: the file or family the scene came from (for messages).
    """

    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    material_id: np.ndarray
    object_id: np.ndarray
    materials: tuple[Material, ...]
    objects: tuple[SceneObject, ...]
    lights: tuple[Light, ...] = ()
    environment: Environment = field(default_factory=Environment)
    cameras: tuple[Camera, ...] = ()
    textures: tuple[np.ndarray, ...] = ()
    source: str = "<memory>"

    def __post_init__(self):
        for name in ("positions", "normals", "uvs", "material_id", "object_id"):
            arr = getattr(self, name)
            if arr.flags.writeable:
                arr = arr.copy()
                arr.flags.writeable = False
                object.__setattr__(self, name, arr)

    # --- summaries -----------------------------------------------------------------------------
    @property
    def num_triangles(self) -> int:
        return int(self.positions.shape[0])

    @property
    def camera(self) -> Camera:
        """The first (default) camera."""
        return self.cameras[0]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi) of all triangles, float64 (3,) each."""
        p = self.positions.reshape(-1, 3)
        return p.min(axis=0).astype(np.float64), p.max(axis=0).astype(np.float64)

    def emitter_mask(self) -> np.ndarray:
        """(T,) bool: triangles whose material is an emitter."""
        is_emitter = np.array([m.type == "emitter" for m in self.materials], bool)
        return is_emitter[self.material_id]

    def triangle_areas(self) -> np.ndarray:
        """(T,) float64 triangle areas in m^2."""
        p = self.positions.astype(np.float64)
        return 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)

    def geometric_normals(self) -> np.ndarray:
        """(T, 3) float32 unit front-face normals normalize(cross(v1 - v0, v2 - v0))."""
        p = self.positions.astype(np.float64)
        n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        return (n / np.linalg.norm(n, axis=1, keepdims=True)).astype(np.float32)

    def material_arrays(self) -> dict[str, np.ndarray]:
        """The material table packed for kernels, one row per material.

        type (M,) int32 (MATERIAL_TYPES codes); base (M, 3) float32 (albedo or color, see
        Material.base_color); albedo, color, radiance (M, 3) float32; roughness, ior (M,) float32;
        texture (M,) int32 (-1 none); checker (M,) int32 (1 if a checker replaces the base colour);
        checker1, checker2 (M, 3) float32; checker_scale (M,) float32; two_sided (M,) int32.
        """
        m = self.materials
        f32 = lambda xs: np.asarray(xs, np.float32)  # noqa: E731
        return {
            "type": np.asarray([MATERIAL_TYPES[x.type] for x in m], np.int32),
            "base": f32([x.base_color for x in m]),
            "albedo": f32([x.albedo for x in m]),
            "color": f32([x.color for x in m]),
            "radiance": f32([x.radiance for x in m]),
            "roughness": f32([x.roughness for x in m]),
            "ior": f32([x.ior for x in m]),
            "texture": np.asarray([x.texture for x in m], np.int32),
            "checker": np.asarray([x.checker is not None for x in m], np.int32),
            "checker1": f32([x.checker.color1 if x.checker else (0, 0, 0) for x in m]),
            "checker2": f32([x.checker.color2 if x.checker else (0, 0, 0) for x in m]),
            "checker_scale": f32([x.checker.scale if x.checker else 1.0 for x in m]),
            "two_sided": np.asarray([x.two_sided for x in m], np.int32),
        }

    def light_arrays(self) -> dict[str, np.ndarray]:
        """Delta lights packed for kernels: type (L,) int32 (LIGHT_TYPES codes); position,
        direction (unit, the way light travels), power (L, 3) float32 where power is intensity
        for point lights and irradiance for directional ones."""
        ls = self.lights
        return {
            "type": np.asarray([LIGHT_TYPES[x.type] for x in ls], np.int32).reshape(-1),
            "position": np.asarray([x.position for x in ls], np.float32).reshape(-1, 3),
            "direction": np.asarray([x.direction for x in ls], np.float32).reshape(-1, 3),
            "power": np.asarray([x.intensity if x.type == "point" else x.irradiance for x in ls],
                                np.float32).reshape(-1, 3),
        }

    def files(self) -> list[str]:
        """The files this scene was read from, as absolute paths: its own file (when it came from
        one), then the mesh files, textures and environment map it references."""
        own = [self.source] if Path(self.source).is_file() else []
        meshes = [str(o.params["file"]) for o in self.objects if "file" in o.params]
        textures = [m.texture_file for m in self.materials if m.texture_file]
        env = [self.environment.file] if self.environment.file else []
        return list(dict.fromkeys(str(Path(f).resolve()) for f in own + meshes + textures + env))

    def summary(self) -> dict[str, Any]:
        """Counts, bounds, materials, lights and cameras as plain Python values."""
        lo, hi = self.bounds()
        emit = self.emitter_mask()
        return {
            "source": self.source,
            "triangles": self.num_triangles,
            "objects": len(self.objects),
            "emitter_triangles": int(emit.sum()),
            "emitter_area": float(self.triangle_areas()[emit].sum()),
            "bounds": [lo.round(6).tolist(), hi.round(6).tolist()],
            "materials": {m.name: m.type for m in self.materials},
            "lights": [l.type for l in self.lights],
            "environment": list(self.environment.radiance) + ([self.environment.file] if self.environment.file else []),
            "cameras": [{"position": list(c.position), "look_at": list(c.look_at), "fov": c.fov,
                         "size": [c.width, c.height]} for c in self.cameras],
        }
