"""Evaluation of a trained GQN on held-out scenes, against two baselines on the same queries.

    report = evaluate("runs/small", "data/rooms_test", contexts=(1, 3, 5), samples=4)

For every test scene a fixed permutation of its views (``default_rng([seed, scene])``) gives the
query (first) and the context views (the next K), so the K = 1, 3, 5 contexts are nested and every
method is scored on the same query images. Scores, per context size K:

- ``model``: the generator's images with z drawn from the prior, N samples per query: ``psnr`` /
  ``ssim`` of the mean of the N images, ``psnr_best_of_n`` / ``ssim_best_of_n`` of the best single
  sample per query (by PSNR), ``psnr_single`` of the first sample alone.
- ``nearest_view``: the context image whose viewpoint is nearest the query's (Euclidean distance
  between the 7-number viewpoints: metres for the position plus the cos/sin of yaw and pitch).
- ``mean_image``: the training set's mean image (``RUN_DIR/mean_image.npy``), whatever the query.
- ``model_minus_nearest_view``: the paired per-query PSNR difference (model mean-of-N minus nearest
  view): its mean, the standard error of that mean, and the fraction of queries the model wins, so
  a small lead can be told from noise.
- ``elbo_nats``: the ELBO per query image in nats, a lower bound on log p(x_q | context) with the
  pixel sigma the run ended at; higher is better. ``nll_nats`` and ``kl_nats`` are its two terms
  (``elbo = -(nll + kl)``).

``meta.held_out`` says whether the test scenes are held out: false when the dataset has the family,
family parameters and seed of the run's training data (run.json), whose scenes are then training
scenes (a scene depends only on those and its index); null when the run does not record its data.

PSNR is in dB on images in [0, 1] (the stored 8-bit sRGB values / 255), averaged over queries.
SSIM is ``render.metrics.ssim`` (11-tap Gaussian window, sigma 1.5, per channel; the definition
``trirender compare`` uses) on the same images, averaged over queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from render.shards import ShardError

from .data import SceneViews, dataset_identity, images_kind, same_scenes
from .model import GQN, sigma_at
from .train import build_model, check_image_size, read_run_info, resolve_device


def psnr_np(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-10)))


def ssim_np(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two float (H, W, 3) images in [0, 1]: the project's one definition,
    ``render.metrics.ssim`` (11-tap Gaussian window, sigma 1.5), as ``trirender compare`` reports."""
    from render.metrics import ssim

    return ssim(a, b)


def query_plan(views: SceneViews, scenes: np.ndarray, k_max: int, seed: int = 0) -> np.ndarray:
    """View indices (S, 1 + k_max): the query first, then the context views in order."""
    if k_max + 1 > views.views:
        raise ValueError(f"context {k_max} needs {k_max + 1} views per scene; {views.root} has {views.views}")
    return np.stack([np.random.default_rng([seed, int(s)]).permutation(views.views)[: k_max + 1] for s in scenes])


def nearest_view(ctx_images: np.ndarray, ctx_vp: np.ndarray, query_vp: np.ndarray) -> np.ndarray:
    """(B, K, H, W, 3), (B, K, 7), (B, 7) -> (B, H, W, 3): the context image nearest each query."""
    d = np.linalg.norm(ctx_vp - query_vp[:, None, :], axis=-1)             # (B, K)
    return ctx_images[np.arange(len(d)), d.argmin(1)]                       # (B, H, W, 3)


def held_out(run_info: dict[str, Any], data: str | Path, manifest: dict[str, Any], scenes: int) -> tuple[bool | None, str | None]:
    """Whether the first ``scenes`` scenes of a dataset are held out from a run's training data, and
    a note for people when they are not (None when they are, or when the run records no dataset)."""
    trained = run_info.get("dataset")
    same = same_scenes(trained, dataset_identity(manifest))
    if same is None:
        return None, None
    if not same:
        return True, None
    shared = min(scenes, int(trained.get("scenes") or scenes))
    return False, (f"{data} has the family and seed of the run's training data ({run_info.get('data')}; "
                   f"{trained.get('family')}, seed {trained.get('seed')}), so {shared} of the {scenes} scenes "
                   "evaluated are training scenes: these numbers measure fit, not held-out generalisation. For "
                   f"held-out data: trirender dataset generate {trained.get('family')} ... --seed <another>")


def evaluate(run_dir: str | Path, data: str | Path, contexts: tuple[int, ...] = (1, 3, 5), samples: int = 4,
             batch: int = 16, max_scenes: int | None = None, seed: int = 0, device: str = "cpu",
             model: GQN | None = None, images: str | None = None, progress: bool = False) -> dict[str, Any]:
    """The evaluation report (see the module docstring) as a JSON-ready dict: one object per context
    size, keyed ``context_K``, and ``meta`` (run, data, step, samples, seed, scenes, held_out, images,
    definitions). images: ``raster`` or ``path``, which of the dataset's images to score against
    (None: what the run trained on, from its run.json). progress: a tqdm bar on stderr, advanced
    per batch, counting scenes over every context size."""
    run_dir = Path(run_dir)
    if samples < 1:
        raise ValueError(f"samples {samples}; expected >= 1")
    if model is None:
        device = resolve_device(device)
        model, cfg, step = build_model(run_dir, device)
    else:
        cfg, step = model.cfg, 0
    check_image_size(data, cfg)
    mean_path = run_dir / "mean_image.npy"
    if not mean_path.is_file():
        raise FileNotFoundError(f"{mean_path}: missing; expected the training set's mean image written by train")
    mean_img = np.load(mean_path).astype(np.float32)                        # (H, W, 3)
    run_info = read_run_info(run_dir)
    kind = images if images is not None else run_info.get("images")
    try:
        views = SceneViews.of_kind(data, kind, verify=False)
    except ShardError as exc:
        if images is None:  # the run's kind, not asked for: say where it came from and how to choose
            raise ShardError(f"{exc} (the run trained on {kind} images, {Path(run_dir) / 'run.json'}; pass --images "
                             f"{'raster' if kind == 'path' else 'path'} to score against the other kind)") from None
        raise
    views.verify()
    manifest = views.manifest
    n = views.num_scenes if max_scenes is None else min(max_scenes, views.num_scenes)
    is_held_out, note = held_out(run_info, data, manifest, n)
    scenes = np.arange(n)
    plan = query_plan(views, scenes, max(contexts), seed)
    sigma = sigma_at(cfg, step)
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # the posterior draws of the ELBO
    report: dict[str, Any] = {}
    from tqdm import tqdm

    bar = tqdm(total=n * len(contexts), disable=not progress, unit="scene", dynamic_ncols=True, desc="eval")
    for k in contexts:
        bar.set_postfix(context=k)
        acc: dict[str, list[float]] = {key: [] for key in (
            "m_psnr", "m_ssim", "b_psnr", "b_ssim", "s_psnr", "n_psnr", "n_ssim", "a_psnr", "a_ssim", "elbo", "nll", "kl")}
        for lo in range(0, n, batch):
            sc = scenes[lo:lo + batch]
            imgs, vps = views.gather(sc, plan[lo:lo + batch, : k + 1])     # (B, 1+K, H, W, 3), (B, 1+K, 7)
            query = imgs[:, 0].astype(np.float32) / 255.0                  # (B, H, W, 3)
            ctx_x = torch.from_numpy(imgs[:, 1:]).to(device).permute(0, 1, 4, 2, 3).float() / 255.0  # (B, K, 3, H, W)
            ctx_v = torch.from_numpy(vps[:, 1:]).to(device)                # (B, K, 7)
            v_q = torch.from_numpy(vps[:, 0]).to(device)                   # (B, 7)
            x_q = torch.from_numpy(query).to(device).permute(0, 3, 1, 2)   # (B, 3, H, W)
            with torch.no_grad():
                r = model.scene_representation(ctx_x, ctx_v)
                draws = torch.stack([model.generate(ctx_x, ctx_v, v_q, r=r, generator=gen) for _ in range(samples)])
                out = model(ctx_x, ctx_v, x_q, v_q, sigma)
            draws = draws.permute(0, 1, 3, 4, 2).cpu().numpy()             # (N, B, H, W, 3)
            avg = draws.mean(0)                                             # (B, H, W, 3)
            near = nearest_view(imgs[:, 1:], vps[:, 1:], vps[:, 0]).astype(np.float32) / 255.0
            for i in range(len(sc)):
                acc["m_psnr"].append(psnr_np(avg[i], query[i]))
                acc["m_ssim"].append(ssim_np(avg[i], query[i]))
                each = [psnr_np(d[i], query[i]) for d in draws]
                best = int(np.argmax(each))
                acc["b_psnr"].append(each[best])
                acc["b_ssim"].append(ssim_np(draws[best, i], query[i]))
                acc["s_psnr"].append(each[0])
                acc["n_psnr"].append(psnr_np(near[i], query[i]))
                acc["n_ssim"].append(ssim_np(near[i], query[i]))
                acc["a_psnr"].append(psnr_np(mean_img, query[i]))
                acc["a_ssim"].append(ssim_np(mean_img, query[i]))
            acc["nll"] += out["nll_each"].tolist()
            acc["kl"] += out["kl_each"].tolist()
            bar.update(len(sc))
        m = {key: float(np.mean(v)) for key, v in acc.items() if v}
        gain = np.array(acc["m_psnr"]) - np.array(acc["n_psnr"])          # paired, per query (dB)
        report[f"context_{k}"] = {
            "model": {"psnr": m["m_psnr"], "ssim": m["m_ssim"], "psnr_best_of_n": m["b_psnr"],
                      "ssim_best_of_n": m["b_ssim"], "psnr_single": m["s_psnr"]},
            "nearest_view": {"psnr": m["n_psnr"], "ssim": m["n_ssim"]},
            "model_minus_nearest_view": {"psnr": float(gain.mean()),
                                         "psnr_standard_error": float(gain.std(ddof=1) / np.sqrt(len(gain)))
                                         if len(gain) > 1 else float("nan"),
                                         "fraction_model_better": float((gain > 0).mean())},
            "mean_image": {"psnr": m["a_psnr"], "ssim": m["a_ssim"]},
            "elbo_nats": -(m["nll"] + m["kl"]), "nll_nats": m["nll"], "kl_nats": m["kl"],
            "scenes": int(n),
        }
    bar.close()
    report["meta"] = {"run": str(run_dir), "data": str(data), "step": step, "samples": samples, "seed": seed,
                      "sigma": sigma, "contexts": list(contexts), "held_out": is_held_out, "held_out_note": note,
                      "images": images_kind(manifest, views.images_key),
                      "psnr": "dB on 8-bit sRGB / 255, mean over queries",
                      "ssim": "render.metrics.ssim (Gaussian window 11, sigma 1.5; = skimage gaussian_weights=True, sigma=1.5, use_sample_covariance=False), mean over queries",
                      "elbo": "nats per query image, lower bound on log p(x_q | context); higher is better"}
    return report


def table(report: dict[str, Any]) -> str:
    """A Markdown table of a report (PSNR dB / SSIM per method and context size)."""
    lines = ["| K | model PSNR (mean of N) | model PSNR (best of N) | nearest view PSNR | mean image PSNR | "
             "model SSIM | nearest view SSIM | mean image SSIM | ELBO (nats) | model − nearest PSNR (± s.e.) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in report.items():
        if not key.startswith("context_"):
            continue
        lines.append(f"| {key.split('_')[1]} | {r['model']['psnr']:.2f} | {r['model']['psnr_best_of_n']:.2f} | "
                     f"{r['nearest_view']['psnr']:.2f} | {r['mean_image']['psnr']:.2f} | {r['model']['ssim']:.3f} | "
                     f"{r['nearest_view']['ssim']:.3f} | {r['mean_image']['ssim']:.3f} | {r['elbo_nats']:.0f} |"
                     + _gain_cell(r))
    return "\n".join(lines)


def _gain_cell(r: dict[str, Any]) -> str:
    g = r.get("model_minus_nearest_view")  # absent in reports written before it existed
    return f" {g['psnr']:+.2f} ± {g['psnr_standard_error']:.2f} |" if g else " – |"
