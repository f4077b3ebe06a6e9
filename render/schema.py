"""The TOML scene format as pydantic models (strict: no silent type coercion, no unknown keys).

This is the single definition of which keys exist, their types, ranges and defaults; the loader
turns a validated description into a ``Scene``. See README's "Scene format" for the prose version.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Vec3 = Annotated[list[Finite], Field(min_length=3, max_length=3)]
Vec2Pos = Annotated[list[Positive], Field(min_length=2, max_length=2)]
Vec3Pos = Annotated[list[Positive], Field(min_length=3, max_length=3)]
Color = Annotated[list[Unit], Field(min_length=3, max_length=3)]
Radiance = Annotated[list[NonNeg], Field(min_length=3, max_length=3)]
Segments = Annotated[int, Field(ge=3, le=4096)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


MAX_IMAGE_SIDE = 16384  # pixels per side of a camera's image


class CameraSpec(Strict):
    position: Vec3
    look_at: Vec3
    up: Vec3 = [0.0, 1.0, 0.0]
    fov: Annotated[float, Field(gt=0.0, lt=180.0)] = 45.0  # vertical, degrees
    width: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)] = 256
    height: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)] = 256
    near: Positive = 0.01
    far: Positive = 1000.0


class CheckerSpec(Strict):
    color1: Color
    color2: Color
    scale: Positive = 8.0


class _MaterialBase(Strict):
    texture: str | None = None  # image file (sRGB PNG/JPEG or linear EXR) replacing the base colour
    checker: CheckerSpec | None = None  # replaces the base colour
    two_sided: bool = True


class DiffuseSpec(_MaterialBase):
    type: Literal["diffuse"]
    albedo: Color = [0.5, 0.5, 0.5]


class MetalSpec(_MaterialBase):
    type: Literal["metal"]
    color: Color = [0.9, 0.9, 0.9]
    roughness: Unit = 0.1


class GlassSpec(_MaterialBase):
    type: Literal["glass"]
    ior: Annotated[float, Field(ge=1.0, le=4.0, allow_inf_nan=False)] = 1.5
    color: Color = [1.0, 1.0, 1.0]


class EmitterSpec(_MaterialBase):
    type: Literal["emitter"]
    radiance: Radiance
    albedo: Color = [0.0, 0.0, 0.0]
    two_sided: bool = False


MATERIAL_SPECS = {"diffuse": DiffuseSpec, "metal": MetalSpec, "glass": GlassSpec, "emitter": EmitterSpec}


class _ObjectBase(Strict):
    material: str
    name: str | None = None
    translate: Vec3 = [0.0, 0.0, 0.0]
    rotate: Vec3 = [0.0, 0.0, 0.0]  # Euler XYZ, degrees: about x, then y, then z
    # A number is turned into [s, s, s] before validation; components must be non-zero.
    scale: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=3, max_length=3)] = [1.0, 1.0, 1.0]


class QuadSpec(_ObjectBase):
    shape: Literal["quad"]
    size: Vec2Pos = [2.0, 2.0]


class BoxSpec(_ObjectBase):
    shape: Literal["box"]
    size: Vec3Pos = [2.0, 2.0, 2.0]


class SphereSpec(_ObjectBase):
    shape: Literal["sphere"]
    radius: Positive = 1.0
    subdivisions: Annotated[int, Field(ge=0, le=7)] = 3
    smooth: bool = True


class CylinderSpec(_ObjectBase):
    shape: Literal["cylinder"]
    radius: Positive = 1.0
    height: Positive = 2.0
    segments: Segments = 32
    caps: bool = True
    smooth: bool = True


class ConeSpec(CylinderSpec):
    shape: Literal["cone"]  # type: ignore[assignment]


class CapsuleSpec(_ObjectBase):
    shape: Literal["capsule"]
    radius: Positive = 0.5
    height: Positive = 2.0
    segments: Segments = 32
    rings: Annotated[int, Field(ge=1, le=1024)] = 8
    smooth: bool = True


class TorusSpec(_ObjectBase):
    shape: Literal["torus"]
    major_radius: Positive = 1.0
    minor_radius: Positive = 0.25
    segments: Segments = 48
    rings: Segments = 16
    smooth: bool = True


class MeshSpec(_ObjectBase):
    shape: Literal["mesh"]
    file: str  # OBJ, PLY, STL, GLB/glTF; relative to the scene file
    node: str | None = None  # one node of a multi-mesh file (glTF/GLB); default: all of them


OBJECT_SPECS = {"quad": QuadSpec, "box": BoxSpec, "sphere": SphereSpec, "cylinder": CylinderSpec,
                "cone": ConeSpec, "capsule": CapsuleSpec, "torus": TorusSpec, "mesh": MeshSpec}


class PointLightSpec(Strict):
    type: Literal["point"]
    position: Vec3
    intensity: Radiance  # W/sr


class DirectionalLightSpec(Strict):
    type: Literal["directional"]
    direction: Vec3  # the way the light travels
    irradiance: Radiance  # W/m^2


LIGHT_SPECS = {"point": PointLightSpec, "directional": DirectionalLightSpec}


class EnvironmentSpec(Strict):
    radiance: Radiance | None = None  # constant, or the multiplier of `file`
    file: str | None = None  # equirectangular image (EXR linear, PNG sRGB)
