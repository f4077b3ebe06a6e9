"""trirender's rendering layer: scene format, camera, path tracer, rasterizer, image I/O, metrics.

numpy/numba/taichi only; never imports torch. Renderers are imported lazily so that
``import render`` stays cheap and starts neither numba compilation nor Taichi.
"""

from .camera import Camera
from .errors import RenderError, SceneError
from .families import FAMILIES, cornell_box, make_scene, rooms_ring, shepard_metzler
from .frame import AOV_NAMES, Frame
from .image_io import read_image, write_image
from .loader import load_scene, load_toml, scene_from_dict
from .scene import Checker, Environment, Light, Material, Scene, SceneObject
from .writer import save_scene, scene_to_dict

__all__ = [
    "AOV_NAMES", "Camera", "Checker", "Environment", "FAMILIES", "Frame", "Light", "Material", "RenderError",
    "Scene", "SceneError", "SceneObject", "cornell_box", "load_scene", "load_toml", "make_scene", "read_image",
    "rooms_ring", "save_scene", "scene_from_dict", "scene_to_dict", "shepard_metzler", "write_image",
    "rasterize", "rasterize_batch", "pathtrace", "pathtrace_views", "compare",
]


def __getattr__(name):  # lazy entry points of the renderers (PEP 562)
    if name in ("rasterize", "rasterize_batch"):
        from . import rasterizer

        return getattr(rasterizer, name)
    if name in ("pathtrace", "pathtrace_views"):
        from . import pathtracer

        return getattr(pathtracer, name)
    if name == "compare":
        from .metrics import compare

        return compare
    raise AttributeError(f"module 'render' has no attribute {name!r}")
