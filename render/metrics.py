"""Image comparison: PSNR, SSIM, RMSE, MAE, a per-pixel error map and AOV agreement.

Definitions (one of each, documented because papers differ):
- RMSE and MAE are on **linear** RGB, unclipped (radiometric error; the numbers Mitsuba's and our
  path tracer's noise levels are quoted in).
- PSNR and SSIM are on what a viewer sees: linear RGB clipped to [0, 1] and sRGB-encoded, data
  range 1. PSNR = 10 log10(1 / MSE) over all pixels and channels (inf for identical images).
  SSIM is Wang et al. 2004 with a Gaussian window of 11 taps (sigma 1.5), K1 = 0.01, K2 = 0.03,
  population (not sample) covariances, computed per channel and averaged over channels and the
  pixels whose window lies inside the image -- the same numbers as scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, channel_axis=-1)``, which the tests check against.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from .frame import Frame
from .image_io import srgb_encode

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11-tap window
DEPTH_REL_TOL = 0.01  # depth AOVs agree within 1 %
NORMAL_COS_TOL = 0.99  # normals agree within ~8 degrees


def _check_pair(a: np.ndarray, b: np.ndarray, what: str = "images") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} differ in size: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}; "
                         "expected the same width and height")


def display(rgb: np.ndarray) -> np.ndarray:
    """Linear RGB -> clipped sRGB-encoded float64 in [0, 1] (what PSNR/SSIM are computed on)."""
    return srgb_encode(np.nan_to_num(rgb, nan=0.0, posinf=1.0)).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two [0, 1] images (inf when identical)."""
    _check_pair(a, b)
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two (H, W, C) or (H, W) images with data range 1 (see module docstring)."""
    _check_pair(a, b)
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda img: gaussian_filter(img, SSIM_SIGMA, truncate=SSIM_RADIUS / SSIM_SIGMA, mode="reflect")  # noqa: E731
    scores = []
    for c in range(x.shape[2]):
        xc, yc = x[..., c], y[..., c]
        mx, my = blur(xc), blur(yc)
        vx = blur(xc * xc) - mx * mx  # population variances under the window
        vy = blur(yc * yc) - my * my
        cxy = blur(xc * yc) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        r = SSIM_RADIUS  # only windows that lie inside the image, as scikit-image crops
        scores.append(s[r:-r, r:-r].mean() if min(s.shape) > 2 * r else s.mean())
    return float(np.mean(scores))


@dataclass
class Comparison:
    """The numbers of ``compare(a, b)`` plus the per-pixel error map.

    psnr, ssim: on sRGB display images (dB, unitless). rmse, mae: on linear RGB.
    error_map: (H, W) float32 per-pixel RMS over channels of the linear difference.
    aov: fractions of pixels whose depth / normal / object id agree (when both frames carry them).
    """

    psnr: float
    ssim: float
    rmse: float
    mae: float
    error_map: np.ndarray = field(repr=False)
    aov: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("error_map")
        return d


def aov_agreement(a: Frame, b: Frame) -> dict[str, float]:
    """Fractions of all pixels where the two frames agree: ``id`` equal (background included),
    ``depth`` both background or within 1 % relative, ``normal`` both background or cosine >= 0.99."""
    _check_pair(a.depth, b.depth, "AOVs")
    ida, idb = a.object_id, b.object_id
    bga, bgb = ida < 0, idb < 0
    both_bg = bga & bgb
    both_hit = ~bga & ~bgb
    da, db = a.depth.astype(np.float64), b.depth.astype(np.float64)
    with np.errstate(invalid="ignore"):
        depth_ok = both_bg | (both_hit & (np.abs(da - db) <= DEPTH_REL_TOL * np.maximum(np.abs(da), 1e-9)))
    cos = np.einsum("hwc,hwc->hw", a.normal.astype(np.float64), b.normal.astype(np.float64))
    normal_ok = both_bg | (both_hit & (cos >= NORMAL_COS_TOL))
    return {"id": float(np.mean(ida == idb)), "depth": float(np.mean(depth_ok)), "normal": float(np.mean(normal_ok))}


def compare(a: Frame | np.ndarray, b: Frame | np.ndarray) -> Comparison:
    """Compare two frames (or two linear (H, W, 3) images); AOV agreement only for two Frames."""
    ra = a.rgb if isinstance(a, Frame) else np.asarray(a)
    rb = b.rgb if isinstance(b, Frame) else np.asarray(b)
    _check_pair(ra, rb)
    diff = ra.astype(np.float64) - rb.astype(np.float64)
    da, db = display(ra), display(rb)
    return Comparison(
        psnr=psnr(da, db), ssim=ssim(da, db),
        rmse=float(np.sqrt(np.mean(diff ** 2))), mae=float(np.mean(np.abs(diff))),
        error_map=np.sqrt(np.mean(diff ** 2, axis=-1)).astype(np.float32),
        aov=aov_agreement(a, b) if isinstance(a, Frame) and isinstance(b, Frame) else {},
    )


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}"


def compare_picture(panels: list[tuple[str, np.ndarray]], error_map: np.ndarray, error_title: str, footer: str,
                    path, title: str = "") -> None:
    """Write one PNG: the panels (title, linear RGB) side by side, then the error heat map with a
    colour bar, the metrics in ``footer`` under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .image_io import save_figure

    n = len(panels) + 1
    h, w = error_map.shape
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n * max(w / h, 0.6), 4.4))
    for ax, (label, rgb) in zip(axes, panels):
        ax.imshow(display(rgb), interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    vmax = float(np.percentile(error_map, 99.5)) or 1e-6
    im = axes[-1].imshow(error_map, cmap="inferno", vmin=0.0, vmax=vmax, interpolation="nearest")
    axes[-1].set_title(error_title, fontsize=8)
    axes[-1].axis("off")
    fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.04, label="RMS error (linear)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.02, footer, ha="center", fontsize=8, family="monospace")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    save_figure(fig, path)


def convergence_plot(spps: list[int], rmses: list[float], raster_rmse: float, path, title: str = "") -> None:
    """Log-log plot of path-tracer RMSE against spp, the ideal 1/sqrt(spp) slope through the first
    point, and the rasterizer's RMSE as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from .image_io import save_figure

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(spps, rmses, "o-", label="path tracer")
    ideal = [rmses[0] * math.sqrt(spps[0] / s) for s in spps]
    ax.loglog(spps, ideal, "--", color="grey", label=r"ideal $1/\sqrt{spp}$")
    ax.axhline(raster_rmse, color="tab:red", label=f"rasterizer ({raster_rmse:.3g})")
    cross = next((s for s, r in zip(spps, rmses) if r < raster_rmse), None)
    if cross is not None:
        ax.axvline(cross, color="tab:red", alpha=0.3, linestyle=":")
        ax.annotate(f"path tracing wins from {cross} spp", (cross, raster_rmse), textcoords="offset points",
                    xytext=(5, 8), fontsize=8, color="tab:red")
    ax.set_xscale("log", base=2)
    ax.set_xticks(spps, [str(s) for s in spps])  # the spp rendered, as plain numbers
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # no log minor labels crowding them
    ax.set_xlabel("samples per pixel")
    ax.set_ylabel("RMSE vs reference (linear RGB)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def footer_text(c: Comparison, ref: dict[str, Comparison] | None = None) -> str:
    """The metrics line(s) printed on the compare picture."""
    lines = [f"raster vs path: PSNR {_fmt(c.psnr)} dB  SSIM {c.ssim:.3f}  RMSE {c.rmse:.4f}  MAE {c.mae:.4f}"
             + (f"  AOV agree id {c.aov['id']:.3f} depth {c.aov['depth']:.3f} normal {c.aov['normal']:.3f}" if c.aov else "")]
    for name, r in (ref or {}).items():
        label = name if " vs " in name else f"{name} vs reference"
        lines.append(f"{label}: PSNR {_fmt(r.psnr)} dB  SSIM {r.ssim:.3f}  RMSE {r.rmse:.4f}")
    return "\n".join(lines)
