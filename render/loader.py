"""Scene loading: TOML files, plain dicts and mesh/scene files -> a validated, frozen ``Scene``.

Everything is checked before any triangle reaches a renderer; a refusal is a ``SceneError`` naming
the file, the field path (``objects[3].material``) and what was expected.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from . import schema
from .camera import Camera
from .errors import SceneError, field_path
from .scene import MAX_COORDINATE, Checker, Environment, Light, Material, Scene, SceneObject
from .shapes import SHAPES, apply_transform, freeze_params, import_trimesh

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MESH_SUFFIXES = {".obj", ".ply", ".stl", ".glb", ".gltf", ".off"}
TOP_LEVEL_KEYS = ("camera", "cameras", "materials", "objects", "lights", "environment")
# Triangles with less area than this (m^2) are dropped from meshes as degenerate.
MIN_TRIANGLE_AREA = 1e-14


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fixed_length(model: type[pydantic.BaseModel], key: Any) -> int | None:
    """n when ``model``'s field ``key`` is a list of exactly n values (a colour, a 3-vector), else None."""
    import typing

    field = model.model_fields.get(key) if isinstance(key, str) else None
    meta = list(field.metadata) if field else []
    for arg in typing.get_args(field.annotation) if field else ():  # an optional one: Annotated[list, Field] | None
        meta += [m for info in getattr(arg, "__metadata__", ()) for m in getattr(info, "metadata", ())]
    lo = next((m.min_length for m in meta if getattr(m, "min_length", None) is not None), None)
    hi = next((m.max_length for m in meta if getattr(m, "max_length", None) is not None), None)
    return lo if lo is not None and lo == hi else None


def _model_at(model: type[pydantic.BaseModel], loc: tuple) -> type[pydantic.BaseModel]:
    """The model of the table at ``loc`` inside ``model`` (a nested table such as a checker), for
    naming the keys it allows; ``model`` itself where the path leads to no nested model."""
    import typing

    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a list index, or a key pydantic added (a union member's tag)
        todo, found = [field.annotation], None
        while todo and found is None:
            t = todo.pop()
            if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
                found = t
            else:
                todo.extend(typing.get_args(t))
        if found is None:
            break
        model = found
    return model


def _validate(model: type[pydantic.BaseModel], data: Any, source: str, prefix: tuple) -> pydantic.BaseModel:
    """Validate ``data`` against ``model``; turn pydantic's errors into a SceneError naming one of
    them: an unknown key first (a misspelt key also shows up as a missing one, and the unknown
    key is the one that names the typo)."""
    if not isinstance(data, dict):
        raise SceneError(source, field_path(prefix), f"expected a table, got {_short(data)}")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = prefix + tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            allowed = ", ".join(_model_at(model, err["loc"][:-1]).model_fields)
            problem = f"unknown key; expected one of: {allowed}"
        elif kind == "missing":
            problem = "missing required key"
        elif kind in ("too_short", "too_long"):
            bound = f"at least {ctx.get('min_length')}" if kind == "too_short" else f"at most {ctx.get('max_length')}"
            problem = f"expected {bound} values, got {ctx.get('actual_length')} ({_short(err.get('input'))})"
        elif kind == "literal_error":
            problem = err["msg"].replace("Input should be", "expected")
        elif kind == "list_type" and (n := _fixed_length(_model_at(model, err["loc"][:-1]), err["loc"][-1])):
            # a single number where a colour or vector goes: say how many and show one
            problem = f"expected a list of {n} numbers, e.g. [{', '.join(['0.5'] * n)}] (got {_short(err.get('input'))})"
        else:
            problem = f"{err['msg'].replace('Input should be', 'expected')} (got {_short(err.get('input'))})"
        more = exc.error_count() - 1
        if more:
            problem += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise SceneError(source, field_path(loc), problem) from None


def _dispatch(specs: dict, key: str, data: Any, source: str, prefix: tuple):
    """Pick the model by the ``type``/``shape`` tag and validate."""
    if not isinstance(data, dict):
        raise SceneError(source, field_path(prefix), f"expected a table, got {_short(data)}")
    tag = data.get(key)
    if not isinstance(tag, str) or tag not in specs:
        what = "missing" if tag is None else f"unknown {key} {_short(tag)}"
        raise SceneError(source, field_path(prefix + (key,)), f"{what}; expected one of: {', '.join(specs)}")
    return _validate(specs[tag], data, source, prefix)


def _resolve(base_dir: Path, name: str, source: str, loc: tuple, what: str) -> Path:
    path = Path(name)
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise SceneError(source, field_path(loc), f"{what} file not found: {path.absolute()}")
    return path.resolve()


# --- pieces -------------------------------------------------------------------------------------
def _camera(spec: schema.CameraSpec, source: str, loc: tuple) -> Camera:
    reach = max(abs(x) for x in spec.position)
    if reach > MAX_COORDINATE:
        raise SceneError(source, field_path(loc + ("position",)), f"{reach:.3g} m from the origin; expected "
                         f"coordinates within +-{MAX_COORDINATE:.0e} m like the geometry's (float32 ray tests)")
    try:
        return Camera(tuple(spec.position), tuple(spec.look_at), tuple(spec.up), spec.fov,
                      spec.width, spec.height, spec.near, spec.far)
    except ValueError as exc:
        raise SceneError(source, field_path(loc), str(exc)) from None


def _texture(path: Path, source: str, loc: tuple, hi: float | None = 1.0) -> np.ndarray:
    """An image's linear RGB (H, W, 3) float32, its values checked against [0, hi] (hi None: no upper
    bound): a texture stands for a colour (albedo, F0, tint) and obeys the colours' [0, 1]; an
    environment map is radiance, >= 0. Only EXR can hold values outside [0, 1]."""
    from .image_io import read_image

    try:
        img = read_image(path)
    except Exception as exc:  # unreadable or unknown format
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # imageio's advice runs on for lines
        raise SceneError(source, field_path(loc), f"cannot read image {path} ({first}); expected a PNG, JPEG or "
                         "EXR image") from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.size == 0 or not np.isfinite(img).all():
        raise SceneError(source, field_path(loc), f"image {path} is empty or holds non-finite values")
    lo, top = float(img.min()), float(img.max())
    if lo < 0.0 or (hi is not None and top > hi):
        want = f"values in [0, {hi:g}] (a colour)" if hi is not None else "values >= 0 (radiance)"
        raise SceneError(source, field_path(loc), f"image {path} holds values from {lo:.4g} to {top:.4g}; expected {want}")
    return np.ascontiguousarray(img, np.float32)


def _materials(table: Any, source: str, base_dir: Path, textures: list, texture_ids: dict) -> list[Material]:
    if not isinstance(table, dict) or not table:
        raise SceneError(source, "materials", "expected a table of named materials, e.g. [materials.white]")
    out = []
    for name, data in table.items():
        loc = ("materials", name)
        spec = _dispatch(schema.MATERIAL_SPECS, "type", data, source, loc)
        tex, tex_file = -1, None
        if spec.texture is not None:
            path = _resolve(base_dir, spec.texture, source, loc + ("texture",), "texture")
            if str(path) not in texture_ids:
                texture_ids[str(path)] = len(textures)
                textures.append(_texture(path, source, loc + ("texture",)))
            tex, tex_file = texture_ids[str(path)], str(path)
        if spec.texture is not None and spec.checker is not None:
            raise SceneError(source, field_path(loc), "give texture or checker, not both")
        d = spec.model_dump()
        checker = Checker(tuple(spec.checker.color1), tuple(spec.checker.color2), spec.checker.scale) if spec.checker else None
        out.append(Material(
            name=name, type=spec.type,
            albedo=tuple(d.get("albedo", (0.0, 0.0, 0.0))),
            color=tuple(d.get("color", (1.0, 1.0, 1.0))),
            roughness=float(d.get("roughness", 0.0)),
            ior=float(d.get("ior", 1.5)),
            radiance=tuple(d.get("radiance", (0.0, 0.0, 0.0))),
            texture=tex, texture_file=tex_file, checker=checker, two_sided=spec.two_sided,
        ))
    return out


def _soup_from_trimesh(mesh, transform: np.ndarray | None = None):
    """A trimesh.Trimesh (+ optional 4x4 node transform) -> soup, using the file's vertex normals
    when it has them and flat face normals when it does not (never smoothed by guesswork)."""
    # trimesh keeps normals read from the file in its cache; computed ones would appear only after
    # something asks for them, so look before touching anything else.
    has_normals = "vertex_normals" in mesh._cache.cache
    v = np.asarray(mesh.vertices, np.float64)
    f = np.asarray(mesh.faces, np.int64)
    uv = getattr(mesh.visual, "uv", None)
    uv = np.zeros((len(v), 2)) if uv is None or len(uv) != len(v) else np.asarray(uv, np.float64)
    p, uvf = v[f], uv[f]
    if has_normals:
        n = np.asarray(mesh.vertex_normals, np.float64)[f]
    else:
        n = None
    if transform is not None and not np.allclose(transform, np.eye(4)):
        m = np.asarray(transform, np.float64)
        p = p @ m[:3, :3].T + m[:3, 3]
        if n is not None:
            n = n @ np.linalg.inv(m[:3, :3])
        if np.linalg.det(m[:3, :3]) < 0:  # a mirroring node: reverse the corner order (front face stays CCW)
            p, uvf = p[:, [0, 2, 1]], uvf[:, [0, 2, 1]]
            n = None if n is None else n[:, [0, 2, 1]]
    if n is None:
        fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        fn = fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-300)
        n = np.repeat(fn[:, None, :], 3, axis=1)
    return p, n, uvf


def _read_mesh_file(path: Path, source: str, loc: tuple, node: str | None = None) -> list[tuple[str, tuple, Any]]:
    """Read a mesh or scene file -> [(node name, soup, trimesh geometry)], world transforms of a
    scene file's node graph applied."""
    trimesh = import_trimesh()

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SceneError(source, field_path(loc), f"cannot read mesh {path}: not a valid {path.suffix or 'mesh'} file "
                         f"(trimesh: {type(exc).__name__}{': ' + first if first else ''})") from None
    parts = []
    if isinstance(loaded, trimesh.Scene):
        for name in loaded.graph.nodes_geometry:
            if node is not None and name != node:
                continue
            transform, geom_name = loaded.graph[name]
            geom = loaded.geometry[geom_name]
            if isinstance(geom, trimesh.Trimesh):
                parts.append((name, geom, transform))
        if node is not None and not parts:
            names = ", ".join(loaded.graph.nodes_geometry) or "none"
            raise SceneError(source, field_path(loc[:-1] + ("node",)), f"no mesh node {node!r} in {path}; expected one of: {names}")
    elif isinstance(loaded, trimesh.Trimesh):
        if node is not None and node != path.stem:  # a single-mesh file's one node is named after the file
            raise SceneError(source, field_path(loc[:-1] + ("node",)),
                             f"no mesh node {node!r} in {path}; expected {path.stem!r} (a single mesh)")
        parts.append((path.stem, loaded, None))
    out = []
    for name, geom, transform in parts:
        v = np.asarray(geom.vertices)
        if v.size and not np.isfinite(v).all():
            bad = int(np.argwhere(~np.isfinite(v).all(axis=1))[0, 0])
            raise SceneError(source, field_path(loc), f"vertex {bad} of {path} is not finite ({v[bad].tolist()})")
        if len(geom.faces) == 0:
            continue
        p, n, uv = _soup_from_trimesh(geom, transform)
        out.append((name, (p, n, uv), geom))
    if not out:
        raise SceneError(source, field_path(loc), f"mesh {path} holds no triangles")
    return out


def _object_soup(spec, source: str, base_dir: Path, loc: tuple):
    """Tessellate (or read) one object in object space; returns soup and the params to record."""
    params = spec.model_dump(exclude={"shape", "material", "name", "translate", "rotate", "scale"})
    if spec.shape == "mesh":
        path = _resolve(base_dir, spec.file, source, loc + ("file",), "mesh")
        parts = _read_mesh_file(path, source, loc + ("file",), spec.node)
        s = tuple(np.concatenate(x) for x in zip(*[p[1] for p in parts]))
        params["file"] = str(path)
        if spec.node is None:
            params.pop("node")
        return s, params
    return SHAPES[spec.shape](**params), params


def _world_soup(local, translate, rotate, scale):
    """Object -> world, and which triangles to keep (finite, with area above MIN_TRIANGLE_AREA)."""
    p, n, uv = apply_transform(local, translate, rotate, scale)
    with np.errstate(over="ignore", invalid="ignore"):  # huge or non-finite input is refused by the caller
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        c = e1[:, [1, 2, 0]] * e2[:, [2, 0, 1]] - e1[:, [2, 0, 1]] * e2[:, [1, 2, 0]]  # e1 x e2 (np.cross is slow)
        area = 0.5 * np.sqrt(np.einsum("ti,ti->t", c, c))
    keep = np.isfinite(area) & (area > MIN_TRIANGLE_AREA) & np.isfinite(n).all(axis=(1, 2))
    return p, n, uv, keep


WORLD_CACHE_MAX_TRIANGLES = 64  # placed shapes this small are memoised (at most 256 of them, ~13 MB)


@functools.lru_cache(maxsize=256)
def _world_shape(shape: str, params: tuple, translate: tuple, rotate: tuple, scale: tuple):
    """``_world_soup`` of a small built-in shape, memoised: procedural datasets place the same floor
    and walls in every scene. The arrays are read-only, so no caller can change the cached copy."""
    out = _world_soup(SHAPES[shape](**dict(params)), translate, rotate, scale)
    for a in out:
        a.flags.writeable = False
    return out


# --- the scene ----------------------------------------------------------------------------------
def scene_from_dict(desc: dict[str, Any], source: str = "<dict>", base_dir: str | Path = ".") -> Scene:
    """Validate a scene description (the TOML format as a dict) and build the ``Scene``.

    source: the name used in error messages (the TOML file's path).
    base_dir: folder that relative mesh/texture/environment paths are relative to.
    """
    base_dir = Path(base_dir)
    if not isinstance(desc, dict):
        raise SceneError(source, "", "expected a table at the top level")
    for key in desc:
        if key not in TOP_LEVEL_KEYS:
            raise SceneError(source, str(key), f"unknown top-level key; expected one of: {', '.join(TOP_LEVEL_KEYS)}")

    # cameras
    if "camera" in desc and "cameras" in desc:
        raise SceneError(source, "cameras", "give [camera] or [[cameras]], not both")
    if "camera" in desc:
        cam_specs = [(("camera",), desc["camera"])]
    elif "cameras" in desc:
        if not isinstance(desc["cameras"], list) or not desc["cameras"]:
            raise SceneError(source, "cameras", "expected a non-empty array of tables [[cameras]]")
        cam_specs = [(("cameras", i), c) for i, c in enumerate(desc["cameras"])]
    else:
        raise SceneError(source, "camera", "missing; expected a [camera] table with position and look_at")
    cameras = [_camera(_validate(schema.CameraSpec, c, source, loc), source, loc) for loc, c in cam_specs]

    # materials
    textures: list[np.ndarray] = []
    materials = _materials(desc.get("materials"), source, base_dir, textures, {})
    mat_index = {m.name: i for i, m in enumerate(materials)}

    # objects
    objs = desc.get("objects")
    if not isinstance(objs, list) or not objs:
        raise SceneError(source, "objects", "the scene is empty; expected at least one [[objects]] entry")
    pos, nrm, uvs, mids, oids, records = [], [], [], [], [], []
    for i, data in enumerate(objs):
        loc = ("objects", i)
        if isinstance(data, dict) and isinstance(data.get("scale"), (int, float)) and not isinstance(data.get("scale"), bool):
            data = {**data, "scale": [float(data["scale"])] * 3}
        spec = _dispatch(schema.OBJECT_SPECS, "shape", data, source, loc)
        if spec.material not in mat_index:
            raise SceneError(source, field_path(loc + ("material",)),
                             f"unknown material {spec.material!r}; expected one of: {', '.join(mat_index)}")
        if any(s == 0.0 for s in spec.scale):
            what = "zero-area light: " if materials[mat_index[spec.material]].type == "emitter" else ""
            raise SceneError(source, field_path(loc + ("scale",)), f"{what}scale {spec.scale} has a zero component; expected non-zero scales")
        local, params = _object_soup(spec, source, base_dir, loc)
        if spec.shape != "mesh" and len(local[0]) <= WORLD_CACHE_MAX_TRIANGLES:
            p, n, uv, keep = _world_shape(spec.shape, freeze_params(params), tuple(spec.translate), tuple(spec.rotate),
                                          tuple(spec.scale))
        else:  # mesh files may change between loads; big shapes would make the cache big
            p, n, uv, keep = _world_soup(local, spec.translate, spec.rotate, spec.scale)
        reach = float(np.abs(p).max()) if p.size else 0.0  # before the area test: a huge scale overflows areas
        if reach > MAX_COORDINATE:
            raise SceneError(source, field_path(loc), f"a vertex lies {reach:.3g} m from the origin once placed; "
                             f"expected coordinates within +-{MAX_COORDINATE:.0e} m (float32 ray tests)")
        if not keep.any():
            what = "light" if materials[mat_index[spec.material]].type == "emitter" else "object"
            raise SceneError(source, field_path(loc), f"zero-area {what}: every triangle is degenerate; expected triangles with non-zero area")
        if not keep.all():  # (indexing by a mask of all True would copy every array for nothing)
            warnings.warn(f"{source}: {field_path(loc)}: dropped {int((~keep).sum())} degenerate triangle(s)", stacklevel=2)
            p, n, uv = p[keep], n[keep], uv[keep]
        name = spec.name or f"{spec.shape}{i}"
        records.append(SceneObject(name=name, shape=spec.shape, material=spec.material, params=params,
                                   translate=tuple(spec.translate), rotate=tuple(spec.rotate), scale=tuple(spec.scale)))
        pos.append(p)
        nrm.append(n)
        uvs.append(uv)
        mids.append(np.full(len(p), mat_index[spec.material], np.int32))
        oids.append(np.full(len(p), i, np.int32))

    # lights
    lights = []
    raw_lights = desc.get("lights", [])
    if not isinstance(raw_lights, list):
        raise SceneError(source, "lights", "expected an array of tables [[lights]]")
    for i, data in enumerate(raw_lights):
        loc = ("lights", i)
        spec = _dispatch(schema.LIGHT_SPECS, "type", data, source, loc)
        if spec.type == "point":
            lights.append(Light("point", position=tuple(spec.position), intensity=tuple(spec.intensity)))
        else:
            d = np.asarray(spec.direction, np.float64)
            if np.linalg.norm(d) < 1e-12:
                raise SceneError(source, field_path(loc + ("direction",)), "zero vector; expected the direction the light travels")
            if abs(np.linalg.norm(d) - 1.0) > 1e-12:  # leave unit vectors bit-exact (round trips)
                d = d / np.linalg.norm(d)
            lights.append(Light("directional", direction=tuple(float(x) for x in d), irradiance=tuple(spec.irradiance)))

    # environment
    env = Environment()
    if "environment" in desc:
        spec = _validate(schema.EnvironmentSpec, desc["environment"], source, ("environment",))
        if spec.file is not None:
            path = _resolve(base_dir, spec.file, source, ("environment", "file"), "environment")
            img = _texture(path, source, ("environment", "file"), hi=None)
            env = Environment(tuple(spec.radiance or (1.0, 1.0, 1.0)), img, str(path))
        else:
            env = Environment(tuple(spec.radiance or (0.0, 0.0, 0.0)))

    scene = Scene(
        positions=np.concatenate(pos).astype(np.float32),
        normals=np.concatenate(nrm).astype(np.float32),
        uvs=np.concatenate(uvs).astype(np.float32),
        material_id=np.concatenate(mids),
        object_id=np.concatenate(oids),
        materials=tuple(materials), objects=tuple(records), lights=tuple(lights),
        environment=env, cameras=tuple(cameras), textures=tuple(textures), source=source,
    )
    return scene


def load_toml(path: str | Path) -> Scene:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SceneError(str(path), "", f"cannot read scene file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SceneError(str(path), "", f"not a text file (byte {exc.start} is not UTF-8); expected a TOML scene") from None
    try:
        desc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SceneError(str(path), "", f"not valid TOML: {exc}") from None
    return scene_from_dict(desc, source=str(path), base_dir=path.parent)


def _linear_base_color(geom) -> tuple[float, float, float]:
    """A trimesh geometry's base colour as linear RGB in [0, 1] (glTF factors are already linear;
    8-bit colours of other formats are sRGB-encoded)."""
    from .image_io import srgb_decode

    from trimesh.visual.color import DEFAULT_COLOR

    mat = getattr(geom.visual, "material", None)
    factor = getattr(mat, "baseColorFactor", None)
    if factor is not None:
        c = np.asarray(factor)[:3]
        # trimesh keeps glTF's linear factor as uint8 (a float one as given): the dtype says which,
        # not the values (a near-black 0.004 arrives as 1 and was taken for white)
        return tuple(float(x) for x in (c / 255.0 if np.issubdtype(c.dtype, np.integer) else c))
    # trimesh gives uv-mapped meshes without a material (an OBJ without .mtl) a placeholder of its
    # default grey with a 2 x 2 image: that is no colour, not a dark grey of 0.13
    placeholder = (getattr(mat, "image", None) is not None and max(mat.image.size) <= 2
                   and np.array_equal(np.asarray(getattr(mat, "diffuse", DEFAULT_COLOR))[:3], DEFAULT_COLOR[:3]))
    if mat is not None and getattr(mat, "diffuse", None) is not None and not placeholder:
        c = np.asarray(mat.diffuse, np.float64)[:3] / 255.0
    elif getattr(geom.visual, "kind", None) in ("face", "vertex"):
        c = np.asarray(geom.visual.main_color, np.float64)[:3] / 255.0
    else:
        c = np.array([0.8, 0.8, 0.8])
    return tuple(float(x) for x in srgb_decode(c))


def mesh_scene_description(path: str | Path, width: int = 512, height: int = 512) -> dict[str, Any]:
    """The TOML description of a mesh/scene file: one object per mesh node (referencing the file),
    a diffuse material per node from its base colour, a camera framing the bounding box from the
    front (+z), a little above and to the right, and a default sun plus sky-ambient light."""
    path = Path(path).resolve()
    source = str(path)
    if not path.is_file():
        raise SceneError(source, "", "file not found")
    parts = _read_mesh_file(path, source, ())
    multi = len(parts) > 1
    materials, objects = {}, []
    lo = np.min([p[1][0].reshape(-1, 3).min(0) for p in parts], axis=0)
    hi = np.max([p[1][0].reshape(-1, 3).max(0) for p in parts], axis=0)
    for k, (name, _, geom) in enumerate(parts):
        mname = f"material{k}"
        materials[mname] = {"type": "diffuse", "albedo": [round(min(max(c, 0.0), 1.0), 6) for c in _linear_base_color(geom)]}
        obj = {"shape": "mesh", "file": str(path), "material": mname, "name": str(name)}
        if multi:
            obj["node"] = str(name)
        objects.append(obj)
    centre = (lo + hi) / 2.0
    radius = max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-6)
    fov = 39.3077
    direction = np.array([0.35, 0.3, 1.0]) / np.linalg.norm([0.35, 0.3, 1.0])
    dist = radius / math.sin(math.radians(fov) / 2.0) * 1.05
    position = centre + dist * direction
    return {
        "camera": {"position": [float(x) for x in position], "look_at": [float(x) for x in centre],
                   "up": [0.0, 1.0, 0.0], "fov": fov, "width": int(width), "height": int(height),
                   "near": float(dist * 1e-3), "far": float(dist + 10 * radius)},
        "materials": materials,
        "objects": objects,
        "lights": [{"type": "directional", "direction": [-0.4, -1.0, -0.6], "irradiance": [3.0, 3.0, 3.0]}],
        "environment": {"radiance": [0.15, 0.15, 0.15]},
    }


def load_scene(spec: str | Path, **family_params) -> Scene:
    """Load a scene from a TOML file, a mesh/scene file (OBJ, PLY, STL, GLB/glTF, OFF), or the name of
    a built-in procedural family (``cornell_box``, ``rooms_ring``, ``shepard_metzler``; ``family_params``
    go to it, with ``seed``)."""
    from .families import FAMILIES, make_scene

    text = str(spec)
    path = Path(text)
    if path.suffix.lower() == ".toml":
        return load_toml(path)
    if path.suffix.lower() in MESH_SUFFIXES:
        desc = mesh_scene_description(path)
        return scene_from_dict(desc, source=str(path), base_dir=path.parent)
    if text in FAMILIES:
        return make_scene(text, **family_params)
    if path.exists():
        raise SceneError(text, "", f"unknown scene file type {path.suffix!r}; expected .toml or one of {', '.join(sorted(MESH_SUFFIXES))}")
    raise SceneError(text, "", f"no such file, and not a built-in scene; expected a path or one of: {', '.join(FAMILIES)}")
