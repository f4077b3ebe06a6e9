"""Evaluation and novel views: the report's numbers against direct computations, the baselines, the
inference API, and the train/eval/novel verbs as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from neural.data import SceneViews
from neural.evaluate import evaluate, nearest_view, psnr_np, query_plan, ssim_np
from neural.model import PRESETS
from neural.novel import load_run, orbit_cameras, predict
from neural.train import Runtime, train

from neural_data import rooms_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained for 20 steps (the numbers need not be good, only consistent)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    train(rooms_dataset(96, views=6, seed=0), out, PRESETS["tiny"].override(batch_size=4), steps=20,
          runtime=Runtime(progress=False, threads=1, tensorboard=False))
    return out


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trirender", *args], capture_output=True, text=True)


def test_metrics_on_known_images():
    a = np.full((8, 8, 3), 0.5, np.float32)
    assert psnr_np(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    assert ssim_np(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    img = rng.random((16, 16, 3)).astype(np.float32)
    assert ssim_np(img, np.clip(img + rng.normal(0, 0.2, img.shape), 0, 1).astype(np.float32)) < 0.9


def test_nearest_view_picks_the_closest_viewpoint():
    imgs = np.arange(3)[None, :, None, None, None] * np.ones((1, 3, 2, 2, 3))  # image i is all i
    vps = np.array([[[0, 0, 0, 1, 0, 1, 0], [2, 0, 0, 1, 0, 1, 0], [5, 0, 0, 1, 0, 1, 0]]], np.float32)
    assert nearest_view(imgs, vps, np.array([[1.8, 0, 0, 1, 0, 1, 0]], np.float32))[0, 0, 0, 0] == 1
    assert nearest_view(imgs, vps, np.array([[4.0, 0, 0, 1, 0, 1, 0]], np.float32))[0, 0, 0, 0] == 2


def test_report_structure_and_baselines_match_direct_computation(run):
    test = rooms_dataset(16, views=6, seed=1)
    rep = evaluate(run, test, contexts=(1, 3), samples=3, seed=0)
    assert set(rep) == {"context_1", "context_3", "meta"}
    for k in (1, 3):
        r = rep[f"context_{k}"]
        assert r["scenes"] == 16
        assert set(r["model"]) >= {"psnr", "ssim", "psnr_best_of_n"}
        assert set(r["nearest_view"]) == set(r["mean_image"]) == {"psnr", "ssim"}
        assert r["model"]["psnr_best_of_n"] >= r["model"]["psnr_single"] - 1e-9
        assert r["elbo_nats"] == pytest.approx(-(r["nll_nats"] + r["kl_nats"]))
        assert all(np.isfinite(v) for m in ("model", "nearest_view", "mean_image") for v in r[m].values())
    # the baselines, recomputed here from the plan the report documents
    views = SceneViews(test)
    plan = query_plan(views, np.arange(16), 3, seed=0)
    imgs, vps = views.gather(np.arange(16), plan)
    mean_img = np.load(run / "mean_image.npy")
    q = imgs[:, 0].astype(np.float32) / 255
    near = [psnr_np(nearest_view(imgs[i:i + 1, 1:4], vps[i:i + 1, 1:4], vps[i:i + 1, 0])[0] / 255.0, q[i]) for i in range(16)]
    assert rep["context_3"]["nearest_view"]["psnr"] == pytest.approx(np.mean(near), abs=1e-6)
    gain = rep["context_3"]["model_minus_nearest_view"]  # paired: the mean difference is the difference of means
    assert gain["psnr"] == pytest.approx(rep["context_3"]["model"]["psnr"] - np.mean(near), abs=1e-6)
    assert 0 < gain["psnr_standard_error"] < 5 and 0 <= gain["fraction_model_better"] <= 1
    assert rep["context_3"]["mean_image"]["psnr"] == pytest.approx(np.mean([psnr_np(mean_img, x) for x in q]), abs=1e-6)
    # the model's own numbers for K = 1, recomputed from the checkpoint: N draws from the prior with the
    # report's seeded generator, scored as the mean of the draws; the ELBO from the model's loss terms
    import torch

    from neural.model import sigma_at
    from neural.train import build_model

    model, cfg, step = build_model(run)
    imgs1, vps1 = views.gather(np.arange(16), plan[:, :2])
    cx = torch.from_numpy(imgs1[:, 1:]).permute(0, 1, 4, 2, 3).float() / 255.0
    cv, vq = torch.from_numpy(vps1[:, 1:]), torch.from_numpy(vps1[:, 0])
    xq = torch.from_numpy(imgs1[:, 0]).permute(0, 3, 1, 2).float() / 255.0
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([model.generate(cx, cv, vq, generator=gen) for _ in range(3)])
        terms = model(cx, cv, xq, vq, sigma_at(cfg, step))
    mean_draw = draws.mean(0).permute(0, 2, 3, 1).numpy()
    assert rep["context_1"]["model"]["psnr"] == pytest.approx(
        np.mean([psnr_np(mean_draw[i], imgs1[i, 0] / 255.0) for i in range(16)]), abs=1e-3)
    assert rep["context_1"]["elbo_nats"] == pytest.approx(
        -float(terms["nll_each"].mean() + terms["kl_each"].mean()), rel=1e-4)
    # more context views can only bring a nearer view
    assert rep["context_3"]["nearest_view"]["psnr"] >= rep["context_1"]["nearest_view"]["psnr"]
    # the training set's mean image is what train() saved: the mean of every training view
    train_views = SceneViews(rooms_dataset(96, views=6, seed=0))
    all_imgs, _ = train_views.gather(np.arange(96), np.tile(np.arange(6), (96, 1)))
    np.testing.assert_allclose(mean_img, all_imgs.reshape(-1, 64, 64, 3).mean(0) / 255.0, atol=1e-5)


def test_predict_api_shapes_and_seeds(run):
    model, cfg = load_run(run)
    views = SceneViews(rooms_dataset(16, views=6, seed=1))
    imgs, vps = views.gather(np.array([0]), np.array([[0, 1, 2, 3, 4]]))
    out = predict(model, imgs[0, :3], vps[0, :3], vps[0, 3:], samples=2, seed=5)
    assert out.shape == (2, 2, 64, 64, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    again = predict(model, imgs[0, :3].astype(np.float32) / 255, vps[0, :3], vps[0, 3:], samples=2, seed=5)
    np.testing.assert_allclose(out, again, atol=1e-6)  # uint8 and float inputs agree; seeded
    with pytest.raises(ValueError, match="model expects 64x64"):
        predict(model, imgs[0, :3, :32], vps[0, :3], vps[0, 3:])


def test_orbit_cameras_keep_radius_height_and_target():
    from render import Camera

    cam = Camera((0.0, 1.2, 2.8), (0.0, 0.5, 0.0), (0.0, 1.0, 0.0), 45.0, 64, 64)
    cams = orbit_cameras(cam, 8)
    assert np.allclose(cams[0].position, cam.position)
    for c in cams:
        assert c.look_at == cam.look_at and c.position[1] == pytest.approx(1.2)
        assert np.hypot(c.position[0], c.position[2]) == pytest.approx(2.8)
    assert np.allclose(cams[2].position, (2.8, 1.2, 0.0), atol=1e-9)  # a quarter turn


def test_eval_and_novel_verbs(run, tmp_path):
    test = rooms_dataset(16, views=6, seed=1)
    res = cli("eval", str(run), "--data", str(test), "--context", "1,3", "--samples", "2", "--scenes", "4",
              "--json", str(tmp_path / "e.json"))
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["context_3"]["scenes"] == 4 and "| 3 |" in res.stdout and "note:" not in res.stdout
    # a progress bar on stderr (4 scenes x 2 context sizes); stdout is the report alone
    assert "eval: 100%" in res.stderr and "8/8" in res.stderr, res.stderr
    assert res.stdout.startswith("| K |") and "%|" not in res.stdout, res.stdout
    assert rep["meta"]["held_out"] is True and rep["meta"]["images"] == "raster"
    # the training data itself: evaluated, with a note that the numbers are not held out
    res = cli("eval", str(run), "--data", str(rooms_dataset(96, views=6, seed=0)), "--context", "1", "--samples", "1",
              "--scenes", "2", "--json", str(tmp_path / "t.json"))
    assert res.returncode == 0, res.stderr
    assert "note:" in res.stdout and "2 of the 2 scenes evaluated are training scenes" in res.stdout, res.stdout
    assert "--seed <another>" in res.stdout and json.loads((tmp_path / "t.json").read_text())["meta"]["held_out"] is False
    res = cli("eval", str(run), "--data", str(test), "--context", "1", "--samples", "1", "--scenes", "1000",
              "--no-progress")
    assert res.returncode == 0 and "--scenes 1000, but" in res.stdout and "evaluated all 16" in res.stdout, res.stdout
    assert "eval:" not in res.stderr, res.stderr
    res = cli("novel", str(run), "--data", str(test), "--index", "2", "--context", "3", "--orbit", "4",
              "--samples", "2", "--out", str(tmp_path / "o.gif"), "--strip", str(tmp_path / "o.png"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "o.gif", index=None)
    assert frames.shape[0] == 4
    rows = iio.imread(tmp_path / "o.png").shape[0] // 64  # neural, raster, (path), std
    assert rows == 4 and "left out" not in res.stdout, res.stdout  # the path tracer's column is there


def test_verbs_refuse_bad_input_in_one_line(run, tmp_path, cli_in_process):
    import shutil

    shutil.copytree(run, tmp_path / "cut")
    ck = tmp_path / "cut" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:3000])  # a checkpoint cut short (a full disk, a partial copy)
    for args, words in [
        (("eval", str(tmp_path / "cut"), "--data", str(rooms_dataset(16, views=6, seed=1))),
         "cut/checkpoint.pt: cannot be read"),
        (("novel", str(run), "--scene", "rooms_ring", "--device", "mps"), "device 'mps'; expected"),
        (("eval", str(run), "--data", str(rooms_dataset(16, views=6, seed=1)), "--images", "path"),
         "holds rasterized images only"),
        (("train", str(rooms_dataset(16, views=6, seed=1)), "--out", str(tmp_path / "r"), "--images", "pt"),
         "'pt' is not one of 'raster', 'path'"),
        (("train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")), "not a folder"),
        (("train", str(rooms_dataset(16, views=6, seed=1)), "--out", str(tmp_path / "r"), "--preset", "huge"), "unknown preset"),
        (("train", str(rooms_dataset(16, views=6, seed=1)), "--out", str(tmp_path / "r"), "--set", "hiden=3"), "FIELD=VALUE"),
        (("train", str(rooms_dataset(16, views=6, seed=1)), "--out", str(tmp_path / "r"), "--resume"), "nothing to resume"),
        (("eval", str(tmp_path), "--data", str(rooms_dataset(16, views=6, seed=1))), "no checkpoint"),
        (("eval", str(run), "--data", str(rooms_dataset(16, views=6, seed=1)), "--context", "1,9"), "views per scene"),
        (("novel", str(run)), "exactly one of"),
    ]:
        res = cli_in_process(*args)  # main() as the console script calls it (a subprocess each: 19 s)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert words in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_eval_and_novel_refuse_outputs_over_the_run_s_or_the_dataset_s_files(run, tmp_path):
    test = rooms_dataset(16, views=6, seed=1)
    record = (run / "run.json").read_bytes()
    for args, words in [
        (("eval", str(run), "--data", str(test), "--json", str(run / "run.json")),
         "run.json is also a file of the run (RUN)"),
        (("eval", str(run), "--data", str(test), "--json", str(run / ".." / run.name / "metrics.csv")),
         "metrics.csv is also a file of the run (RUN)"),
        (("eval", str(run), "--data", str(test), "--json", str(test / "manifest.json")),
         "manifest.json is also a file of the --data dataset"),
        (("novel", str(run), "--data", str(test), "--out", str(tmp_path / "o.gif"), "--strip", str(run / "val.png")),
         "val.png is also a file of the run (RUN)"),
    ]:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert words in res.stderr and ("--json" in res.stderr or "--strip" in res.stderr), (args, res.stderr)
        assert "Traceback" not in res.stderr
    assert (run / "run.json").read_bytes() == record  # refused before any work
    assert not (tmp_path / "o.gif").exists()


def test_eval_and_novel_take_threads_and_shorten_openmp_spinning(run, tmp_path, monkeypatch):
    import os

    import torch
    from typer.testing import CliRunner

    from trirender.cli import app

    test = rooms_dataset(16, views=6, seed=1)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    res = CliRunner().invoke(app, ["eval", str(run), "--data", str(test), "--context", "1", "--samples", "1",
                                   "--scenes", "1", "--threads", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert calls == [1] and os.environ["GOMP_SPINCOUNT"] == "10000"  # torch's OpenMP threads spin briefly
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own setting is kept
    res = CliRunner().invoke(app, ["novel", str(run), "--data", str(test), "--context", "1", "--orbit", "1",
                                   "--samples", "1", "--path-spp", "0", "--threads", "2", "--out", str(tmp_path / "o.gif")])
    assert res.exit_code == 0, res.output
    assert calls == [1, 2] and os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ


def test_held_out_is_unknown_for_a_run_that_does_not_record_its_data():
    from neural.evaluate import held_out

    manifest = SceneViews(rooms_dataset(16, views=6, seed=1), verify=False).manifest
    assert held_out({}, "d", manifest, 16) == (None, None)


def test_novel_renders_scene_context_views_as_datasets_are_rendered(monkeypatch):
    """--scene context views (and the orbit's raster column) use the dataset generator's shadow maps
    and supersampling: those settings reproduce a dataset's stored view bit for bit; the rasterizer's
    defaults do not."""
    import render
    from neural import novel
    from render import rasterize_batch, scene_from_dict
    from render.dataset import DatasetConfig, scene_record
    from render.image_io import to_srgb8

    cfg = DatasetConfig("rooms_ring", 16, 6, size=64, seed=1, shard_size=50)
    desc, cams = scene_record(cfg, 3)
    scene = scene_from_dict(desc)
    stored, _ = SceneViews(rooms_dataset(16, views=6, seed=1)).gather(np.array([3]), np.array([[2]]))
    opts = novel.dataset_raster_options(64)
    assert np.array_equal(to_srgb8(rasterize_batch([(scene, cams[2])], **opts)[0].rgb), stored[0, 0])
    assert not np.array_equal(to_srgb8(rasterize_batch([(scene, cams[2])])[0].rgb), stored[0, 0])
    seen = []
    monkeypatch.setattr(render, "rasterize_batch", lambda pairs, **kw: seen.append(kw) or rasterize_batch(pairs, **kw))
    ctx, vps = novel.context_from_scene(scene, 2, 64, seed=0)
    assert seen == [opts] and ctx.shape == (2, 64, 64, 3) and vps.shape == (2, 7)
