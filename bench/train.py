"""Training throughput of the GQN presets: iterations/s, images/s and peak memory.

    python bench/train.py                       # every preset on the CPU (and the GPU if present)
    python bench/train.py --presets paper --batch 36 --device cuda --amp --channels-last --compile

Each (preset, device) runs in its own process, so peak memory is that configuration's alone: peak
resident set size on the CPU (ru_maxrss, includes the Python/torch baseline, printed separately),
``torch.cuda.max_memory_allocated`` on a GPU. A step is a full training step (forward, ELBO,
backward, Adam) on random images with K = 3 context views; ``--warmup`` steps are not timed.
Results go to ``bench/results/train.json`` with the machine, versions and settings.
The anchor of the issue: public PyTorch GQNs report ~3 it/s (RTX 3090) and ~5 it/s (V100) for the
faithful model at batch 36; the target is >= 15 it/s for ``paper`` at batch 36 on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(preset: str, batch: int, device: str, steps: int, warmup: int, amp: bool, channels_last: bool,
        compile_: bool, threads: int, compile_mode: str = "default") -> dict:
    """Time one configuration in this process."""
    import torch

    sys.path.insert(0, str(ROOT))
    from neural.model import GQN, PRESETS, count_parameters

    if threads:
        torch.set_num_threads(threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = PRESETS[preset].override(batch_size=batch)
    torch.manual_seed(0)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as neural.train does on a GPU
    model = GQN(cfg).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_start, betas=cfg.adam_betas, eps=cfg.adam_eps,
                           fused=dev.type == "cuda")
    t_compile = time.perf_counter()
    fwd = torch.compile(model, mode=compile_mode) if compile_ else model
    k = 3
    cx = torch.rand(batch, k, 3, 64, 64, device=dev)
    cv = torch.randn(batch, k, 7, device=dev)
    xq = torch.rand(batch, 3, 64, 64, device=dev)
    vq = torch.randn(batch, 7, device=dev)
    if channels_last:
        xq = xq.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if amp else torch.autocast(dev.type, enabled=False)
        with ctx:
            out = fwd(cx, cv, xq, vq, 1.0)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync()
    warmup_seconds = time.perf_counter() - t_compile
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    res = {"preset": preset, "batch": batch, "device": str(dev), "amp_bf16": amp, "channels_last": channels_last,
           "compile": compile_, "compile_mode": compile_mode if compile_ else None,
           "warmup_seconds": warmup_seconds, "steps_timed": steps, "warmup": warmup,
           "parameters": count_parameters(model),
           "seconds_per_step_median": med, "seconds_per_step_min": min(times),
           "it_per_s": 1.0 / med, "images_per_s": batch / med, "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        res["peak_memory_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        res["card"] = torch.cuda.get_device_name(dev)
    else:
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res["baseline_rss_mib"] = base_rss
    return res


def machine() -> dict:
    """The machine and versions, as every bench script records them (bench/common.py)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine as common_machine, versions

    info = {**common_machine(), "versions": versions()}
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,small,paper")
    ap.add_argument("--batch", type=int, default=0, help="0: each preset's own batch size")
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu, and cuda when present)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (GPU runs always add an amp row)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, ...")
    ap.add_argument("--variants", default="",
                    help="semicolon-separated amp,channels_last,compile triples of 0/1, e.g. '1,1,0;1,1,1' "
                         "(default: the flags above, plus an amp+channels-last row on a GPU)")
    ap.add_argument("--child-timeout", type=float, default=0, help="seconds per configuration (0: none)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import RESULTS  # bench/results in a checkout, ./bench_results when installed

    ap.add_argument("--out", default=str(RESULTS / "train.json"))
    ap.add_argument("--append", action="store_true", help="Add these rows to the results already in --out")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.one:
        p = json.loads(args.one)
        print("RESULT " + json.dumps(one(**p)))
        return
    import torch

    from neural.model import PRESETS  # noqa: F401  (fail early on a bad checkout)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    from render.image_io import write_json_atomic

    out = Path(args.out)
    old = json.loads(out.read_text())["results"] if args.append and out.is_file() else []
    info = machine()
    rows = []

    def save(r: dict) -> None:  # after every configuration, so a run cut short keeps what it measured
        r["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "append", "one")}
        r["load_average_after"] = os.getloadavg()
        r["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows.append(r)
        write_json_atomic(out, {"machine": info, "context_views": 3, "results": old + rows})

    for dev in devices:
        for preset in args.presets.split(","):
            batch = args.batch or PRESETS[preset].batch_size
            if args.variants:
                variants = [tuple(bool(int(x)) for x in t.split(",")) for t in args.variants.split(";")]
            else:
                variants = [(args.amp, args.channels_last, args.compile)]
                if dev == "cuda" and not args.amp:
                    variants.append((True, True, args.compile))
            for amp, cl, comp in variants:
                p = {"preset": preset, "batch": batch, "device": dev, "steps": args.steps, "warmup": args.warmup,
                     "amp": amp, "channels_last": cl, "compile_": comp, "threads": args.threads,
                     "compile_mode": args.compile_mode}
                try:
                    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(p)], capture_output=True,
                                          text=True, cwd=ROOT, timeout=args.child_timeout or None)
                except subprocess.TimeoutExpired:
                    print(f"{preset} {dev} amp {amp} compile {comp}: over {args.child_timeout:.0f} s, skipped")
                    continue
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{preset} {dev}: failed\n{proc.stderr[-2000:]}")
                    continue
                r = json.loads(line[0][7:])
                save(r)
                mem = f"{r['peak_memory_mib']:.0f} MiB GPU" if "peak_memory_mib" in r else f"{r['peak_rss_mib']:.0f} MiB RSS"
                print(f"{preset:6s} {dev:4s} batch {batch:3d} amp {amp!s:5s} cl {cl!s:5s} compile {comp!s:5s}: "
                      f"{r['it_per_s']:.3f} it/s, "
                      f"{r['images_per_s']:.1f} images/s, {mem}, {r['parameters'] / 1e6:.2f}M params", flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
