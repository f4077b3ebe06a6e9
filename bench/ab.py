"""A/B timing of the path tracer across commits, in alternating processes on one machine.

    python bench/ab.py prepare d4109ba 66e91be HEAD work     # here: export each one's render/
    python bench/ab.py run --backend gpu --rounds 3          # here or on a GPU machine

``prepare`` writes ``git archive REV render`` of each revision (``work``: this working tree's
render/, uncommitted changes included) to ``.dev/ab/<label>/``, a git-ignored folder that a lent
GPU machine receives when it is carried with the working tree. ``run`` needs no git: it renders the
scene with each tree's own ``render`` package in its own process (its own Taichi offline cache), tree
after tree, ``--rounds`` times, so that the host's changing speed hits every tree alike. Each process
renders ``--repeats`` times; the first render (compile or cache load) is not timed for throughput: it
renders in passes, as ``trirender render`` does, and the time from the process's start to the end of its
first pass is its start time (reported as "warm start" over the rounds after the first, whose start
compiled into the tree's empty cache; one-view scenes only). It prints a table (median M paths/s over
the rounds, ratio to the first tree that ran, median warm start, hashes of the image and depth AOV so a
change that should keep the image can be seen to) and saves JSON with the machine, versions and
settings (default ``bench/results/ab.json``).

This is how the one-path kernel's slowdown on the GPU was pinned to 66e91be (README, "On a GPU").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, run_child, save, table  # noqa: E402

DEFAULT_DIR = ROOT / ".dev" / "ab"

# Runs in a fresh process (bench.common.run_child) with one tree's render/ first on sys.path.
CHILD = textwrap.dedent("""
    import hashlib, json, statistics, sys, time
    t0 = time.perf_counter()
    args = json.loads(sys.argv[1])
    import render
    if args["scene"] in render.FAMILIES:
        scene = render.make_scene(args["scene"], seed=0, width=args["size"], height=args["size"])
    else:
        scene = render.load_scene(args["scene"])
    if args["one_path"]:
        import render.pathtracer
        render.pathtracer.CPU_PACKETS = False
    views = args.get("views", 1)
    if views > 1:  # a family scene's views in one launch, as a dataset renders them
        import numpy as np
        from render.families import FAMILIES
        cams = FAMILIES[args["scene"]].cameras(np.random.default_rng([0, 0, 1]), views, args["size"], args["size"])
    rates = []
    for r in range(args["repeats"]):
        if views > 1:
            f = render.pathtrace_views(scene, cams, spp=args["spp"], max_depth=args["depth"],
                                       seeds=[r * views + i for i in range(views)], backend=args["backend"])[0]
        else:  # the first in passes, as `trirender render` renders: its first pass ends the start
            t_call = time.perf_counter() - t0
            f = render.pathtrace(scene, spp=args["spp"], max_depth=args["depth"], seed=r, backend=args["backend"],
                                 interruptible=r == 0)
        if r == 0:
            first = f.meta
            start = t_call + first["first_pass_seconds"] if "first_pass_seconds" in first and views == 1 else None
        else:
            rates.append(f.meta["paths_per_second"] / 1e6)
    sha = lambda a: hashlib.sha1(a.tobytes()).hexdigest()[:12]
    print("RESULT" + json.dumps({"mpaths": statistics.median(rates), "all": rates, "rgb_sha": sha(f.rgb),
                             "depth_sha": sha(f.depth), "first_seconds": first.get("compile_seconds"),
                             "start_seconds": start,
                             "device": f.meta.get("device"), "kernel": f.meta.get("kernel")}))
""")


def _git(*args: str) -> str:
    p = subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


def prepare(revs: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    labels = []
    for rev in revs:
        if rev == "work":
            label, dest = "work", out / "work"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(ROOT / "render", dest / "render", ignore=shutil.ignore_patterns("__pycache__"))
            commit = _git("rev-parse", "--short", "HEAD") + "+work"
        else:
            commit = _git("rev-parse", "--short", "--verify", f"{rev}^{{commit}}")
            label, dest = commit, out / commit
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            with tempfile.TemporaryFile() as tmp:
                subprocess.run(["git", "archive", "--format=tar", commit, "render"], cwd=ROOT, stdout=tmp,
                               check=True)
                tmp.seek(0)
                with tarfile.open(fileobj=tmp) as tar:
                    tar.extractall(dest, filter="data")
        (dest / "COMMIT").write_text(commit + "\n")
        labels.append(label)
        print(f"{label}: {dest}")
    (out / "ORDER").write_text("\n".join(labels) + "\n")  # run's default: these trees, in this order


def run(args: argparse.Namespace) -> None:
    order = args.dir / "ORDER"
    trees = [t for t in (order.read_text().split() if order.is_file() else []) if (args.dir / t / "render").is_dir()]
    if args.trees:
        trees = args.trees.split(",")
        missing = [t for t in trees if not (args.dir / t / "render").is_dir()]
        if missing:
            raise SystemExit(f"--trees: no {args.dir}/<tree>/render for {', '.join(missing)}")
    if not trees:
        raise SystemExit(f"no trees in {args.dir}: run `python bench/ab.py prepare REV ...` first")
    scene = str(Path(args.scene).resolve()) if Path(args.scene).is_file() else args.scene  # children run elsewhere
    settings = {"scene": scene, "size": args.size, "spp": args.spp, "depth": args.depth,
                "backend": args.backend, "repeats": args.repeats, "rounds": args.rounds,
                "one_path": args.one_path, "views": args.views, "trees": trees}
    child_args = {k: settings[k] for k in ("scene", "size", "spp", "depth", "backend", "repeats", "one_path", "views")}
    per: dict[str, list[dict]] = {t: [] for t in trees}
    for rnd in range(args.rounds):
        for t in trees:
            env = {"PYTHONPATH": os.pathsep.join([str(args.dir / t), *filter(None, [os.environ.get("PYTHONPATH")])]),
                   "TI_OFFLINE_CACHE_FILE_PATH": str(args.dir / t / ".ticache")}
            try:
                r = run_child(CHILD, child_args, env, timeout=args.child_timeout, cwd=args.dir / t)
            except subprocess.TimeoutExpired:
                print(f"round {rnd + 1} {t}: no result in --child-timeout {args.child_timeout} s", file=sys.stderr)
                continue
            except RuntimeError as exc:
                print(f"round {rnd + 1} {t}: {exc}", file=sys.stderr)
                continue
            per[t].append(r)
            print(f"round {rnd + 1} {t:>16}: {r['mpaths']:8.2f} M paths/s  rgb {r['rgb_sha']}  "
                  f"depth {r['depth_sha']}", flush=True)
    rows, base = [], None
    for t in trees:
        if not per[t]:
            rows.append({"tree": t, "commit": (args.dir / t / "COMMIT").read_text().strip(), "M paths/s": "failed"})
            continue
        med = statistics.median(r["mpaths"] for r in per[t])
        base = base or med
        # process start to the end of the first pass, on a warm offline cache: each tree's first round
        # compiled into its own empty cache
        warm = [r["start_seconds"] for r in per[t][1:] if r.get("start_seconds") is not None]
        rows.append({"tree": t, "commit": (args.dir / t / "COMMIT").read_text().strip(),
                     "M paths/s": round(med, 2), "rounds": " ".join(f"{r['mpaths']:.1f}" for r in per[t]),
                     "ratio": round(med / base, 3), "rgb_sha": per[t][-1]["rgb_sha"],
                     "depth_sha": per[t][-1]["depth_sha"], "device": per[t][-1]["device"],
                     "warm start s": round(statistics.median(warm), 2) if warm else "",
                     "kernel": per[t][-1].get("kernel")})
    print()
    print(table(rows, ["tree", "commit", "M paths/s", "ratio", "rounds", "warm start s", "rgb_sha", "depth_sha"]))
    print(f"saved {save('ab', settings, {'trees': rows, 'runs': per}, args.out, modules=('taichi',))}")
    if any(not per[t] for t in trees):
        raise SystemExit(f"no result for {', '.join(t for t in trees if not per[t])} (their errors are above)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="export render/ of each revision ('work': the working tree)")
    p.add_argument("revs", nargs="+")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    r = sub.add_parser("run", help="time the prepared trees in alternation")
    r.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    r.add_argument("--trees", help="comma-separated labels (default: every prepared tree, in order)")
    r.add_argument("--scene", default="cornell_box", help="a scene family (cornell_box, rooms_ring, ...) or file")
    r.add_argument("--size", type=int, default=256)
    r.add_argument("--spp", type=int, default=64)
    r.add_argument("--depth", type=int, default=8)
    r.add_argument("--backend", default="cpu", choices=["cpu", "gpu"])
    r.add_argument("--repeats", type=int, default=4, help="renders per process; the first is not timed")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--one-path", action="store_true", help="the CPU's one-path kernel instead of packets")
    r.add_argument("--views", type=int, default=1, help="with a family --scene: this many of its cameras' views "
                   "in one launch, as datasets render them (the table's image hash is the first view's)")
    r.add_argument("--child-timeout", type=float, default=600)
    r.add_argument("--out", type=Path, default=RESULTS / "ab.json")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.revs, args.dir)
    else:
        if args.repeats < 2:
            ap.error("--repeats: at least 2 (the first render is not timed)")
        run(args)


if __name__ == "__main__":
    main()
