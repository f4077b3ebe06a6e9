"""The result of every renderer: linear radiance plus first-hit AOVs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .image_io import write_image

AOV_NAMES = ("depth", "normal", "albedo", "id")


@dataclass
class Frame:
    """One rendered image and its AOVs, all (H, W, ...) with row 0 at the top.

    rgb: (H, W, 3) float32 linear radiance (W m^-2 sr^-1), not clamped.
    depth: (H, W) float32 distance along the camera's forward axis (metres); inf for background.
    normal: (H, W, 3) float32 unit world-space shading normal at the first hit; 0 for background.
    albedo: (H, W, 3) float32 base colour at the first hit (texture/checker applied); 0 for background.
    object_id: (H, W) int32 index into ``Scene.objects``; -1 for background.
    meta: renderer, settings and timings (``render_seconds``, ``compile_seconds``, ...).
    """

    rgb: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    albedo: np.ndarray
    object_id: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @classmethod
    def empty(cls, height: int, width: int, meta: dict[str, Any] | None = None) -> "Frame":
        """A background-only frame (black, depth inf, id -1)."""
        return cls(
            rgb=np.zeros((height, width, 3), np.float32),
            depth=np.full((height, width), np.inf, np.float32),
            normal=np.zeros((height, width, 3), np.float32),
            albedo=np.zeros((height, width, 3), np.float32),
            object_id=np.full((height, width), -1, np.int32),
            meta=dict(meta or {}),
        )

    def save(self, path: str | Path, aovs: tuple[str, ...] = ()) -> list[Path]:
        """Write ``rgb`` to ``path`` (.png sRGB 8-bit or .exr linear) and each requested AOV beside it:
        ``name.depth.exr``, ``name.normal.exr``, ``name.albedo.exr`` and ``name.id.png`` (16-bit, id + 1,
        so background is 0). Returns the written paths."""
        path = Path(path)
        write_image(path, self.rgb)
        written = [path]
        for name in aovs:
            wide = name == "id" and self.object_id.max(initial=-1) >= 65535
            out = aov_path(path, name, wide_ids=wide)
            if name == "id":
                write_image(out, self.object_id if wide else (self.object_id + 1).astype(np.uint16))
            else:
                write_image(out, getattr(self, name))
            written.append(out)
        return written


def aov_path(path: str | Path, name: str, wide_ids: bool = False) -> Path:
    """Where ``Frame.save(path, ...)`` writes AOV ``name``: ``stem.depth.exr``, ``stem.normal.exr``,
    ``stem.albedo.exr``, ``stem.id.png`` (``stem.id.npy`` when an id does not fit 16 bits)."""
    if name not in AOV_NAMES:
        raise ValueError(f"unknown AOV {name!r}; expected some of {', '.join(AOV_NAMES)}")
    stem = Path(path).with_suffix("")
    if name == "id":
        return Path(f"{stem}.id.npy" if wide_ids else f"{stem}.id.png")
    return Path(f"{stem}.{name}.exr")
