"""The neural verbs of the ``trirender`` console script (train, eval, novel), registered by cli.py.

torch is imported inside the commands only, so ``import trirender.cli`` stays light and the commands
can set libgomp's GOMP_SPINCOUNT before torch loads it.
Under torchrun, run the console script itself:
``torchrun --nproc_per_node 2 $(which trirender) train DATA --out RUN``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer


@contextmanager
def _errors():
    """Turn the neural layer's errors about bad input into RenderError (one line, exit 2)."""
    from render.errors import RenderError
    from render.shards import ShardError

    try:
        yield
    except RenderError:
        raise
    except (ShardError, ValueError, FileNotFoundError) as exc:
        raise RenderError(str(exc)) from None
    except RuntimeError as exc:
        from neural.train import TrainingError

        if isinstance(exc, TrainingError):
            raise RenderError(str(exc)) from None
        raise


def _contexts(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}; expected comma-separated context sizes such as 1,3,5") from None
    if not ks or min(ks) < 1:
        raise typer.BadParameter(f"{text!r}; expected context sizes >= 1 such as 1,3,5")
    return ks


SPINCOUNT = 10_000  # GOMP_SPINCOUNT of the neural commands (see _short_spin)
# what `trirender train` writes into a run folder (neural.train's names, written out so that torch is not
# imported before _short_spin); eval, novel and compare --neural refuse to write over these, or over
# any other file already in the run folder or in a dataset folder they read (run_inputs)
RUN_FILES = ("config.json", "run.json", "checkpoint.pt", "metrics.csv", "mean_image.npy", "val.png")


def run_inputs(run: Path, data: Optional[Path], run_what: str = "a file of the run (RUN)") -> tuple:
    """(file, what it is) pairs for ``check_outputs(..., inputs=...)``: the run folder's files (train's,
    and whatever else is there, tb/ included) and the files of the --data dataset, two levels deep (a
    dataset keeps its arrays in shard-NNNNN/). run_what names the run folder in the refusal."""
    files = [(run / name, run_what) for name in RUN_FILES]
    for folder, what in ((run, run_what), (data, "a file of the --data dataset")):
        if folder is not None and folder.is_dir():
            files += [(p, what) for p in (*folder.glob("*"), *folder.glob("*/*")) if p.is_file()]
    return tuple(files)


def _short_spin() -> None:
    """Let torch's OpenMP threads spin only briefly before they sleep while waiting for work, unless the
    user has set OMP_WAIT_POLICY or GOMP_SPINCOUNT. libgomp's default (300,000 spins) collapses when
    another job takes a core: train --preset tiny on 2 cores with one busy ran 2.3x faster with 10,000,
    for 4% less on an idle machine; OMP_WAIT_POLICY=PASSIVE (no spinning) cost 45% there. libgomp reads
    the variable when it is loaded, so this runs before the command imports torch."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPINCOUNT)


Threads = typer.Option(0, min=0, help="torch CPU threads (0: torch's default, one per core; 1 is often fastest on "
                                       "a busy CPU).")


class ImageKind(str, Enum):  # a dataset's images: rasterized or path-traced (neural.data.IMAGE_KINDS)
    raster = "raster"
    path = "path"


def register(app: typer.Typer) -> None:
    """Add the neural verbs to ``app``."""

    @app.command("train", short_help="Train a GQN on a dataset (resumable).")
    def train_cmd(
        data: Path = typer.Argument(..., help="Dataset folder (trirender dataset generate)."),
        out: Path = typer.Option(..., "--out", help="Run folder: config, checkpoints, logs."),
        preset: Optional[str] = typer.Option(None, help="paper, small or tiny (default: small)."),
        steps: Optional[int] = typer.Option(None, min=1, help="Total steps to reach (default: the preset's steps_total)."),
        batch: Optional[int] = typer.Option(None, min=1, help="Scenes per step per process (default: the preset's)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
        set_: List[str] = typer.Option([], "--set", help="Override a config field, FIELD=VALUE (repeatable)."),
        minutes: float = typer.Option(0.0, min=0.0, help="Stop with a checkpoint after this many minutes (0: no limit)."),
        amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (default: on for CUDA)."),
        channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last memory format (GPU)."),
        compile_: bool = typer.Option(False, "--compile", help="torch.compile the model."),
        workers: int = typer.Option(0, min=0, help="DataLoader worker processes."),
        threads: int = Threads,
        val: Optional[Path] = typer.Option(None, help="Held-out dataset for the validation batch (default: a fixed batch "
                                                      "of DATA's training scenes, so val_psnr measures fit)."),
        images: Optional[ImageKind] = typer.Option(None, help="raster or path: which images of DATA to train on (a --renderer "
                                                         "both dataset holds both; default: DATA's own images, "
                                                         "resuming: the run's)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ):
        """Train a GQN on a dataset folder (resumable; torchrun for several processes)."""
        from .cli import check_out

        _short_spin()
        check_out(out, "--out", folder=True)
        with _errors():
            from neural.train import Runtime, config_changes, parse_overrides, read_config, resolve_config, train

            if not data.is_dir():
                raise typer.BadParameter(f"{data}: not a folder; expected a dataset made by `trirender dataset generate`")

            def resolved(base):
                overrides = parse_overrides(list(set_), base)
                if batch is not None:
                    overrides["batch_size"] = batch
                return base.override(**overrides) if overrides else base

            cfg = None
            if not resume:
                cfg = resolved(resolve_config(preset or "small"))
            elif set_ or batch is not None or preset is not None:
                # the command that started the run, given again with --resume, is accepted: what counts is
                # the config it resolves to (--set/--batch alone apply to the run's own config)
                run_cfg = read_config(out)
                changes = config_changes(run_cfg, resolved(resolve_config(preset) if preset else run_cfg))
                if changes:
                    more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
                    raise typer.BadParameter(
                        f"--preset/--set/--batch cannot change a run being resumed: {', '.join(changes[:4])}{more} "
                        f"(its {out / 'config.json'} -> this command's); resume without them or with the values "
                        "it started with, or start a new run in another --out")
            rt = Runtime(device=device, amp=amp, channels_last=channels_last, compile=compile_, num_workers=workers,
                         progress=progress, threads=threads, time_limit_s=minutes * 60.0)
            s = train(data, out, cfg, steps=steps, resume=resume, runtime=rt, val_data=val, images=images.value if images else None)
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            how = "interrupted" if s["interrupted"] else ("time limit" if s.get("time_limit_reached") else "done")
            which = ("held-out --val batch" if s["val_held_out"] else
                     "a fixed batch of training scenes, not held out: --val DIR for held-out")
            print(f"{how}: step {s['steps']}, loss {s['loss']:.1f} (nll {s['nll']:.1f}, kl {s['kl']:.2f}), "
                  f"val PSNR {s['val_psnr']:.2f} dB ({which}), {s['seconds']:.0f}s; run in {out}"
                  + ("; checkpoint written, continue with --resume" if s["interrupted"] else ""))
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        if s["interrupted"]:
            raise typer.Exit(130)  # as an interrupted command should (128 + SIGINT), after saving

    @app.command("eval", short_help="Score a model against nearest-view and mean-image baselines.")
    def eval_cmd(
        run: Path = typer.Argument(..., help="Run folder written by trirender train."),
        data: Path = typer.Option(..., "--data", help="Held-out dataset folder."),
        context: str = typer.Option("1,3,5", help="Context sizes, comma-separated."),
        samples: int = typer.Option(4, min=1, help="Prior samples per query (mean-of-N and best-of-N)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
        scenes: Optional[int] = typer.Option(None, min=1, help="Use only the first N scenes."),
        seed: int = typer.Option(0, min=0, help="Seed of the query/context choice and the samples."),
        device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
        images: Optional[ImageKind] = typer.Option(None, help="raster or path: which images of --data to score against "
                                                         "(default: what the run trained on)."),
        threads: int = Threads,
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (on stderr)."),
    ):
        """PSNR/SSIM of the model vs nearest-view and mean-image baselines, per context size."""
        from .cli import check_outputs

        _short_spin()
        ks = _contexts(context)
        check_outputs((json_out, "--json"), inputs=run_inputs(run, data))
        with _errors():
            import torch

            from neural.evaluate import evaluate, table
            from render.image_io import write_json_atomic

            if threads:
                torch.set_num_threads(threads)
            report = evaluate(run, data, ks, samples=samples, max_scenes=scenes, seed=seed, device=device,
                              images=images.value if images else None, progress=progress)
        used = report[f"context_{ks[0]}"]["scenes"]
        if report["meta"]["held_out_note"]:
            print(f"note: {report['meta']['held_out_note']}")
        if scenes is not None and used < scenes:
            print(f"note: --scenes {scenes}, but {data} holds {used}; evaluated all {used}")
        print(table(report))
        if json_out:
            write_json_atomic(json_out, report)
            print(f"wrote {json_out}")

    @app.command("novel", short_help="Render an orbit of novel views with a trained model.")
    def novel_cmd(
        run: Path = typer.Argument(..., help="Run folder written by trirender train."),
        out: Path = typer.Option(Path("orbit.gif"), "--out", help="The orbit GIF."),
        scene: Optional[str] = typer.Option(None, help="A scene file (.toml or mesh) or built-in family name."),
        data: Optional[Path] = typer.Option(None, help="A dataset folder (with --index)."),
        index: int = typer.Option(0, min=0, help="Scene index in --data."),
        context: int = typer.Option(3, min=1, help="Context views."),
        orbit_frames: int = typer.Option(36, "--orbit", min=1, help="Frames in the orbit."),
        samples: int = typer.Option(8, min=1, help="Prior samples per frame (mean shown, std as uncertainty)."),
        path_spp: int = typer.Option(64, min=0, help="Path tracer ground truth at this spp (0: off)."),
        strip_out: Optional[Path] = typer.Option(None, "--strip", help="Also write a PNG strip (every 6th frame)."),
        seed: int = typer.Option(0, min=0, help="Seed of the context views (--scene) and the samples."),
        device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N (the model; rendering stays where it is)."),
        threads: int = Threads,
    ):
        """Orbit GIF of novel views: generator beside rasterizer (and path tracer) and uncertainty."""
        from .cli import _load, check_outputs

        _short_spin()
        if (scene is None) == (data is None):
            raise typer.BadParameter("give exactly one of --scene SCENE or --data DIR --index I")
        outputs = ((out, "--out", (".gif",)), (strip_out, "--strip", (".png",)))
        check_outputs(*outputs, inputs=run_inputs(run, data))
        with _errors():
            import numpy as np
            import torch

            from neural import novel
            from neural.train import read_run_info, resolve_device

            if threads:
                torch.set_num_threads(threads)
            model, cfg = novel.load_run(run, resolve_device(device))
            size = cfg.image_size
            info = read_run_info(run)
            trained_on = info.get("images")  # raster or path (None: a run from before it was recorded)
            raster_options: dict = {}
            if scene is not None:
                s = _load(scene, seed, outputs)  # refuses an output naming a file the scene reads (a texture)
                # context views (and the raster ground truth) rendered as the run's training data was:
                # path-traced for a run trained on path-traced images, with its dataset's spp and depth
                settings = info.get("dataset_render_settings") or {}
                raster_options = novel.dataset_raster_options(size, settings)
                path = ({"spp": settings.get("spp", 64), "max_depth": settings.get("max_depth", 8)}
                        if trained_on == "path" else None)
                ctx, vps = novel.context_from_scene(s, context, size, seed, raster_options, path=path)
            else:
                from neural.data import SceneViews
                from render import scene_from_dict
                from render.shards import read_scene_records

                # the context views from the images the run trained on (a 'both' dataset holds two kinds)
                views = SceneViews.of_kind(data, trained_on)
                if not 0 <= index < views.num_scenes:
                    raise typer.BadParameter(f"--index {index}; {data} has scenes 0..{views.num_scenes - 1}")
                if context > views.views:
                    raise typer.BadParameter(f"--context {context}; {data} has {views.views} views per scene")
                shard = index // views.shard_size
                rec = read_scene_records(data, shard)[index - shard * views.shard_size]
                desc = rec["description"] if "description" in rec else rec
                settings = views.manifest.get("render_settings", {})
                if "shadow_map" in settings:  # re-render ground truth as the dataset was rendered
                    raster_options = novel.dataset_raster_options(size, settings)
                s = scene_from_dict(desc, source=f"{data}[{index}]")
                imgs, vp = views.gather(np.asarray([index]), np.arange(context)[None])
                ctx, vps = imgs[0], vp[0]
            o = novel.orbit(model, s, ctx, vps, frames=orbit_frames, samples=samples, path_spp=path_spp, seed=seed,
                            raster_options=raster_options)
            novel.write_gif(out, novel.figure_frames(o))
            if strip_out:
                import imageio.v3 as iio

                strip_out.parent.mkdir(parents=True, exist_ok=True)
                iio.imwrite(strip_out, novel.strip(o))
        print(f"wrote {out}" + (f" and {strip_out}" if strip_out else "") + f" ({orbit_frames} frames; mean PSNR vs raster {sum(o.psnr_raster) / len(o.psnr_raster):.2f} dB"
              + ("" if o.path is not None else f"; path tracer column left out: {o.path_note}") + ")")

