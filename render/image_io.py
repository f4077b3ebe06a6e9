"""Image files: PNG (8- or 16-bit, sRGB-encoded) and EXR (linear float32, OpenEXR's own bindings).

Renderers work in linear radiance; sRGB encoding happens only here, when writing 8-bit images.
Every write is atomic: the file is written under a temporary name in the same folder and renamed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear [0, 1] -> sRGB-encoded [0, 1] (IEC 61966-2-1 piecewise curve), float32. Clamps."""
    x = np.clip(np.asarray(linear, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] -> linear [0, 1], float32."""
    x = np.asarray(encoded, np.float32)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4)).astype(np.float32)


def srgb8_reference(linear: np.ndarray) -> np.ndarray:
    """Linear float image -> uint8 sRGB, rounded to nearest: the definition of the 8-bit codes."""
    with np.errstate(invalid="ignore"):
        return np.round(srgb_encode(linear) * 255.0).astype(np.uint8)


def to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Linear float image -> uint8 sRGB (rounded to nearest): ``srgb8_reference``'s codes. Through
    ``render.srgb8``'s table (2-4x faster) once numba is loaded anyway (the rasterizer, dataset
    generation) or for big images; otherwise numpy, so that writing one PNG does not import numba.
    Both give the same codes; NaN gives 0."""
    if "numba" in sys.modules or np.size(linear) >= 1 << 22:
        from .srgb8 import to_srgb8_fast

        return to_srgb8_fast(linear)
    return srgb8_reference(linear)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success rename it over ``path``; on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, data, **dumps) -> None:
    """``json.dumps(data, **dumps)`` (default: indent 2, ``str`` for unknown types) written atomically."""
    import json

    write_text_atomic(path, json.dumps(data, **{"indent": 2, "default": str, **dumps}) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def write_exr(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a linear float32 image: (H, W, 3) as channels R, G, B or (H, W) as channel Y. ZIP compression."""
    import OpenEXR

    img = np.ascontiguousarray(np.asarray(image, np.float32))
    if img.ndim == 3 and img.shape[2] == 3:
        channels = {"RGB": img}
    elif img.ndim == 2:
        channels = {"Y": img}
    else:
        raise ValueError(f"{path}: EXR images must be (H, W, 3) or (H, W), got shape {img.shape}")
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with atomic_path(path) as tmp:
        OpenEXR.File(header, channels).write(str(tmp))


def read_exr(path: str | os.PathLike) -> np.ndarray:
    """Read an EXR as float32: (H, W, 3) for RGB(A) files (alpha dropped), (H, W) for one channel."""
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        ch = f.channels()
        if "RGB" in ch or "RGBA" in ch:
            px = ch["RGB"].pixels if "RGB" in ch else ch["RGBA"].pixels[..., :3]
            return np.asarray(px, np.float32)
        if all(c in ch for c in "RGB"):
            return np.stack([np.asarray(ch[c].pixels, np.float32) for c in "RGB"], -1)
        if len(ch) == 1:
            return np.asarray(next(iter(ch.values())).pixels, np.float32)
        raise ValueError(f"{path}: EXR has channels {sorted(ch)}; expected RGB, RGBA or a single channel")


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a PNG. Float images are treated as linear and sRGB-encoded to 8 bits; uint8 and uint16
    images are written as given (no encoding)."""
    img = np.asarray(image)
    if img.dtype.kind == "f":
        img = to_srgb8(img)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, img, extension=".png")


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write by extension: ``.exr`` linear float32, ``.png`` sRGB 8-bit, ``.npy`` raw array."""
    ext = Path(path).suffix.lower()
    if ext == ".exr":
        write_exr(path, image)
    elif ext == ".png":
        write_png(path, image)
    elif ext == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, np.asarray(image))
    else:
        raise ValueError(f"{path}: unknown image extension {ext!r}; expected .png, .exr or .npy")


def read_image(path: str | os.PathLike, linear: bool = True) -> np.ndarray:
    """Read an image as float32 (H, W, 3) (or (H, W) for one-channel EXR/PNG).

    EXR is returned as stored (linear). 8/16-bit formats (PNG, JPEG, ...) are scaled to [0, 1] and,
    with ``linear=True``, sRGB-decoded. Alpha is dropped; grey images are expanded to RGB.
    """
    p = Path(path)
    if p.suffix.lower() == ".exr":
        return read_exr(p)
    img = iio.imread(p)
    scale = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0
    img = img.astype(np.float32) / scale
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return srgb_decode(img) if linear else img
