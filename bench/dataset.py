"""Dataset generation and loading throughput (issue 6).

    python bench/dataset.py [--scenes 2000] [--path-scenes 20] [--repeats 3] [--out bench/results/dataset.json]

Measures, on `rooms_ring` at 64x64 with 10 views per scene: end-to-end views per second of
`render.dataset.generate` (rendering, sRGB encoding, checksumming, writing shards) with the
rasterizer and with the path tracer (64 spp), after a warm-up run so compile time is excluded
(reported separately), and samples per second of `neural.data.make_loader` at batch 36 with
0 and 2 worker processes. The rasterizer's generation runs ``--repeats`` times (each into a new
folder) and reports the median with each run listed: one 10-s run moves by +-15 % with this
shared host's load. Prints a table and saves JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save, table  # noqa: E402


def gen_rate(renderer: str, scenes: int, size: int, views: int, spp: int, root: Path, repeats: int = 1) -> dict:
    """Generation views/s: the median of ``repeats`` runs after one warm-up (the first run's
    dataset is kept at ``root / renderer`` for the loader rows)."""
    from render.dataset import DatasetConfig, generate

    t0 = time.perf_counter()  # warm-up: compile (or load cached kernels) on a tiny dataset
    if renderer in ("raster", "both"):
        from render.rasterizer import warm_up

        warm_up()  # every rasterizer kernel: the timed run's processes may use either views kernel
    generate(DatasetConfig("rooms_ring", scenes=2, views=2, size=size, renderer=renderer, spp=spp, shard_size=2, seed=99),
             root / f"warm-{renderer}", progress=False)
    warm = time.perf_counter() - t0
    cfg = DatasetConfig("rooms_ring", scenes=scenes, views=views, size=size, renderer=renderer, spp=spp,
                        shard_size=min(100, scenes))
    seconds = []
    for r in range(max(1, repeats)):
        out = root / (renderer if r == 0 else f"{renderer}-{r}")
        t0 = time.perf_counter()
        generate(cfg, out, progress=False)
        seconds.append(time.perf_counter() - t0)
        if r:
            shutil.rmtree(out, ignore_errors=True)
    dt = statistics.median(seconds)
    what = f"generate {renderer}"
    if renderer == "path":
        from render.pathtracer import init_backend

        used, device = init_backend("auto")  # what generate() ran on: CUDA when present
        what += f" {spp} spp ({used}: {device})"
    return {"what": what, "scenes": scenes,
            "views": scenes * views, "seconds": round(dt, 2), "rate": round(scenes * views / dt, 1), "unit": "views/s",
            "warmup_seconds": round(warm, 2),
            "each_run": " / ".join(f"{scenes * views / x:.0f}" for x in seconds) if len(seconds) > 1 else ""}


def loader_rate(root: Path, workers: int, samples: int = 20000) -> dict:
    """Samples per second over whole epochs, each epoch's first batch (worker start-up) excluded."""
    from neural.data import make_loader

    n, dt, epoch = 0, 0.0, 0
    while n < samples:
        it = iter(make_loader(root, batch_size=36, max_context=5, seed=0, num_workers=workers, epoch=epoch))
        next(it)
        t0 = time.perf_counter()
        for b in it:
            n += b["query_image"].shape[0]
        dt += time.perf_counter() - t0
        epoch += 1
    return {"what": f"loader, {workers} workers, batch 36", "scenes": "", "views": n, "seconds": round(dt, 2),
            "rate": round(n / dt, 1), "unit": "samples/s", "warmup_seconds": "", "each_run": ""}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=2000, help="scenes for the raster run")
    ap.add_argument("--path-scenes", type=int, default=20, help="scenes for the path tracer run")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--spp", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="raster generation runs; the median is reported")
    ap.add_argument("--renderers", default="raster,path", help="which generation runs (the loader rows read the "
                    "raster dataset, so they need raster)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    which = [r for r in args.renderers.split(",") if r]
    root = Path(tempfile.mkdtemp(prefix="trirender-bench-"))
    try:
        rows = []
        if "raster" in which:
            rows.append(gen_rate("raster", args.scenes, args.size, args.views, args.spp, root, args.repeats))
        if "path" in which and args.path_scenes:
            rows.append(gen_rate("path", args.path_scenes, args.size, args.views, args.spp, root))
        if "raster" in which:
            rows += [loader_rate(root / "raster", w) for w in (0, 2)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(rows, ["what", "scenes", "views", "seconds", "rate", "unit", "warmup_seconds", "each_run"]))
    targets = {"generate raster": 2000, "generate path 64 spp": 20, "loader": 20000}
    path = save("dataset", vars(args), {"rows": rows, "targets": targets}, args.out)
    print(f"saved {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
