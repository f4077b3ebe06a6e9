"""Training: every preset runs, the tiny preset learns, resume is bit-identical, torchrun + gloo works,
a non-finite loss stops cleanly. Datasets are rooms_ring scenes rasterized into tmp folders."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neural.evaluate import evaluate
from neural.model import GQN, PRESETS
from neural.train import Runtime, TrainingError, load_checkpoint, train, validation_batch
from neural.data import to_model

from helpers import sigint_as_from_a_terminal
from neural_data import rooms_dataset

RT = Runtime(progress=False, threads=1, tensorboard=False)


@pytest.fixture(scope="module")
def rooms():
    """(train, held-out) rooms_ring datasets: 96 and 16 scenes, 6 views each, 64x64 raster."""
    return rooms_dataset(96, views=6, seed=0), rooms_dataset(16, views=6, seed=1)


@pytest.mark.parametrize("preset", ["paper", "small", "tiny"])
def test_every_preset_builds_and_runs_one_step(rooms, tmp_path, preset):
    cfg = PRESETS[preset].override(batch_size=1 if preset == "paper" else 2, max_context=2)
    s = train(rooms[0], tmp_path / preset, cfg, steps=1, runtime=Runtime(progress=False, threads=1,
                                                                         tensorboard=preset == "tiny"))
    assert s["steps"] == 1 and np.isfinite(s["loss"])
    saved = json.loads((tmp_path / preset / "config.json").read_text())
    assert saved == cfg.to_dict()  # the resolved config sits next to the outputs
    assert load_checkpoint(tmp_path / preset)["step"] == 1
    rows = list(csv.DictReader(open(tmp_path / preset / "metrics.csv")))
    assert rows[-1]["step"] == "1" and float(rows[-1]["sigma"]) == cfg.sigma_start
    if preset == "tiny":
        assert any((tmp_path / preset / "tb").iterdir()), "TensorBoard event file"
        assert (tmp_path / preset / "val.png").is_file()


def test_tiny_preset_learns_and_beats_the_mean_image(rooms, tmp_path):
    train_dir, test_dir = rooms
    cfg = PRESETS["tiny"]
    val = to_model(validation_batch(test_dir, cfg), "cpu")

    def fixed_sigma_loss(model):  # the ELBO at one sigma, so the annealing does not fake progress
        torch.manual_seed(0)
        with torch.no_grad():
            return float(model(val["context_images"], val["context_viewpoints"], val["query_image"],
                               val["query_viewpoint"], cfg.sigma_end)["loss"])

    torch.manual_seed(cfg.seed)
    before = fixed_sigma_loss(GQN(cfg).eval())  # the same initial weights train() starts from
    s = train(train_dir, tmp_path / "run", cfg, runtime=RT)
    from neural.train import build_model

    model, _, _ = build_model(tmp_path / "run")
    after = fixed_sigma_loss(model)
    assert after < 0.8 * before, (before, after)
    report = evaluate(tmp_path / "run", test_dir, contexts=(3,), samples=2)
    r = report["context_3"]
    assert r["model"]["psnr"] > r["mean_image"]["psnr"] + 0.3, r
    assert s["steps"] == cfg.steps_total


def _state(run: Path):
    ck = load_checkpoint(run)
    return ck["step"], ck["model"], ck["optimizer"]["state"], ck["rng"][0]["torch"]


def test_resume_after_an_interrupt_continues_bit_identically(rooms, tmp_path):
    # log rows every 2 steps, interrupted at step 3: the row of step 4 sums steps 3 and 4, across the resume
    cfg = PRESETS["tiny"].override(batch_size=4, checkpoint_every=2, log_every=2, val_every=3)
    train(rooms[0], tmp_path / "straight", cfg, steps=7, runtime=RT)

    def interrupt(step):  # a real SIGINT, handled like Ctrl-C: the step finishes, a checkpoint is written
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    first = train(rooms[0], tmp_path / "resumed", cfg, steps=7, runtime=RT, on_step=interrupt)
    assert first["interrupted"] and first["steps"] == 3
    assert math.isfinite(first["loss"]) and math.isfinite(first["val_psnr"])  # reported though stopped between logs
    assert load_checkpoint(tmp_path / "resumed")["step"] == 3
    before = load_checkpoint(tmp_path / "resumed")["elapsed_s"]
    assert before > 0
    second = train(rooms[0], tmp_path / "resumed", None, steps=7, resume=True, runtime=RT)
    assert second["steps"] == 7 and not second["interrupted"]
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert a[0] == b[0] == 7
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k
    for i in a[2]:
        for k in a[2][i]:
            assert torch.equal(a[2][i][k], b[2][i][k]), (i, k)
    assert torch.equal(a[3], b[3])
    rows = lambda run: [(r["step"], r["loss"], r["kl"]) for r in csv.DictReader(open(run / "metrics.csv"))]  # noqa: E731
    assert rows(tmp_path / "straight") == rows(tmp_path / "resumed")
    # the clock of a resumed run goes on from where it stopped
    elapsed = [float(r["elapsed_s"]) for r in csv.DictReader(open(tmp_path / "resumed" / "metrics.csv"))]
    assert elapsed[1] >= round(before, 1) - 0.05 and elapsed == sorted(elapsed)  # elapsed[1]: step 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(rooms, tmp_path, monkeypatch):
    import neural.train as nt

    cfg = PRESETS["tiny"].override(batch_size=2, checkpoint_every=2)
    real = nt.sigma_at
    monkeypatch.setattr(nt, "sigma_at", lambda c, step: float("nan") if step >= 4 else real(c, step))
    with pytest.raises(TrainingError, match=r"non-finite loss at step 5.*checkpoint.*step 4"):
        train(rooms[0], tmp_path / "run", cfg, steps=10, runtime=RT)
    ck = load_checkpoint(tmp_path / "run")
    assert ck["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(rooms, tmp_path):
    cfg = PRESETS["tiny"].override(batch_size=2)
    train(rooms[0], tmp_path / "run", cfg, steps=1, runtime=RT)
    with pytest.raises(TrainingError, match="--resume"):
        train(rooms[0], tmp_path / "run", cfg, steps=2, runtime=RT)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(rooms[0], tmp_path / "none", None, resume=True, runtime=RT)
    (tmp_path / "run" / "checkpoint.pt").unlink()  # as when Ctrl-C came before the first checkpoint
    with pytest.raises(TrainingError, match="stopped before its first checkpoint; start it again without --resume"):
        train(rooms[0], tmp_path / "run", None, steps=2, resume=True, runtime=RT)


def test_torchrun_two_cpu_processes_gloo_trains_two_steps(rooms, tmp_path):
    exe = shutil.which("trirender")
    assert exe, "the trirender console script is installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", exe, "train",
           str(rooms[0]), "--out", str(tmp_path / "ddp"), "--preset", "tiny", "--steps", "2", "--batch", "2",
           "--device", "cpu", "--no-progress", "--threads", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "done: step 2" in p.stdout and "(a fixed batch of training scenes, not held out" in p.stdout, p.stdout
    ck = load_checkpoint(tmp_path / "ddp")
    assert ck["step"] == 2 and len(ck["rng"]) == 2  # both processes' RNG states
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # each process its own latents
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2


def _train_worker(rank: int, port: int, data: str, out: str, result_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    s = train(data, out, PRESETS["tiny"].override(batch_size=2), steps=2, runtime=RT)
    Path(result_dir, str(rank)).write_text(json.dumps([s["loss"], s["nll"], s["kl"]]))
    import torch.distributed as dist

    dist.destroy_process_group()


def test_logged_losses_are_the_mean_over_every_process(rooms, tmp_path):
    # each process trains on its own batches: the logged (and returned) loss terms are their mean,
    # the same in every process, not rank 0's alone
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_train_worker, args=(port, str(rooms[0]), str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    per_rank = [json.loads((tmp_path / str(r)).read_text()) for r in range(2)]
    assert all(math.isfinite(x) for x in per_rank[0]) and per_rank[0] == per_rank[1], per_rank
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        last_row = list(csv.DictReader(f))[-1]
    assert float(last_row["loss"]) == pytest.approx(per_rank[0][0], rel=1e-5)


def _agree_worker(rank: int, init_file: str, diverge: bool, result_dir: str) -> None:
    import torch.distributed as dist

    from neural.train import _replicas_agree

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    if diverge and rank == 1:
        with torch.no_grad():
            model.weight[0, 0] += 1e-6  # one process stepped differently
    Path(result_dir, str(rank)).write_text(str(_replicas_agree(model, 2)))
    dist.destroy_process_group()


def test_the_replica_check_tells_equal_weights_from_diverged_ones(tmp_path):
    # training checks this at every checkpoint of a multi-process run (the torchrun test passes it),
    # so a missing gradient all-reduce stops the run instead of saving rank 0's weights alone
    import torch.multiprocessing as mp

    for diverge in (False, True):
        d = tmp_path / str(diverge)
        d.mkdir()
        mp.spawn(_agree_worker, args=(str(d / "init"), diverge, str(d)), nprocs=2)
        assert [(d / str(r)).read_text() for r in range(2)] == [str(not diverge)] * 2


def test_compiled_training_compiles_at_most_twice(rooms, tmp_path, monkeypatch):
    """--compile passes sigma as a tensor (a Python float is baked into the graph, so every annealed
    value recompiled the model: seen on an H200) and marks the number of context views K dynamic:
    one graph for K >= 2 and one for K = 1 (torch specialises sizes 0 and 1)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    cfg = PRESETS["tiny"].override(sigma_steps=12)  # sigma changes at every step, K is drawn from 1..5
    s = train(rooms[0], tmp_path / "run", cfg, steps=12, runtime=Runtime(progress=False, threads=1, tensorboard=False,
                                                                          compile=True))
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert s["steps"] == 12 and np.isfinite(s["loss"])
    assert 1 <= graphs <= 2, graphs  # compiled at all, and not once per sigma or K


@pytest.mark.gpu
def test_gpu_bf16_training_learns_and_its_checkpoint_loads_on_the_cpu(tmp_path):
    """The GPU path as a user runs it: bf16 autocast (on by default on CUDA), channels-last, fused Adam,
    on path-traced data rendered on the GPU; the run then evaluates on the CPU."""
    train_dir = rooms_dataset(64, views=6, seed=0, renderer="path", spp=8)
    test_dir = rooms_dataset(16, views=6, seed=1, renderer="path", spp=8)
    cfg = PRESETS["tiny"]
    val = to_model(validation_batch(test_dir, cfg), "cpu")

    def fixed_sigma_loss(model):
        torch.manual_seed(0)
        with torch.no_grad():
            return float(model(val["context_images"], val["context_viewpoints"], val["query_image"],
                               val["query_viewpoint"], cfg.sigma_end)["loss"])

    torch.manual_seed(cfg.seed)
    before = fixed_sigma_loss(GQN(cfg).eval())
    s = train(train_dir, tmp_path / "run", cfg, runtime=Runtime(device="cuda", channels_last=True, progress=False,
                                                                  tensorboard=False))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["device"].startswith("cuda") and run["amp_bf16"] and s["steps"] == cfg.steps_total
    from neural.train import build_model

    model, _, _ = build_model(tmp_path / "run", "cpu")
    after = fixed_sigma_loss(model)
    assert after < 0.8 * before, (before, after)


def test_a_dataset_of_another_image_size_is_refused_before_anything_is_written(rooms, tmp_path):
    # it used to train until the first validation (or fail on the first batch) with a tensor-shape traceback
    from render.dataset import DatasetConfig, generate

    small = tmp_path / "d32"
    generate(DatasetConfig("rooms_ring", 4, 3, size=32, shard_size=4), small, progress=False)
    cfg = PRESETS["tiny"].override(batch_size=2)
    with pytest.raises(TrainingError, match="images are 32x32; the model expects 64x64"):
        train(small, tmp_path / "a", cfg, steps=1, runtime=RT)
    with pytest.raises(TrainingError, match="d32: images are 32x32"):
        train(rooms[0], tmp_path / "b", cfg, steps=1, runtime=RT, val_data=small)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    train(rooms[0], tmp_path / "run", cfg, steps=1, runtime=RT)
    with pytest.raises(ValueError, match="images are 32x32"):
        evaluate(tmp_path / "run", small, (1,), samples=1)


def test_cli_ctrl_c_saves_reports_once_and_exits_130_and_resume_checks_its_target(rooms, tmp_path):
    exe = shutil.which("trirender")
    run_dir = tmp_path / "run"
    cmd = [exe, "train", str(rooms[0]), "--out", str(run_dir), "--preset", "tiny", "--steps", "100000", "--batch", "2",
           "--device", "cpu", "--no-progress", "--threads", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_as_from_a_terminal)
    deadline = time.time() + 240
    while not (run_dir / "metrics.csv").is_file() or len((run_dir / "metrics.csv").read_text().splitlines()) < 2:
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert out.count("interrupted") == 1 and "continue with --resume" in out, out
    step = load_checkpoint(run_dir)["step"]
    assert step >= 10
    again = subprocess.run(cmd[:2] + [str(rooms[0]), "--out", str(run_dir), "--resume", "--steps", str(step)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and f"already at step {step}" in again.stderr, again.stderr
    again = subprocess.run(cmd[:2] + [str(rooms[0]), "--out", str(run_dir), "--resume", "--preset", "small"],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "--preset" in again.stderr, again.stderr


def test_resume_refuses_another_dataset_and_accepts_the_same_one_moved(rooms, tmp_path):
    cfg = PRESETS["tiny"].override(batch_size=2)
    small = rooms_dataset(16, views=6, seed=1)
    train(small, tmp_path / "run", cfg, steps=1, runtime=RT)
    run_json = lambda: json.loads((tmp_path / "run" / "run.json").read_text())  # noqa: E731
    ident = run_json()["dataset"]
    assert ident["family"] == "rooms_ring" and ident["seed"] == 1 and ident["scenes"] == 16 and ident["shards_sha256"]
    with pytest.raises(TrainingError, match=r"not the dataset this run trained on \(.*seed 1 vs 0; scenes 16 vs 96"):
        train(rooms[0], tmp_path / "run", None, steps=2, resume=True, runtime=RT)
    assert run_json()["data"] == str(small.resolve())  # untouched by the refused resume
    moved = tmp_path / "moved"
    shutil.copytree(small, moved)
    train(moved, tmp_path / "run", None, steps=2, resume=True, runtime=RT)
    assert run_json()["data"] == str(moved.resolve()) and run_json()["dataset"] == ident
    # a run written before run.json recorded its dataset: accepted (and recorded from then on), but
    # only by a resume that goes ahead: one refused for its checkpoint leaves run.json as it was
    info = run_json()
    del info["dataset"]
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    with pytest.raises(TrainingError, match="already at step 2"):
        train(rooms[0], tmp_path / "run", None, steps=2, resume=True, runtime=RT)
    assert run_json() == info
    train(rooms[0], tmp_path / "run", None, steps=3, resume=True, runtime=RT)
    assert run_json()["dataset"]["scenes"] == 96


def test_a_bad_dataset_or_batch_leaves_no_run_folder_and_the_data_is_verified_once(rooms, tmp_path, monkeypatch):
    import render.shards as shards
    from render.shards import ShardError

    bad = tmp_path / "bad"
    shutil.copytree(rooms_dataset(16, views=6, seed=1), bad)
    with open(bad / "shard-00000" / "images.npy", "r+b") as f:  # one flipped byte in the images
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    cfg = PRESETS["tiny"].override(batch_size=2)
    with pytest.raises(ShardError, match="corrupt"):
        train(bad, tmp_path / "a", cfg, steps=1, runtime=RT)
    with pytest.raises(TrainingError, match="16 scenes is fewer than one batch of 32"):
        train(rooms_dataset(16, views=6, seed=1), tmp_path / "b", cfg.override(batch_size=32), steps=1, runtime=RT)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    calls = []
    real = shards.verify_shard
    monkeypatch.setattr(shards, "verify_shard", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    train(rooms_dataset(16, views=6, seed=1), tmp_path / "c", cfg, steps=1, runtime=RT)
    assert calls == [0], calls  # the one shard, once


def test_a_fresh_start_replaces_the_logs_of_a_run_that_died_before_its_first_checkpoint(rooms, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = PRESETS["tiny"].override(batch_size=2, log_every=1, val_every=1)
    rt = Runtime(progress=False, threads=1, tensorboard=True)
    train(rooms[0], tmp_path / "run", cfg, steps=3, runtime=rt)
    (tmp_path / "run" / "checkpoint.pt").unlink()  # as if killed before its first checkpoint
    time.sleep(1.1)  # event file names carry the second they were made
    train(rooms[0], tmp_path / "run", cfg, steps=2, runtime=rt)
    assert [r["step"] for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))] == ["1", "2"]
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    # without --val the validation batch is training scenes, and the logs say so
    assert "train_batch/psnr" in acc.Tags()["scalars"] and "val/psnr" not in acc.Tags()["scalars"]


def test_the_validation_batch_says_whether_it_is_held_out(rooms, tmp_path, capsys):
    cfg = PRESETS["tiny"].override(batch_size=2)
    held = lambda run: json.loads((tmp_path / run / "run.json").read_text())["validation"]["held_out"]  # noqa: E731
    s = train(rooms[0], tmp_path / "own", cfg, steps=1, runtime=RT)
    assert s["val_held_out"] is False and held("own") is False
    s = train(rooms[0], tmp_path / "val", cfg, steps=1, runtime=RT, val_data=rooms[1])
    assert s["val_held_out"] is True and held("val") is True
    # a --val dataset of the training data's family and seed holds training scenes: not held out, said
    capsys.readouterr()
    s = train(rooms[1], tmp_path / "same", cfg, steps=1, runtime=RT, val_data=rooms[1])
    assert s["val_held_out"] is False and held("same") is False
    assert "scenes are training scenes" in capsys.readouterr().out
    # TensorBoard's tag says what the batch is, and a resumed run keeps the tag it logged under
    # (a run from before the split, without the record, logged every batch as "val")
    info = lambda run: json.loads((tmp_path / run / "run.json").read_text())  # noqa: E731
    assert info("own")["validation"]["tensorboard_tag"] == "train_batch"
    assert info("val")["validation"]["tensorboard_tag"] == "val"
    old = info("own")
    del old["validation"]
    (tmp_path / "own" / "run.json").write_text(json.dumps(old))
    train(rooms[0], tmp_path / "own", None, steps=2, resume=True, runtime=RT)
    assert info("own")["validation"]["tensorboard_tag"] == "val"


def test_checkpoint_permissions_and_unreadable_run_files_are_named(rooms, tmp_path):
    from neural.train import build_model

    old = os.umask(0o022)
    try:
        train(rooms[1], tmp_path / "run", PRESETS["tiny"].override(batch_size=2), steps=1, runtime=RT)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert modes["checkpoint.pt"] == modes["config.json"] == 0o644, modes
    ck = tmp_path / "run" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:5000])  # truncated
    for call in (lambda: load_checkpoint(tmp_path / "run"), lambda: build_model(tmp_path / "run"),
                 lambda: train(rooms[1], tmp_path / "run", None, steps=2, resume=True, runtime=RT),
                 lambda: evaluate(tmp_path / "run", rooms[1], (1,), samples=1)):
        with pytest.raises(TrainingError, match="checkpoint.pt: cannot be read"):
            call()
    (tmp_path / "run" / "config.json").write_text('{"batch_size": 2 "steps": 3}')
    with pytest.raises(TrainingError, match=r"run/config\.json: cannot be read, not valid JSON \(Expecting ','"):
        train(rooms[1], tmp_path / "run", None, steps=2, resume=True, runtime=RT)


def test_notes_on_an_unreachable_max_context_and_a_non_finite_loss_before_any_checkpoint(rooms, tmp_path, capsys,
                                                                                        monkeypatch):
    train(rooms[1], tmp_path / "k", PRESETS["tiny"].override(batch_size=2, max_context=20), steps=1, runtime=RT)
    out = capsys.readouterr().out
    assert "note: max_context 20, but" in out and "uses at most 5 context views" in out, out
    import neural.train as nt

    monkeypatch.setattr(nt, "sigma_at", lambda c, step: float("nan"))
    with pytest.raises(TrainingError, match="No checkpoint was written yet.*start again without --resume") as e:
        train(rooms[1], tmp_path / "nan", PRESETS["tiny"].override(batch_size=2), steps=5, runtime=RT)
    assert "then --resume" not in str(e.value)


def test_images_chooses_a_both_dataset_s_path_traced_images_and_eval_follows_the_run(rooms, tmp_path):
    from neural.data import SceneViews
    from neural.train import mean_image
    from render.shards import ShardError

    from neural_data import with_path_images

    both = with_path_images(rooms[1], tmp_path / "both")
    cfg = PRESETS["tiny"].override(batch_size=2)
    train(both, tmp_path / "path", cfg, steps=1, runtime=RT, images="path")
    info = json.loads((tmp_path / "path" / "run.json").read_text())
    assert info["images"] == "path" and info["dataset"]["renderer"] == "both"
    np.testing.assert_allclose(np.load(tmp_path / "path" / "mean_image.npy"), 1 - mean_image(rooms[1]), atol=1e-5)
    rep = evaluate(tmp_path / "path", both, (1,), samples=1, max_scenes=2)  # the run's kind by default
    assert rep["meta"]["images"] == "path"
    assert evaluate(tmp_path / "path", both, (1,), samples=1, max_scenes=2, images="raster")["meta"]["images"] == "raster"
    with pytest.raises(ShardError, match="holds rasterized images only.*pass --images raster"):
        evaluate(tmp_path / "path", rooms[1], (1,), samples=1, max_scenes=2)
    with pytest.raises(TrainingError, match="this run trained on path images"):
        train(both, tmp_path / "path", None, steps=2, resume=True, runtime=RT, images="raster")
    train(both, tmp_path / "path", None, steps=2, resume=True, runtime=RT)  # resumes on path images
    with pytest.raises(ShardError, match=r"seed1-raster8: holds rasterized images only \(renderer 'raster'\); "
                                         "--images path needs"):
        train(rooms[1], tmp_path / "x", cfg, steps=1, runtime=RT, images="path")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ShardError, match="no path-traced second image set"):
        SceneViews(rooms[1], images="images_path")


def test_novel_feeds_a_path_trained_run_path_traced_context_views(rooms, tmp_path, monkeypatch):
    import neural.novel
    from neural.data import SceneViews
    from typer.testing import CliRunner

    from neural_data import with_path_images
    from trirender.cli import app

    both = with_path_images(rooms[1], tmp_path / "both")
    train(both, tmp_path / "run", PRESETS["tiny"].override(batch_size=2), steps=1, runtime=RT, images="path")
    seen = {}

    def orbit(model, scene, ctx, vps, **kw):  # stop once the context views are chosen
        seen["ctx"] = ctx
        raise SystemExit(0)

    monkeypatch.setattr(neural.novel, "orbit", orbit)
    CliRunner().invoke(app, ["novel", str(tmp_path / "run"), "--data", str(both), "--index", "1", "--context", "2",
                             "--out", str(tmp_path / "o.gif")])
    imgs, _ = SceneViews(both, images="images_path").gather(np.asarray([1]), np.arange(2)[None])
    np.testing.assert_array_equal(seen["ctx"], imgs[0])
    # with --scene its context views are path-traced with the dataset's spp and depth
    from render import load_scene

    res = CliRunner().invoke(app, ["novel", str(tmp_path / "run"), "--scene", "rooms_ring", "--context", "2",
                                   "--out", str(tmp_path / "o.gif")])
    assert "ctx" in seen and res.exit_code == 0, res.output
    scene = load_scene("rooms_ring", seed=0)
    settings = SceneViews(both, verify=False).manifest["render_settings"]
    path = neural.novel.context_from_scene(scene, 2, 64, 0, path={"spp": settings["spp"], "max_depth": settings["max_depth"]})
    raster = neural.novel.context_from_scene(scene, 2, 64, 0)
    np.testing.assert_array_equal(seen["ctx"], path[0])
    assert np.abs(path[0].astype(int) - raster[0]).mean() > 1  # not the rasterizer's views


def test_resume_accepts_the_command_that_started_the_run_and_names_a_changed_value(rooms, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from trirender.cli import app

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    run_dir = tmp_path / "run"
    start = ["train", str(rooms[0]), "--out", str(run_dir), "--preset", "tiny", "--batch", "2", "--set", "log_every=1",
             "--device", "cpu", "--no-progress", "--threads", "1"]
    res = CliRunner().invoke(app, start + ["--steps", "1"])
    assert res.exit_code == 0, res.output
    assert os.environ["GOMP_SPINCOUNT"] == "10000"  # torch's OpenMP threads spin briefly (the user set nothing)
    # the same command again with --resume: the same config, accepted
    res = CliRunner().invoke(app, start + ["--steps", "2", "--resume"])
    assert res.exit_code == 0, res.output
    # --set/--batch without --preset apply to the run's own config: an equal value is no change
    res = CliRunner().invoke(app, ["train", str(rooms[0]), "--out", str(run_dir), "--batch", "2", "--steps", "3",
                                   "--resume", "--no-progress", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run_dir)["step"] == 3
    # another value is refused, naming the field, the run's value and the new one; nothing changes
    config = (run_dir / "config.json").read_text()
    for args, words in [(["--batch", "4"], "batch_size 2 -> 4"), (["--set", "lr_start=0.01"], "lr_start 0.002 -> 0.01"),
                        (["--preset", "small"], "r_channels 32 -> 64")]:
        res = CliRunner().invoke(app, start[:4] + args + ["--steps", "4", "--resume", "--no-progress"])
        assert res.exit_code == 2 and "cannot change a run being resumed" in res.output, res.output
        assert words in res.output, res.output
    assert load_checkpoint(run_dir)["step"] == 3 and (run_dir / "config.json").read_text() == config
