"""Scene -> TOML. Writes the source description (shapes, transforms, materials), so reloading
re-tessellates to the same arrays. File paths are written relative to the TOML's folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import tomli_w

from .errors import SceneError
from .image_io import write_text_atomic
from .scene import Scene

# Keys a material type writes, in order.
_MATERIAL_KEYS = {
    "diffuse": ("albedo",),
    "metal": ("color", "roughness"),
    "glass": ("ior", "color"),
    "emitter": ("radiance", "albedo"),
}
_DEFAULT_TWO_SIDED = {"diffuse": True, "metal": True, "glass": True, "emitter": False}


def _rel(path: str, out_dir: Path | None) -> str:
    if out_dir is None:
        return path
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:  # another drive on Windows
        return path


def _floats(xs) -> list[float]:
    return [float(x) for x in xs]


def scene_to_dict(scene: Scene, out_dir: str | Path | None = None) -> dict[str, Any]:
    """The TOML description of ``scene``; paths relative to ``out_dir`` when given."""
    out_dir = Path(out_dir).resolve() if out_dir is not None else None
    cams = [{"position": _floats(c.position), "look_at": _floats(c.look_at), "up": _floats(c.up),
             "fov": float(c.fov), "width": c.width, "height": c.height, "near": float(c.near),
             "far": float(c.far)} for c in scene.cameras]
    desc: dict[str, Any] = {"camera": cams[0]} if len(cams) == 1 else {"cameras": cams}
    mats = {}
    for m in scene.materials:
        d: dict[str, Any] = {"type": m.type}
        for key in _MATERIAL_KEYS[m.type]:
            v = getattr(m, key)
            d[key] = _floats(v) if isinstance(v, tuple) else float(v)
        if m.texture_file:
            d["texture"] = _rel(m.texture_file, out_dir)
        if m.checker:
            d["checker"] = {"color1": _floats(m.checker.color1), "color2": _floats(m.checker.color2),
                            "scale": float(m.checker.scale)}
        if m.two_sided != _DEFAULT_TWO_SIDED[m.type]:
            d["two_sided"] = m.two_sided
        mats[m.name] = d
    desc["materials"] = mats
    objs = []
    for i, o in enumerate(scene.objects):
        if o.shape == "mesh" and not o.params.get("file"):  # arrays built in code: TOML can only name a file
            raise SceneError(scene.source, f"objects[{i}]",
                             f"mesh '{o.name}' has no file, so it cannot be written as TOML; save its triangles "
                             "with trimesh (e.g. a .ply) and set its file to that path")
        d = {"shape": o.shape, "name": o.name, "material": o.material}
        for k, v in o.params.items():
            if v is None:
                continue
            if k == "file":
                v = _rel(v, out_dir)
            d[k] = _floats(v) if isinstance(v, (list, tuple)) else v
        d.update(translate=_floats(o.translate), rotate=_floats(o.rotate), scale=_floats(o.scale))
        objs.append(d)
    desc["objects"] = objs
    lights = []
    for light in scene.lights:
        if light.type == "point":
            lights.append({"type": "point", "position": _floats(light.position), "intensity": _floats(light.intensity)})
        else:
            lights.append({"type": "directional", "direction": _floats(light.direction),
                           "irradiance": _floats(light.irradiance)})
    if lights:
        desc["lights"] = lights
    env: dict[str, Any] = {"radiance": _floats(scene.environment.radiance)}
    if scene.environment.file:
        env["file"] = _rel(scene.environment.file, out_dir)
    desc["environment"] = env
    return desc


_NUMBER_ARRAY = re.compile(r"\[\n((?:\s+[-+0-9.eEinfa]+,\n)+)\]")


def scene_to_toml(scene: Scene, out_dir: str | Path | None = None) -> str:
    text = tomli_w.dumps(scene_to_dict(scene, out_dir))
    # tomli_w puts every array element on its own line; keep short number lists on one line.
    return _NUMBER_ARRAY.sub(lambda m: "[" + ", ".join(x.strip().rstrip(",") for x in m.group(1).splitlines()) + "]", text)


def save_scene(scene: Scene, path: str | Path) -> Path:
    """Write ``scene`` as TOML at ``path`` (atomically); returns the path."""
    path = Path(path)
    write_text_atomic(path, scene_to_toml(scene, path.parent))
    return path
