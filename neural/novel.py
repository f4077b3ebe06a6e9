"""Novel views from a trained GQN: a small inference API and the orbit GIF.

    model, cfg = load_run("runs/small")
    imgs = predict(model, ctx_images, ctx_viewpoints, query_viewpoints, samples=8)   # (8, Q, 64, 64, 3)

``orbit_frames`` renders an orbit of the scene's camera around its look-at point: per frame the
generator's image (mean of N prior samples), the rasterizer's and (optionally) the path tracer's
ground truth, and the per-pixel standard deviation over the N samples (the model's uncertainty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .model import GQN, GQNConfig
from .train import build_model


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GQN, GQNConfig]:
    """The trained model of a run folder (eval mode, on ``device``) and its config."""
    model, cfg, _ = build_model(run_dir, device)
    return model, cfg


def _as_float(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


@torch.no_grad()
def predict(model: GQN, context_images: np.ndarray, context_viewpoints: np.ndarray, query_viewpoints: np.ndarray,
            samples: int = 1, seed: int = 0) -> np.ndarray:
    """Render query viewpoints of one scene from its context views.

    context_images: (K, 64, 64, 3) uint8 sRGB, or float in [0, 1]; context_viewpoints: (K, 7) and
    query_viewpoints: (Q, 7), the 7 numbers of ``Camera.viewpoint()``. Returns float32
    (samples, Q, 64, 64, 3) in [0, 1] (sRGB values, like the training images): one image per prior
    draw of z. The same seed gives the same images.
    """
    dev = next(model.parameters()).device
    ctx = torch.from_numpy(_as_float(context_images)).to(dev)               # (K, H, W, 3)
    if ctx.ndim != 4 or ctx.shape[-1] != 3:
        raise ValueError(f"context_images shape {tuple(ctx.shape)}; expected (K, H, W, 3)")
    size = model.cfg.image_size
    if ctx.shape[1:3] != (size, size):
        raise ValueError(f"context images are {ctx.shape[2]}x{ctx.shape[1]}; the model expects {size}x{size}")
    ctx = ctx.permute(0, 3, 1, 2)[None]                                       # (1, K, 3, H, W)
    cv = torch.as_tensor(np.asarray(context_viewpoints, np.float32), device=dev)[None]  # (1, K, 7)
    qv = torch.as_tensor(np.asarray(query_viewpoints, np.float32), device=dev)          # (Q, 7)
    if cv.shape[1] != ctx.shape[1] or cv.shape[-1] != 7 or qv.ndim != 2 or qv.shape[-1] != 7:
        raise ValueError(f"viewpoints {tuple(cv.shape[1:])} and {tuple(qv.shape)}; expected (K, 7) and (Q, 7)")
    r = model.scene_representation(ctx, cv)                                   # (1, C, h, w)
    r = r.expand(qv.shape[0], *r.shape[1:])                                   # (Q, C, h, w)
    g = torch.Generator(device=dev).manual_seed(seed)
    out = torch.stack([model.generate(None, None, qv, r=r, generator=g) for _ in range(samples)])  # (N, Q, 3, H, W)
    return out.permute(0, 1, 3, 4, 2).cpu().numpy()                           # (N, Q, H, W, 3)


# --- orbits ------------------------------------------------------------------------------------
def orbit_cameras(camera: Any, n: int, size: int = 64, start: float = 0.0) -> list[Any]:
    """``n`` cameras on the circle through ``camera.position`` around the vertical axis through its
    look-at point (same height and radius, looking at the same point), from angle ``start`` (radians)
    measured from the camera's own position."""
    from render import Camera

    c = np.asarray(camera.look_at, np.float64)
    p = np.asarray(camera.position, np.float64) - c
    radius, a0 = math.hypot(p[0], p[2]), math.atan2(p[0], p[2])
    cams = []
    for i in range(n):
        a = a0 + start + 2 * math.pi * i / n
        pos = (c[0] + radius * math.sin(a), c[1] + p[1], c[2] + radius * math.cos(a))
        cams.append(Camera(pos, tuple(c), camera.up, camera.fov, size, size))
    return cams


@dataclass
class Orbit:
    """Everything an orbit figure shows; images float32 in [0, 1] (sRGB values)."""

    context: np.ndarray  # (K, H, W, 3)
    neural: np.ndarray  # (F, H, W, 3) mean of the N samples
    std: np.ndarray  # (F, H, W) per-pixel standard deviation over samples (mean over channels)
    raster: np.ndarray  # (F, H, W, 3)
    path: np.ndarray | None  # (F, H, W, 3) or None when the path tracer was not run
    psnr_raster: list[float]  # per frame, neural vs raster
    path_note: str = ""  # why ``path`` is None


def _srgb(frames) -> np.ndarray:
    from render.image_io import to_srgb8

    return np.stack([to_srgb8(f.rgb) for f in frames]).astype(np.float32) / 255.0


def orbit(model: GQN, scene: Any, context_images: np.ndarray, context_viewpoints: np.ndarray, frames: int = 36,
          samples: int = 8, path_spp: int = 0, seed: int = 0, raster_options: dict | None = None) -> Orbit:
    """Render an orbit of ``scene``'s camera with the generator, the rasterizer and (path_spp > 0)
    the path tracer, given K context views (uint8 or float (K, 64, 64, 3)) and viewpoints (K, 7).
    raster_options: keyword arguments of ``render.rasterize_batch`` (match the dataset's settings)."""
    from render import rasterize_batch

    size = model.cfg.image_size
    cams = orbit_cameras(scene.camera, frames, size)
    qv = np.stack([c.viewpoint() for c in cams])                             # (F, 7)
    draws = predict(model, context_images, context_viewpoints, qv, samples=samples, seed=seed)  # (N, F, H, W, 3)
    raster = _srgb(rasterize_batch([(scene, c) for c in cams], **(raster_options or {})))
    path, note = None, "off (--path-spp 0)"
    if path_spp > 0:
        from render import pathtrace_views

        try:  # without Taichi (it is imported at the first render) the column is left out, and said
            # so; any other failure is a bug and propagates
            path = _srgb(pathtrace_views(scene, cams, spp=path_spp, seeds=[seed] * len(cams)))
        except ImportError as exc:
            note = f"path tracer unavailable ({type(exc).__name__}: {exc})"
    mean = draws.mean(0)
    psnrs = [float(10 * np.log10(1.0 / max(np.mean((m - t) ** 2), 1e-10))) for m, t in zip(mean, raster)]
    return Orbit(_as_float(context_images), mean, draws.std(0).mean(-1), raster, path, psnrs, note)


def dataset_raster_options(size: int, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``render.rasterize_batch`` keyword arguments that render ``size`` x ``size`` views as dataset
    generation does (``render.dataset.render_shard``): its shadow-map sides and supersampling, from a
    dataset's ``render_settings`` where given, else the generator's defaults for that size."""
    from render.dataset import shadow_map_size

    settings = settings or {}
    side = int(settings.get("shadow_map", shadow_map_size(size)))
    return {"shadow_resolution": side,
            "directional_resolution": int(settings.get("directional_shadow_map",
                                                       2 * side if "shadow_map" in settings else side)),
            "ssaa": int(settings.get("ssaa", 1))}


def context_from_scene(scene: Any, k: int, size: int = 64, seed: int = 0, raster_options: dict | None = None,
                       path: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """K context views of a scene on its camera's orbit at seeded random angles: images uint8
    (K, size, size, 3), viewpoints float32 (K, 7). Rendered by the rasterizer with raster_options
    (keyword arguments of ``render.rasterize_batch``; default ``dataset_raster_options(size)``, the
    settings training data is rendered with, so the model sees what it was trained on), or, given
    ``path`` (``{"spp": .., "max_depth": ..}``, a path-traced dataset's settings), by the path tracer."""
    from render.image_io import to_srgb8

    rng = np.random.default_rng(seed)
    cams = [orbit_cameras(scene.camera, 1, size, start=float(a))[0] for a in rng.uniform(0, 2 * math.pi, k)]
    if path is not None:
        from render import pathtrace_views

        frames = pathtrace_views(scene, cams, spp=int(path["spp"]), max_depth=int(path["max_depth"]),
                                 seeds=[seed * 1_000_003 + i for i in range(k)])
    else:
        from render import rasterize_batch

        opts = dataset_raster_options(size) if raster_options is None else raster_options
        frames = rasterize_batch([(scene, c) for c in cams], **opts)
    return np.stack([to_srgb8(f.rgb) for f in frames]), np.stack([c.viewpoint() for c in cams])


def figure_frames(o: Orbit, scale: int = 2) -> list[np.ndarray]:
    """uint8 frames for a GIF: a top row of the context views, then per orbit step the columns
    neural | raster | path (if any) | uncertainty, each labelled, ``scale`` x nearest-upsampled."""
    import matplotlib

    from PIL import Image, ImageDraw

    cmap = matplotlib.colormaps["magma"]
    hi = max(float(o.std.max()), 1e-6)
    h, w = o.neural.shape[1:3]
    cols = ["neural", "raster"] + (["path"] if o.path is not None else []) + ["std"]
    width = max(len(cols), len(o.context)) * w
    out = []
    for i in range(len(o.neural)):
        canvas = np.zeros((2 * h + 24, width, 3), np.float32)
        for j, c in enumerate(o.context[:width // w]):
            canvas[:h, j * w:(j + 1) * w] = c
        tiles = [o.neural[i], o.raster[i]] + ([o.path[i]] if o.path is not None else []) + [cmap(o.std[i] / hi)[..., :3]]
        for j, t in enumerate(tiles):
            canvas[h + 12:2 * h + 12, j * w:(j + 1) * w] = t
        img = Image.fromarray((canvas * 255 + 0.5).astype(np.uint8)).resize((width * scale, (2 * h + 24) * scale),
                                                                           Image.NEAREST)
        d = ImageDraw.Draw(img)
        for j, name in enumerate(cols):
            d.text((j * w * scale + 2, (2 * h + 12) * scale + 4), name, fill=(255, 255, 255))
        d.text((2, h * scale + 2), f"context ({len(o.context)} views) | frame {i + 1}/{len(o.neural)}", fill=(255, 255, 255))
        out.append(np.asarray(img))
    return out


def write_gif(path: str | Path, frames: Sequence[np.ndarray], fps: float = 8.0) -> None:
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)


def strip(o: Orbit, every: int = 6) -> np.ndarray:
    """A PNG-ready uint8 strip: rows neural / raster / (path) / std, every ``every``-th frame."""
    import matplotlib

    cmap = matplotlib.colormaps["magma"]
    hi = max(float(o.std.max()), 1e-6)
    idx = list(range(0, len(o.neural), every))
    rows = [np.concatenate([o.neural[i] for i in idx], 1), np.concatenate([o.raster[i] for i in idx], 1)]
    if o.path is not None:
        rows.append(np.concatenate([o.path[i] for i in idx], 1))
    rows.append(np.concatenate([cmap(o.std[i] / hi)[..., :3] for i in idx], 1))
    return (np.concatenate(rows, 0) * 255 + 0.5).astype(np.uint8)
