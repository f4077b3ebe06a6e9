"""Training loop for the GQN: Adam on the negative ELBO with sigma and learning-rate annealing.

    summary = train("data/rooms", "runs/small", PRESETS["small"], steps=10_000)

Reads top to bottom: set up processes and device -> resolve config -> data -> model and optimizer
-> resume -> loop (schedules, forward, non-finite check, backward, step, logs, checkpoints).

A run folder holds ``config.json`` (the resolved config), ``run.json`` (data folder and the
dataset's identity, which images, whether the validation batch is held out, device, versions),
``checkpoint.pt`` (the latest, written atomically), ``metrics.csv``, ``tb/`` (TensorBoard),
``mean_image.npy`` (the training set's mean image, for the evaluation baseline) and ``val.png``
(the latest validation grid: context view, prediction, ground truth per row).

The dataset is verified (checksums) and checked against the batch size before anything is written.
A resumed run refuses a dataset whose identity (``neural.data.dataset_identity``) is not the one it
started on; the same dataset moved to another folder is accepted.

Resuming (``resume=True``) restores weights, Adam state, the step and every process's RNG state,
and the data order continues from the same (epoch, batch), so a resumed CPU run gives the same
weights bit for bit as an uninterrupted one. Under ``torchrun`` each process trains on its own
batches (global batch index ``step * world + rank``) and gradients are averaged by
DistributedDataParallel (gloo on CPU, NCCL on GPU); every checkpoint first checks that the
processes' weights are still equal.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import platform
import re
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from render.ctrl_c import ctrl_c_requests
from render.image_io import atomic_path, write_json_atomic

from .data import (GQNBatches, SceneViews, dataset_identity, identity_diff, images_kind, make_loader,
                   same_scenes, to_model)
from .model import GQN, PRESETS, GQNConfig, lr_at, sigma_at

CHECKPOINT = "checkpoint.pt"
CSV_FIELDS = ("step", "epoch", "loss", "nll", "kl", "sigma", "lr", "val_psnr", "it_per_s", "images_per_s", "elapsed_s")


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop runs (not part of the model config, not needed to resume)."""

    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool | None = None
    """bf16 autocast; None: on for CUDA, off on the CPU (CPU runs stay bit-reproducible)."""
    channels_last: bool = False
    """Channels-last memory format for the convolutions (GPU)."""
    compile: bool = False
    """``torch.compile`` the model."""
    num_workers: int = 0
    """DataLoader worker processes."""
    progress: bool = True
    """tqdm progress bar (rank 0)."""
    tensorboard: bool = True
    """Write TensorBoard event files to RUN_DIR/tb (skipped with a warning if tensorboard is missing)."""
    time_limit_s: float = 0.0
    """Stop (with a checkpoint) after this many seconds of training (0: no limit)."""
    threads: int = 0
    """torch CPU threads (0: torch's default). On a busy shared CPU, 1 is often fastest."""


def resolve_config(preset: str = "small", overrides: dict[str, Any] | None = None) -> GQNConfig:
    """A preset with field overrides applied; ValueError names an unknown preset or field."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[preset].override(**(overrides or {})) if overrides else PRESETS[preset]


def parse_overrides(items: list[str], base: GQNConfig) -> dict[str, Any]:
    """``["steps=8", "shared_core=true"]`` -> typed dict, typed by the current value of each field."""
    out: dict[str, Any] = {}
    fields = base.to_dict()
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        cur = fields[key]
        try:
            if isinstance(cur, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[key] = value.lower() in ("true", "1")
            elif isinstance(cur, int):
                out[key] = int(float(value))
            elif isinstance(cur, float):
                out[key] = float(value)
            elif isinstance(cur, list):
                out[key] = tuple(float(x) for x in value.strip("()[]").split(","))
            else:
                out[key] = value
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} expects a {type(cur).__name__} like {cur!r}") from None
    return out


# --- processes and devices ----------------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    """The torch device of a --device value (auto, cpu, cuda or cuda:N), refused by name when it is
    not one of those or names a GPU that torch does not see."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise TrainingError(f"device {device!r}; expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise TrainingError(f"device {device!r}; torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)


def _dist_setup(device: str) -> tuple[int, int, torch.device]:
    """(rank, world, device); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:  # "cuda" or "auto": under torchrun each process its own GPU, else the current one
            dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True  # fixed 64x64 shapes: let cuDNN pick its fastest kernels
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def _all_max(flags: list[float], dev: torch.device, world: int) -> list[float]:
    """Element-wise max over processes (so every process stops at the same step)."""
    if world == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _replicas_agree(model: torch.nn.Module, world: int) -> bool:
    """Whether every process holds the same weights, bit for bit (DistributedDataParallel starts
    them equal and averages the gradients, so they stay equal; a missing all-reduce, or one process
    skipping a step, shows here). Compares each parameter's float64 sum across processes."""
    if world == 1:
        return True
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    high, low = sums.clone(), sums.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return bool(torch.equal(high, low))


def _rng_states(world: int, log_acc: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Every process's RNG states (and the loss sums it has gathered since the last log row, so a
    resumed run logs the rows an uninterrupted one would), one dict per process."""
    own = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
           "log_acc": dict(log_acc) if log_acc is not None else None}
    if world == 1:
        return [own]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, own)
    return states


# --- data ---------------------------------------------------------------------------------------
def steps_per_epoch(views: SceneViews, cfg: GQNConfig, world: int = 1) -> int:
    """Steps in one epoch of ``views``; TrainingError when the dataset holds fewer scenes than one batch
    per process."""
    per_epoch = GQNBatches(views, cfg.batch_size, cfg.max_context, cfg.seed).__len__() // world
    if per_epoch < 1:
        raise TrainingError(f"{views.root}: {views.num_scenes} scenes is fewer than one batch of {cfg.batch_size} per "
                            f"process ({world} process(es)); lower --batch or generate more scenes")
    return per_epoch


def batches(data: str | Path, cfg: GQNConfig, start_step: int, rank: int = 0, world: int = 1,
            num_workers: int = 0, verify: bool = True,
            images: str = "images") -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(epoch, batch) pairs for steps start_step, start_step + 1, ... forever.

    Step s uses global batch ``s * world + rank``; an epoch holds ``len(dataset) // world`` steps.
    With one process this is ``make_loader(epoch=e, start_batch=b)``, epoch after epoch.
    images: the shard array to read (``images`` or ``images_path``).
    """
    views = SceneViews(data, verify=verify, images=images)
    per_epoch = steps_per_epoch(views, cfg, world)
    epoch, b = divmod(start_step, per_epoch)
    while True:
        if world == 1:
            loader = make_loader(data, cfg.batch_size, cfg.max_context, cfg.seed, num_workers, epoch=epoch,
                                 start_batch=b, verify=False, images=images)
        else:
            ds = GQNBatches(views, cfg.batch_size, cfg.max_context, cfg.seed)
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=None, num_workers=num_workers,
                                sampler=range(b * world + rank, per_epoch * world, world))
        # Making a DataLoader iterator draws a seed from the global torch RNG; fork it so that the
        # latent draws do not depend on where a run was resumed (a resumed run makes one more).
        with torch.random.fork_rng(devices=[]):
            it = iter(loader)
        for batch in it:
            yield epoch, batch
        epoch, b = epoch + 1, 0


def mean_image(data: str | Path, max_scenes: int = 2000, images: str = "images") -> np.ndarray:
    """The training set's mean image, float32 (H, W, 3) in [0, 1] (of the stored sRGB values), over
    every view of up to ``max_scenes`` evenly spaced scenes."""
    views = SceneViews(data, verify=False, images=images)
    scenes = np.unique(np.linspace(0, views.num_scenes - 1, min(max_scenes, views.num_scenes)).astype(int))
    acc = np.zeros((views.image_size, views.image_size, 3), np.float64)
    all_views = np.arange(views.views)
    for chunk in np.array_split(scenes, max(1, len(scenes) // 64)):
        imgs, _ = views.gather(chunk, np.tile(all_views, (len(chunk), 1)))
        acc += imgs.reshape(-1, *acc.shape).astype(np.float64).sum(0)
    return (acc / (len(scenes) * views.views * 255.0)).astype(np.float32)


def check_image_size(data: str | Path, cfg: GQNConfig, error: type[Exception] = ValueError) -> None:
    """Refuse a dataset whose images are not the model's size."""
    size = SceneViews(data, verify=False).image_size
    if size != cfg.image_size:
        raise error(f"{data}: images are {size}x{size}; the model expects {cfg.image_size}x{cfg.image_size} "
                    f"(trirender dataset generate --size {cfg.image_size})")


def validation_batch(data: str | Path, cfg: GQNConfig, size: int = 8, images: str = "images") -> dict[str, torch.Tensor]:
    """A fixed batch (independent of the training order): ``size`` scenes, 3 context views (or fewer)."""
    views = SceneViews(data, verify=False, images=images)
    ds = GQNBatches(views, min(size, views.num_scenes), cfg.max_context, seed=cfg.seed + 7919,
                    fixed_context=min(3, views.views - 1))
    return ds[0]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of (B, 3, H, W) tensors in [0, 1]."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


# --- checkpoints --------------------------------------------------------------------------------
def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path`` (``render.image_io.atomic_path``: the usual
    permissions, removed on error), fsynced before it is renamed over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of a run folder; TrainingError naming the file when it is missing or unreadable."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint; expected a run folder written by `trirender train`")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
        if isinstance(exc, RuntimeError) and "CUDA" in str(exc):
            raise  # a device problem, not the file's
        raise TrainingError(f"{path}: cannot be read, truncated or corrupt ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); restore it from a copy, or start the "
                            "run again in another --out") from None
    if not isinstance(ck, dict) or not {"model", "step", "config"} <= set(ck):
        raise TrainingError(f"{path}: not a checkpoint written by `trirender train` (expected model, step and config)")
    return ck


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A run folder's JSON file, TrainingError naming it when it is not valid JSON."""
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{path}: cannot be read, not valid JSON ({exc}); expected the {what} written by "
                            "`trirender train`") from None
    if not isinstance(d, dict):
        raise TrainingError(f"{path}: expected a JSON object (the {what} written by `trirender train`)")
    return d


def read_config(run_dir: str | Path) -> GQNConfig:
    """A run folder's resolved config (config.json); TrainingError naming the file when it is missing
    (nothing to resume) or not a config."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainingError(f"{path}: missing; nothing to resume (train without --resume first)")
    try:
        return GQNConfig.from_dict(_read_json(path, "resolved config"))
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"{path}: {exc}; expected the resolved config written by `trirender train`") from None


def config_changes(old: GQNConfig, new: GQNConfig) -> list[str]:
    """The fields of ``new`` that differ from ``old``, as ``"FIELD OLD -> NEW"`` (empty when equal)."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k} {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's run.json ({} when there is none)."""
    path = Path(run_dir) / "run.json"
    return _read_json(path, "run record") if path.is_file() else {}


def _trim_csv(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _grid(ctx: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """uint8 (rows * 64, 3 * 64, 3): per row the first context view, the prediction, the truth."""
    rows = torch.cat([ctx, pred, truth], dim=3)                        # (B, 3, 64, 3*64)
    img = rows.permute(0, 2, 3, 1).reshape(-1, rows.shape[3], 3)        # (B*64, 3*64, 3)
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


# --- the loop -----------------------------------------------------------------------------------
def train(data: str | Path, out: str | Path, config: GQNConfig | None = None, steps: int | None = None,
          resume: bool = False, runtime: Runtime = Runtime(), val_data: str | Path | None = None,
          on_step: Callable[[int], None] | None = None, images: str | None = None) -> dict[str, Any]:
    """Train a GQN on the dataset folder ``data`` into the run folder ``out``.

    config: the resolved config (ignored when resuming: the run's own config.json is used).
    steps: total steps to reach (default ``config.steps_total``); resuming with a larger value extends
        the run. on_step: called with the step number after every completed step (tests, callbacks).
    val_data: the dataset of the fixed validation batch (default ``data``: then the batch holds
        training scenes, and ``val_psnr`` measures fit, not generalisation; run.json says which).
    images: ``raster`` or ``path``, which of a dataset's images to train on (a ``--renderer both``
        dataset holds both); None: the dataset's own ``images`` (resuming: what the run trained on).
    Returns a summary: steps, final loss terms, val PSNR (``val_held_out``: whether its batch was
    held out), seconds, it/s, interrupted.
    Stops with TrainingError on a non-finite loss, leaving the last good checkpoint in place.
    A first Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and returns.
    """
    rank, world, dev = _dist_setup(runtime.device)
    if runtime.threads > 0:
        torch.set_num_threads(runtime.threads)
    out = Path(out)
    main = rank == 0
    ckpt_path = out / CHECKPOINT
    before: dict[str, Any] = {}  # the run.json of the run being resumed
    if resume:
        cfg = read_config(out)
        before = read_run_info(out)
        if images is None:
            images = before.get("images")
        elif before.get("images") and images != before["images"]:
            raise TrainingError(f"--images {images}: this run trained on {before['images']} images "
                                f"({out}/run.json); resume with --images {before['images']}, or start a new run")
    else:
        if config is None:
            raise TrainingError("no config given; pass a preset's config")
        cfg = config.checked()
        if ckpt_path.exists():
            raise TrainingError(f"{ckpt_path}: already exists; pass --resume to continue this run, or another --out")

    # --- the data, checked before anything is written ---
    for folder in (data, val_data) if val_data else (data,):
        check_image_size(folder, cfg, TrainingError)  # not at the first validation
    views = SceneViews.of_kind(data, images)  # the checksums, once
    key = views.images_key
    identity = dataset_identity(views.manifest)
    old = before.get("dataset")
    if old and old != identity:
        raise TrainingError(f"{data}: not the dataset this run trained on ({before.get('data')}, {out}/run.json): "
                            f"{'; '.join(identity_diff(old, identity))}; resume with that dataset (moved is fine), "
                            "or start a new run in another --out")
    steps_per_epoch(views, cfg, world)
    val_key, val_identity = key, identity
    if val_data:
        val_views = SceneViews.of_kind(val_data, images_kind(views.manifest, key))
        val_key, val_identity = val_views.images_key, dataset_identity(val_views.manifest)
    val_held_out = bool(val_data) and same_scenes(identity, val_identity) is False
    if main and val_data and not val_held_out:
        print(f"note: --val {val_data} has the family and seed of {data}, so its scenes are training scenes: "
              "val_psnr will not be held out (generate validation data with another --seed)")
    if main and cfg.max_context > views.views - 1:
        print(f"note: max_context {cfg.max_context}, but {data} has {views.views} views per scene (one is the "
              f"query), so training uses at most {views.views - 1} context views")
    total = int(steps if steps is not None else cfg.steps_total)
    ck = None
    if resume:  # the checkpoint is checked before run.json is rewritten: a refused resume changes nothing
        if not ckpt_path.is_file():
            raise TrainingError(f"{ckpt_path}: missing, the run stopped before its first checkpoint; start it again "
                                "without --resume")
        ck = load_checkpoint(out, dev)
        if int(ck["step"]) >= total:
            raise TrainingError(f"{ckpt_path}: the run is already at step {int(ck['step'])}; pass --steps above "
                                f"{int(ck['step'])} to train further (the target is {total})")
        if len(ck["rng"]) != world:
            raise TrainingError(f"{ckpt_path}: saved by {len(ck['rng'])} process(es), resumed with {world}; "
                                "resume with the same number of processes")
    # TensorBoard says what the batch is; a resumed run keeps the tag it logged under (runs from
    # before the tags were split logged every batch as "val"), so its curve stays one curve
    val_tag = "val" if val_held_out else "train_batch"
    if resume:
        val_tag = before.get("validation", {}).get("tensorboard_tag", "val")
    amp = runtime.amp if runtime.amp is not None else dev.type == "cuda"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json_atomic(out / "config.json", cfg.to_dict(), sort_keys=True)
            np.save(out / "mean_image.npy", mean_image(data, images=key))
        write_json_atomic(out / "run.json", sort_keys=True, data={
            "data": str(Path(data).resolve()), "dataset": identity, "images": images_kind(views.manifest, key),
            "dataset_render_settings": views.manifest.get("render_settings"),
            "val_data": str(Path(val_data).resolve()) if val_data else None,
            "validation": {"held_out": val_held_out, "dataset": val_identity if val_data else None,
                           "tensorboard_tag": val_tag,
                           "meaning": "val_psnr: PSNR of generated views of a fixed batch of "
                                      + ("held-out scenes (--val)" if val_held_out else "training scenes (fit, not "
                                         "generalisation)")},
            "steps": total,
            "device": str(dev), "world_size": world, "threads": torch.get_num_threads(), "amp_bf16": amp, "channels_last": runtime.channels_last,
            "compile": runtime.compile, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cuda_device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None})

    # --- model, optimizer, resume ---
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    model = GQN(cfg).to(dev)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_start, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                           fused=dev.type == "cuda")
    step = 0
    before_s = 0.0  # training time of the earlier sessions of a resumed run (metrics.csv's elapsed_s goes on)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        before_s = float(ck.get("elapsed_s", 0.0))
        states = ck["rng"]
        torch.set_rng_state(states[rank]["torch"])
        if dev.type == "cuda" and states[rank]["cuda"] is not None:
            torch.cuda.set_rng_state_all(states[rank]["cuda"])
        if main:
            _trim_csv(out / "metrics.csv", step)
    else:
        torch.manual_seed(cfg.seed * 1_000_003 + 1 + rank)  # each process its own latent draws
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    fwd = torch.compile(ddp) if runtime.compile else ddp

    def checkpoint() -> None:
        states = _rng_states(world, acc)
        if not _replicas_agree(model, world):
            raise TrainingError(f"the {world} processes' weights differ at step {step}: their gradients were not "
                                "averaged alike; the checkpoint is not written (the last one stays)")
        if main:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                         "config": cfg.to_dict(), "rng": states,
                         "elapsed_s": before_s + time.perf_counter() - t_start}, ckpt_path)

    # --- logs ---
    writer = None
    if main and runtime.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            # a fresh start hides every step an earlier, dead run logged here (nothing is deleted)
            writer = SummaryWriter(str(out / "tb"), purge_step=step if resume else 0)
        except ImportError:
            print("warning: tensorboard is not installed (pip install tensorboard); logging to metrics.csv only")
    csv_file = None
    if main:  # a fresh start replaces the rows of a run that died before its first checkpoint
        new = not resume or not (out / "metrics.csv").is_file()
        csv_file = open(out / "metrics.csv", "w" if new else "a", newline="")
        csv_writer = csv.DictWriter(csv_file, CSV_FIELDS)
        if new:
            csv_writer.writeheader()
    val = to_model(validation_batch(val_data or data, cfg, images=val_key), dev) if main else None

    def validate() -> tuple[float, np.ndarray]:
        model.eval()
        g = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        with torch.no_grad(), _autocast(dev, amp):
            pred = model.generate(val["context_images"], val["context_viewpoints"], val["query_viewpoint"], generator=g)
        model.train()
        return float(psnr(pred, val["query_image"]).mean()), _grid(val["context_images"][:, 0], pred, val["query_image"])

    # Ctrl-C: finish the step, checkpoint, return. A second Ctrl-C interrupts at once.
    stop = {"requested": False}  # set by the time limit too
    ctrl_c = ExitStack()
    presses = ctrl_c.enter_context(ctrl_c_requests())

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, disable=not (main and runtime.progress), unit="it", dynamic_ncols=True,
               desc="train")
    acc = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "n": 0}  # loss sums since the last log row
    if ck is not None and ck["rng"][rank].get("log_acc"):  # checkpoints from before it was saved have none
        acc = dict(ck["rng"][rank]["log_acc"])
    t_start = t_log = time.perf_counter()
    steps_at_log = step
    last = {"loss": math.nan, "nll": math.nan, "kl": math.nan, "val_psnr": math.nan}
    interrupted = False
    data_iter = batches(data, cfg, step, rank, world, runtime.num_workers, verify=False, images=key)
    model.train()
    try:
        while step < total:
            epoch, batch = next(data_iter)
            x = to_model(batch, dev)
            if runtime.channels_last:
                x["query_image"] = x["query_image"].contiguous(memory_format=torch.channels_last)
            sigma, lr = sigma_at(cfg, step), lr_at(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            sigma_arg = sigma
            if runtime.compile:  # one graph for the whole run: sigma as a tensor (a float would be baked
                # in, and every annealed value recompile) and the number of context views K marked dynamic
                sigma_arg = torch.tensor(sigma, device=dev)
                torch._dynamo.mark_dynamic(x["context_images"], 1)
                torch._dynamo.mark_dynamic(x["context_viewpoints"], 1)
            with _autocast(dev, amp):
                res = fwd(x["context_images"], x["context_viewpoints"], x["query_image"], x["query_viewpoint"],
                          sigma_arg)
            loss = res["loss"]
            bad, stop_now = _all_max([float(not torch.isfinite(loss).item()), float(stop["requested"] or bool(presses))], dev, world)
            if bad:
                raise TrainingError(
                    f"non-finite loss at step {step + 1} (nll {res['nll'].item():.4g}, kl {res['kl'].item():.4g}, "
                    f"sigma {sigma:.3g}, lr {lr:.3g}); stopped. "
                    + (f"The last good checkpoint is kept: {ckpt_path} (step {load_checkpoint(out)['step']}). Try a "
                       "lower lr_start or grad_clip (edit config.json), then --resume."
                       if ckpt_path.is_file() else
                       "No checkpoint was written yet, so there is nothing to resume: start again without --resume, "
                       "with a lower lr_start (--set lr_start=...) or grad_clip (--set grad_clip=1)."))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            for k in ("loss", "nll", "kl"):
                acc[k] += float(res[k].detach())
            acc["n"] += 1
            bar.update(1)
            log_now = step % cfg.log_every == 0 or step == total  # the same steps in every process
            if log_now:
                if world > 1:  # the mean over every process's batches, not rank 0's alone
                    sums = torch.tensor([acc["loss"], acc["nll"], acc["kl"]], dtype=torch.float64, device=dev)
                    dist.all_reduce(sums)
                    acc.update(loss=sums[0].item() / world, nll=sums[1].item() / world, kl=sums[2].item() / world)
                for k in ("loss", "nll", "kl"):
                    last[k] = acc[k] / acc["n"]
            if main and log_now:
                now = time.perf_counter()
                rate = (step - steps_at_log) / max(now - t_log, 1e-9)
                row = {"step": step, "epoch": epoch, **{k: f"{last[k]:.6g}" for k in ("loss", "nll", "kl")},
                       "sigma": f"{sigma:.6g}", "lr": f"{lr:.6g}", "val_psnr": "", "it_per_s": f"{rate:.4g}",
                       "images_per_s": f"{rate * cfg.batch_size * world:.4g}", "elapsed_s": f"{before_s + now - t_start:.1f}"}
                if step % cfg.val_every == 0 or step == total:
                    last["val_psnr"], grid = validate()
                    row["val_psnr"] = f"{last['val_psnr']:.4f}"
                    import imageio.v3 as iio

                    iio.imwrite(out / "val.png", grid)
                    if writer:
                        writer.add_scalar(f"{val_tag}/psnr", last["val_psnr"], step)
                        writer.add_image(f"{val_tag}/context_prediction_truth", grid, step, dataformats="HWC")
                csv_writer.writerow(row)
                csv_file.flush()
                if writer:
                    for k in ("loss", "nll", "kl"):
                        writer.add_scalar(f"train/{k}", last[k], step)
                    writer.add_scalar("train/sigma", sigma, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/it_per_s", rate, step)
                bar.set_postfix(loss=f"{last['loss']:.1f}", kl=f"{last['kl']:.1f}", sigma=f"{sigma:.2f}")
                t_log, steps_at_log = now, step
            if log_now:
                acc = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "n": 0}
            if step % cfg.checkpoint_every == 0 and step < total:
                checkpoint()
            if on_step is not None:
                on_step(step)
            if runtime.time_limit_s and time.perf_counter() - t_start > runtime.time_limit_s:
                stop["requested"] = True  # every process has the same clock budget; MAX-reduced next step
                if world == 1:
                    stop["time_limit"] = True
            if stop_now or (stop["requested"] or presses) and world == 1:
                interrupted = True
                break
        if step >= total or interrupted:
            checkpoint()
        if main and interrupted:  # stopped between log rows: report this session's last steps and a validation
            for k in ("loss", "nll", "kl"):
                if acc["n"]:
                    last[k] = acc[k] / acc["n"]
            if math.isnan(last["val_psnr"]):
                last["val_psnr"] = validate()[0]
    finally:
        bar.close()
        ctrl_c.close()
        if writer:
            writer.close()
        if csv_file:
            csv_file.close()
    elapsed = time.perf_counter() - t_start
    return {"steps": step, "interrupted": interrupted and not stop.get("time_limit"),
            "time_limit_reached": bool(stop.get("time_limit")), "seconds": elapsed, **last,
            "val_held_out": val_held_out, "run_dir": str(out), "world_size": world}


def _autocast(dev: torch.device, amp: bool):
    return torch.autocast(dev.type, dtype=torch.bfloat16) if amp else nullcontext()


def build_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GQN, GQNConfig, int]:
    """The trained model of a run folder (eval mode), its config and its step."""
    run_dir = Path(run_dir)
    ck = load_checkpoint(run_dir, device)
    cfg = GQNConfig.from_dict(ck["config"])
    model = GQN(cfg).to(device)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, cfg, int(ck["step"])


def main() -> None:  # ``python -m neural.train DATA OUT [preset] [steps]`` (torchrun entry for tests)
    import sys

    data, out = sys.argv[1], sys.argv[2]
    preset = sys.argv[3] if len(sys.argv) > 3 else "tiny"
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else None
    overrides = parse_overrides(sys.argv[5:], PRESETS[preset]) if len(sys.argv) > 5 else {}
    summary = train(data, out, resolve_config(preset, overrides), steps=steps, runtime=Runtime(progress=False, threads=int(os.environ.get("GQN_THREADS", "0")),
                                    time_limit_s=float(os.environ.get("GQN_TIME_LIMIT", "0"))))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
