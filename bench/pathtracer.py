"""Benchmark of the path tracer against Mitsuba 3 on the Cornell box (and a >=100k-triangle mesh).

    python bench/pathtracer.py [--backend cpu] [--reference PATH] [--repeats 3] [--no-mitsuba]
    python bench/pathtracer.py --backend gpu --size 512 --mitsuba-variants cuda_ad_rgb,llvm_ad_rgb \
        --out bench/results/pathtracer_gpu512.json      # on a CUDA machine

Prints a table and writes ``bench/results/pathtracer.json`` (machine, versions, settings, figures):
paths per second, cold and warm compile time, time from process start to the first pass, RMSE of each
64-spp image against a high-spp reference (box filter on both sides), and the same for our CPU's
one-path-per-thread kernel (the packet kernel's gain) and Mitsuba's ``llvm_ad_rgb`` and ``scalar_rgb``
when Mitsuba is installed. Renderers are timed in alternation
(ours, Mitsuba, ours, ...) so that other load on the machine hits both alike; every renderer runs in
its own process so thread pools do not compete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "cornell_box_mitsuba_4096spp.exr"
sys.path.insert(0, str(ROOT))

# One render in a fresh process: prints JSON with timings measured from the process's start.
OURS_CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import render
    args = json.loads(sys.argv[1])
    scene = render.cornell_box(width=args["size"], height=args["size"])
    if args.get("mesh_tris"):
        sys.path.insert(0, args["bench_dir"])
        from pathtracer import mesh_scene
        scene = mesh_scene(args["mesh_tris"], args["size"])
    t_call = time.perf_counter() - t0
    if args.get("one_path"):  # the one-path-per-thread kernel, which runs the scenes packets do not cover
        import render.pathtracer
        render.pathtracer.CPU_PACKETS = False
    out = []
    for r in range(args["repeats"]):
        f = render.pathtrace(scene, spp=args["spp"], max_depth=args["depth"], seed=r, backend=args["backend"],
                             interruptible=args.get("interruptible", False))
        m = dict(f.meta)
        m["process_to_call_seconds"] = t_call
        out.append(m)
        if r == 0 and args.get("save"):
            np.save(args["save"], f.rgb)
        t_call = 0.0
    print("RESULT" + json.dumps(out))
""")

MITSUBA_CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import mitsuba as mi
    args = json.loads(sys.argv[1])
    mi.set_variant(args["variant"])
    desc = mi.cornell_box()
    desc["sensor"]["film"]["rfilter"] = {"type": "box"}  # cornell_box() defaults to a Gaussian
    desc["sensor"]["film"]["width"] = desc["sensor"]["film"]["height"] = args["size"]
    desc["integrator"] = {"type": "path", "max_depth": args["depth"]}
    if args.get("mesh_ply"):  # the mesh scene: the boxes replaced by the same bumpy sphere
        del desc["small-box"], desc["large-box"]
        desc["blob"] = {"type": "ply", "filename": args["mesh_ply"], "face_normals": True,
                        "bsdf": {"type": "ref", "id": "white"}}
    scene = mi.load_dict(desc)
    out = []
    for r in range(args["repeats"] + 1):  # the first render includes the JIT compilation
        t = time.perf_counter()
        img = np.array(mi.render(scene, spp=args["spp"], seed=r + args.get("seed_offset", 0)))
        dt = time.perf_counter() - t
        out.append({"seconds": dt, "paths_per_second": args["size"] ** 2 * args["spp"] / dt})
        if r == 1 and args.get("save"):
            np.save(args["save"], img[..., :3].astype(np.float32))
    print("RESULT" + json.dumps(out))
""")


def mesh_arrays(n_tris: int) -> tuple[np.ndarray, np.ndarray]:
    """A bumpy sphere of >= n_tris triangles inside the Cornell box: vertices (V, 3), faces (F, 3)."""
    import trimesh

    sub = 0
    while 20 * 4 ** sub < n_tris:
        sub += 1
    ico = trimesh.creation.icosphere(subdivisions=sub)
    v = ico.vertices * (1.0 + 0.08 * np.sin(9 * ico.vertices[:, :1]) * np.cos(7 * ico.vertices[:, 1:2]))
    return v * 0.45 + [0.0, -0.5, 0.0], np.asarray(ico.faces)


def mesh_scene(n_tris: int, size: int = 256):
    """The Cornell box with its two boxes replaced by a bumpy sphere of >= n_tris triangles (white)."""
    import render
    from render.scene import SceneObject

    base = render.cornell_box(width=size, height=size)
    v, faces = mesh_arrays(n_tris)
    tri = v[faces].astype(np.float32)  # (T, 3, 3); flat shading with face normals
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    keep = [i for i, o in enumerate(base.objects) if o.name not in ("small_box", "large_box")]
    keep_t = np.isin(base.object_id, keep)
    remap = np.full(len(base.objects), -1, np.int32)
    remap[keep] = np.arange(len(keep))
    white = [m.name for m in base.materials].index("white")
    t = len(tri)
    return dataclasses.replace(
        base,
        positions=np.concatenate([base.positions[keep_t], tri]),
        normals=np.concatenate([base.normals[keep_t], np.repeat(n[:, None], 3, axis=1)]).astype(np.float32),
        uvs=np.concatenate([base.uvs[keep_t], np.zeros((t, 3, 2), np.float32)]),
        material_id=np.concatenate([base.material_id[keep_t], np.full(t, white, np.int32)]),
        object_id=np.concatenate([remap[base.object_id[keep_t]], np.full(t, len(keep), np.int32)]),
        objects=tuple(base.objects[i] for i in keep) + (SceneObject("bumpy_sphere", "mesh", "white"),),
        source=f"cornell_box + bumpy sphere ({t} triangles)",
    )


def _rmse(img: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((img.astype(np.float64) - ref[..., :3].astype(np.float64)) ** 2)))


def _versions() -> dict:
    from bench.common import versions

    return versions("mitsuba", "drjit", "trimesh")


def _machine() -> dict:
    from bench.common import machine

    return machine()


def _have_mitsuba() -> bool:
    try:
        import mitsuba  # noqa: F401

        return True
    except Exception:
        return False


def _each(runs: list[dict]) -> str:
    """' (median of n: a, b, c)' for several warm starts, '' for one."""
    if len(runs) < 2:
        return ""
    return f" (median of {len(runs)}: " + ", ".join(f"{r['time_to_first_pass_seconds']:.2f}" for r in runs) + ")"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cpu", choices=("cpu", "gpu", "auto"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--spp", type=int, default=64)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed renders per renderer and round")
    ap.add_argument("--rounds", type=int, default=2, help="alternations ours / Mitsuba")
    ap.add_argument("--warm-starts", type=int, default=3,
                    help="processes timed from start to first pass on the warm cache; the median is reported")
    ap.add_argument("--mesh-tris", type=int, default=100_000, help="triangles of the mesh scene (0: skip)")
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE if DEFAULT_REFERENCE.exists() else None)
    ap.add_argument("--make-reference", type=int, default=0, metavar="SPP",
                    help="when no --reference of this size is given, render one with the first Mitsuba variant at SPP "
                         "(box filter, its own seeds) so that RMSE can be reported at any size")
    ap.add_argument("--no-mitsuba", action="store_true")
    ap.add_argument("--mitsuba-variants", default="llvm_ad_rgb,scalar_rgb",
                    help="comma-separated; the first is the main rival (e.g. cuda_ad_rgb,llvm_ad_rgb on a GPU)")
    from bench.common import RESULTS, run_child  # RESULTS: bench/results in a checkout, ./bench_results when installed

    ap.add_argument("--out", type=Path, default=RESULTS / "pathtracer.json")
    a = ap.parse_args(argv)

    import render

    ref = render.read_image(a.reference) if a.reference else None
    if ref is not None and ref.shape[:2] != (a.size, a.size):
        print(f"reference {a.reference} is {ref.shape[1]}x{ref.shape[0]}, not {a.size}^2: RMSE skipped")
        ref = None
    tmp = Path(tempfile.mkdtemp(prefix="trirender_bench_"))
    variants = [v for v in a.mitsuba_variants.split(",") if v]
    have_mi = not a.no_mitsuba and _have_mitsuba()
    ref_name = str(a.reference) if ref is not None else None
    if ref is None and a.make_reference and have_mi and variants:
        save = str(tmp / "reference.npy")
        try:
            run_child(MITSUBA_CHILD, {"size": a.size, "spp": a.make_reference, "depth": a.depth, "variant": variants[0],
                                      "repeats": 1, "save": save, "seed_offset": 1000})
            ref = np.load(save)
            ref_name = f"mitsuba {variants[0]}, {a.make_reference} spp, box filter (rendered in this run)"
        except RuntimeError as e:
            print(f"reference render failed: {str(e)[-300:]}")
    settings = {"scene": "cornell_box", "size": a.size, "spp": a.spp, "max_depth": a.depth, "backend": a.backend,
                "reference": ref_name, "repeats": a.repeats, "rounds": a.rounds,
                "pixel_filter": "box"}
    res: dict = {"machine": _machine(), "versions": _versions(), "settings": settings}
    base = {"size": a.size, "spp": a.spp, "depth": a.depth, "backend": a.backend}

    # cold and warm start: a fresh offline cache, then the same cache in a second process
    cache = tmp / "ti_cache"
    env = {"TI_OFFLINE_CACHE_FILE_PATH": str(cache)}
    starts = {}
    for name, n in (("cold", 1), ("warm", max(1, a.warm_starts))):  # in progressive passes, as `trirender render`
        runs = []                                                    # renders (interruptible)
        for _ in range(n):
            m = run_child(OURS_CHILD, {**base, "repeats": 1, "interruptible": True}, env)[0]
            runs.append({"compile_seconds": m["compile_seconds"],
                         "time_to_first_pass_seconds": m["process_to_call_seconds"] + m["first_pass_seconds"],
                         "first_pass_in_call_seconds": m["first_pass_seconds"]})
        # one process's start moves by +-0.3 s with this host's hour: the median of several, and each
        starts[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        starts[name]["runs"] = runs
    res["start"] = starts

    one_path = "ours, one path per thread"
    runs = {"ours": [], **({one_path: []} if a.backend == "cpu" else {}), **{f"mitsuba {v}": [] for v in variants}}
    images = {}
    for rnd in range(a.rounds):
        save = str(tmp / "ours.npy") if rnd == 0 else None
        ms = run_child(OURS_CHILD, {**base, "repeats": a.repeats, "save": save}, env)
        runs["ours"] += [m["paths_per_second"] for m in ms]
        if save:
            images["ours"] = np.load(save)
            res["ours_meta"] = ms[0]
        if one_path in runs:  # the CPU's other kernel (render.pt_kernels), for the packet kernel's gain
            save = str(tmp / "one_path.npy") if rnd == 0 else None
            ms = run_child(OURS_CHILD, {**base, "repeats": a.repeats, "save": save, "one_path": True}, env)
            runs[one_path] += [m["paths_per_second"] for m in ms]
            if save:
                images[one_path] = np.load(save)
        if have_mi:
            for variant in variants:
                if variant == "scalar_rgb" and rnd > 0:
                    continue  # slow and steady: one round is enough
                save = str(tmp / f"{variant}.npy") if rnd == 0 else None
                reps = 1 if variant == "scalar_rgb" else a.repeats
                try:
                    ms = run_child(MITSUBA_CHILD, {**base, "variant": variant, "repeats": reps, "save": save})
                except RuntimeError as e:
                    print(f"mitsuba {variant} failed: {str(e)[-300:]}")
                    continue
                runs[f"mitsuba {variant}"] += [m["paths_per_second"] for m in ms[1:]]
                res.setdefault("mitsuba_first_render_seconds", {})[variant] = ms[0]["seconds"]
                if save:
                    images[f"mitsuba {variant}"] = np.load(save)

    rows = []
    ours_pps = float(np.median(runs["ours"]))
    for name, pps in runs.items():
        if not pps:
            continue
        med = float(np.median(pps))
        img = images.get(name)
        row = {"renderer": name, "paths_per_second": med, "paths_per_second_all": pps,
               "ratio_ours_over_this": ours_pps / med,
               "rmse": _rmse(img, ref) if (img is not None and ref is not None) else None,
               "mean_rgb": img.reshape(-1, 3).mean(0).tolist() if img is not None else None}
        rows.append(row)
    res["cornell"] = rows

    if a.mesh_tris:
        mesh = {**base, "repeats": max(1, a.repeats - 1), "mesh_tris": a.mesh_tris, "bench_dir": str(ROOT / "bench")}
        ms = run_child(OURS_CHILD, mesh, env)
        res["mesh"] = {"triangles": ms[0]["triangles"], "bvh_nodes": ms[0]["bvh_nodes"], "bvh_depth": ms[0]["bvh_depth"],
                       "bvh_build_seconds": ms[0]["bvh_seconds"], "kernel": ms[0].get("kernel"),
                       "paths_per_second": float(np.median([m["paths_per_second"] for m in ms])),
                       "cornell_paths_per_second": ours_pps}
        if a.backend == "cpu":
            ms = run_child(OURS_CHILD, {**mesh, "one_path": True}, env)
            res["mesh"]["one_path_paths_per_second"] = float(np.median([m["paths_per_second"] for m in ms]))
        if have_mi:
            import trimesh

            ply = tmp / "blob.ply"
            v, faces = mesh_arrays(a.mesh_tris)
            trimesh.Trimesh(v, faces, process=False).export(ply)
            try:
                mm = run_child(MITSUBA_CHILD, {**base, "variant": variants[0], "repeats": max(1, a.repeats - 1),
                                               "mesh_ply": str(ply)})
                res["mesh"]["mitsuba_variant"] = variants[0]
                res["mesh"]["mitsuba_paths_per_second"] = float(np.median([m["paths_per_second"] for m in mm[1:]]))
            except RuntimeError as e:
                print(f"mitsuba mesh scene failed: {str(e)[-300:]}")
    res["machine"]["load_average_at_end"] = list(os.getloadavg())

    # --- table ---
    print(f"\nCornell box {a.size}x{a.size}, {a.spp} spp, max_depth {a.depth}, box filter — "
          f"{res['machine']['cpu']}, backend {a.backend}")
    print(f"{'renderer':<28}{'M paths/s':>11}{'ours / this':>13}{'RMSE':>9}")
    for r in rows:
        rm = f"{r['rmse']:.4f}" if r["rmse"] is not None else "-"
        print(f"{r['renderer']:<28}{r['paths_per_second'] / 1e6:>11.3f}{r['ratio_ours_over_this']:>13.2f}{rm:>9}")
    s = res["start"]
    print(f"compile: cold {s['cold']['compile_seconds']:.2f} s, warm {s['warm']['compile_seconds']:.2f} s; "
          f"process start to first pass: cold {s['cold']['time_to_first_pass_seconds']:.2f} s, "
          f"warm {s['warm']['time_to_first_pass_seconds']:.2f} s" + _each(s["warm"]["runs"]))
    if "mesh" in res:
        m = res["mesh"]
        print(f"mesh scene: {m['triangles']} triangles, BVH {m['bvh_nodes']} nodes depth {m['bvh_depth']} "
              f"built in {m['bvh_build_seconds']:.2f} s; {m['paths_per_second'] / 1e6:.3f} M paths/s "
              f"({m['paths_per_second'] / ours_pps:.2f}x the 36-triangle box)")
        if "one_path_paths_per_second" in m:
            op = m["one_path_paths_per_second"]
            print(f"  ours, one path per thread: {op / 1e6:.3f} M paths/s (packets / one path {m['paths_per_second'] / op:.2f})")
        if "mitsuba_paths_per_second" in m:
            mp = m["mitsuba_paths_per_second"]
            print(f"  mitsuba {m['mitsuba_variant']} on the mesh scene: {mp / 1e6:.3f} M paths/s (ours / mitsuba "
                  f"{m['paths_per_second'] / mp:.2f})")
    print(f"load average start {res['machine']['load_average_at_start']}, end {res['machine']['load_average_at_end']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")
    return res


if __name__ == "__main__":
    main()
