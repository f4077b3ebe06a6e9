"""Datasets: determinism across workers and shard splits, resume after kill -9, checksums, the
torch loader's shapes and conventions, and re-rendering from the stored scene records."""

import dataclasses
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from render.dataset import DatasetConfig, contact_sheet, generate, merge, shadow_map_size, verify
from render.shards import ShardError, open_shard

from helpers import sigint_as_from_a_terminal, sigint_blocked

CFG = DatasetConfig("rooms_ring", scenes=7, views=3, size=16, shard_size=2, seed=11)


def same_tree(a: Path, b: Path) -> None:
    """Every shard file byte-identical and manifests equal."""
    names = sorted(p.name for p in a.glob("shard-*"))
    assert names == sorted(p.name for p in b.glob("shard-*")) and len(names) == CFG.num_shards
    for n in names:
        files = sorted(p.name for p in (a / n).iterdir())
        assert files == sorted(p.name for p in (b / n).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(a / n, b / n, files, shallow=False)
        assert not mismatch and not errors, (n, mismatch, errors)
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    ma.pop("seconds", None), mb.pop("seconds", None)
    assert ma == mb


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    generate(CFG, out, progress=False)
    return out


def test_layout_and_manifest(reference):
    m = json.loads((reference / "manifest.json").read_text())
    assert m["format"] == "trirender-gqn" and m["num_shards"] == 4 and sorted(m["shards"]) == ["0", "1", "2", "3"]
    sh = open_shard(reference, 3, m["shards"]["3"])
    assert sh.images.dtype == np.uint8 and sh.images.shape == (1, 3, 16, 16, 3)  # last shard holds 7 - 6 scenes
    assert sh.viewpoints.shape == (1, 3, 7) and sh.cameras.shape == (1, 3, 4, 4) and sh.fov.shape == (1, 3)
    assert verify(reference) == []


def test_shard_splits_and_workers_give_the_same_bytes(reference, tmp_path):
    split = tmp_path / "split"
    for i in range(3):  # three "machines" sharing one folder: the last to finish joins the parts
        m = generate(CFG, split, shard_index=i, num_shards=3, progress=False)
        assert m["merged"] == (i == 2)
        if i < 2:
            with pytest.raises(ShardError, match="manifest.json: missing.*dataset merge"):
                verify(split)
    assert not list(split.glob("manifest.part-*")) and verify(split) == []
    same_tree(reference, split)
    # parts finished apart (their folders copied together by hand) are joined by merge
    apart = tmp_path / "apart"
    for i in range(3):
        generate(CFG, tmp_path / f"machine{i}", shard_index=i, num_shards=3, progress=False)
        shutil.copytree(tmp_path / f"machine{i}", apart, dirs_exist_ok=True)
    merge(apart)
    same_tree(reference, apart)
    pool = tmp_path / "pool"
    generate(CFG, pool, workers=2, progress=False)
    same_tree(reference, pool)


def test_raster_batches_of_any_size_give_the_same_bytes(reference, tmp_path, monkeypatch):
    # a shard's views are rasterized a few scenes at a time (RASTER_BATCH_VIEWS); one scene a call
    # must make the bytes the reference made with a whole shard in one call
    import render.dataset

    monkeypatch.setattr(render.dataset, "RASTER_BATCH_VIEWS", 1)
    generate(CFG, tmp_path / "one", workers=1, progress=False)
    same_tree(reference, tmp_path / "one")


def test_spawned_raster_workers_give_the_same_bytes(reference, tmp_path, monkeypatch):
    # raster workers are forked on Linux; spawned ones (other systems, numba's omp layer) too must
    # make the same shards
    import render.dataset

    monkeypatch.setattr(render.dataset, "worker_start_method", lambda config: "spawn")
    generate(CFG, tmp_path / "spawned", workers=2, progress=False)
    same_tree(reference, tmp_path / "spawned")


def test_worker_start_method(monkeypatch):
    import numba

    import render.dataset
    from render.dataset import worker_start_method

    linux = sys.platform.startswith("linux")
    monkeypatch.setattr(render.dataset, "_taichi_running", lambda: False)
    assert worker_start_method(CFG) == ("fork" if linux else "spawn")
    for renderer in ("path", "both"):  # Taichi's runtime must not be forked
        assert worker_start_method(dataclasses.replace(CFG, renderer=renderer)) == "spawn"
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "omp")  # GNU OpenMP is not fork-safe
    assert worker_start_method(CFG) == "spawn"
    monkeypatch.undo()
    from render.pathtracer import init_backend

    init_backend("cpu")  # a process that path-traced before spawns its raster workers too
    assert render.dataset._taichi_running() and worker_start_method(CFG) == "spawn"


FORKED = """
import json, os, sys
from pathlib import Path
from render.dataset import DatasetConfig, generate
cfg = DatasetConfig("rooms_ring", scenes=4, views=1, size=16, shard_size=1, seed=3)
seen = []
def look(j):
    if not seen:
        kids = [c for t in Path(f"/proc/{os.getpid()}/task").iterdir() for c in (t / "children").read_text().split()]
        seen.append([Path(f"/proc/{c}/cmdline").read_text() for c in kids])
if __name__ == "__main__":
    generate(cfg, sys.argv[1], workers=2, progress=False, on_shard=look)
    # as on a 4-core machine: two processes of two numba threads, whose parallel kernels the
    # calling process launched before the fork (numba's workqueue pool must work in the worker)
    import render.dataset
    from render.rasterizer import warm_up

    warm_up()
    render.dataset.usable_cores = lambda: 4
    m = generate(cfg, sys.argv[1] + "-4", workers=2, progress=False)
    print(json.dumps({"own": Path("/proc/self/cmdline").read_text(), "children": seen[0], "shards": m["shards"]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_raster_worker_is_forked_with_the_calling_process_s_kernels(tmp_path):
    # a spawned worker spent ~1.2 s importing numpy, numba and the renderer and loading the
    # kernels before its first shard; a forked one is the calling process's copy (the same command
    # line, where a spawned one runs multiprocessing's spawn_main). In a fresh process: this one
    # may have started Taichi, and then spawns.
    script = tmp_path / "forked.py"
    script.write_text(FORKED)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "d")], env=env, capture_output=True, text=True,
                       check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    workers = [c for c in got["children"] if c and "resource_tracker" not in c]
    assert workers and all(c == got["own"] for c in workers), got
    one = generate(DatasetConfig("rooms_ring", scenes=4, views=1, size=16, shard_size=1, seed=3), tmp_path / "one",
                   workers=1, progress=False)
    assert got["shards"] == one["shards"]


def test_a_worker_gets_its_next_shard_while_this_process_is_busy(tmp_path):
    # A thread of the calling process hands each worker its next shard the moment it returns one.
    # Before, shards were handed out only between the calling process's own shards, which left a
    # worker idle for up to a shard's time after each of its own; with the calling process held up
    # here, the worker would never get a second shard and this would time out.
    cfg = DatasetConfig("rooms_ring", scenes=6, views=1, size=16, shard_size=1, seed=3)
    out = tmp_path / "ds"

    def hold(j: int) -> None:
        if j == 0:  # the calling process's first shard: wait until the worker has made three more
            deadline = time.monotonic() + 120
            while len(list(out.glob("shard-*"))) < 4:
                assert time.monotonic() < deadline, sorted(p.name for p in out.glob("shard-*"))
                time.sleep(0.05)

    generate(cfg, out, workers=2, progress=False, on_shard=hold)
    assert verify(out) == [] and len(list(out.glob("shard-*"))) == 6


def test_a_starting_part_leaves_the_other_parts_temporaries_alone(reference, tmp_path):
    # part 1 of 2 is (as if) writing shard 1 when part 0 starts in the same folder
    busy = tmp_path / ".shard-00001.tmp-writing"
    busy.mkdir()
    (busy / "images.npy").write_bytes(b"half")
    stale = tmp_path / ".shard-00002.tmp-crashed"  # part 0's own leftover from a killed run
    stale.mkdir()
    generate(CFG, tmp_path, shard_index=0, num_shards=2, progress=False)
    assert busy.is_dir() and not stale.exists()
    generate(CFG, tmp_path, shard_index=1, num_shards=2, progress=False)  # its own, when it starts again
    assert not list(tmp_path.glob(".shard-*")) and verify(tmp_path) == []
    same_tree(reference, tmp_path)


def test_merge_refuses_an_unfinished_split(tmp_path):
    generate(CFG, tmp_path, shard_index=0, num_shards=2, progress=False)
    with pytest.raises(ShardError, match="shard-00001.*not done"):
        merge(tmp_path)


def test_other_settings_in_the_same_folder_are_refused(reference, tmp_path):
    generate(CFG, tmp_path, progress=False)
    other = DatasetConfig("rooms_ring", scenes=7, views=3, size=16, shard_size=2, seed=12)
    with pytest.raises(ShardError, match="seed"):
        generate(other, tmp_path, progress=False)
    # a folder from a version whose renderer settings differ (same config) is refused too
    m = json.loads((tmp_path / "manifest.json").read_text())
    del m["render_settings"]["directional_shadow_map"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="render_settings.directional_shadow_map"):
        generate(CFG, tmp_path, progress=False)
    # and so is one whose renderers rounded differently (an older RENDER_REVISION)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["render_settings"]["directional_shadow_map"] = CFG.manifest()["render_settings"]["directional_shadow_map"]
    m["render_settings"]["render_revision"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="render_settings.render_revision"):
        generate(CFG, tmp_path, progress=False)
    # a raster-only dataset records the rasterizer's own revision: path tracer changes leave it resumable
    from render.dataset import RASTER_REVISION, RENDER_REVISION

    assert CFG.manifest()["render_settings"]["render_revision"] == RASTER_REVISION <= RENDER_REVISION
    for renderer in ("path", "both"):
        cfg = dataclasses.replace(CFG, renderer=renderer)
        assert cfg.manifest()["render_settings"]["render_revision"] == RENDER_REVISION


GEN = """
import os, signal, sys
from render.dataset import DatasetConfig, generate
cfg = DatasetConfig("rooms_ring", scenes=7, views=3, size=16, shard_size=2, seed=11)
kill_after, workers = int(sys.argv[2]), int(sys.argv[3])
def hook(j):
    if kill_after >= 0 and j >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
if __name__ == "__main__":  # the spawned worker imports this script too
    generate(cfg, sys.argv[1], progress=False, on_shard=hook, workers=workers)
"""


def test_resume_after_kill_9_is_byte_identical(reference, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "gen.py"
    script.write_text(GEN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # killed right after shard 1 is complete
    r = subprocess.run([sys.executable, str(script), str(out), "1", "1"], env=env, capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert (out / "shard-00001").is_dir() and not (out / "shard-00002").exists()
    # killed from outside at an arbitrary moment while shards are being written
    # (with the default workers: this process and a forked one, killed together with it)
    p = subprocess.Popen([sys.executable, str(script), str(out), "-1", "0"], env=env)
    t0 = time.time()
    while not (out / "shard-00002").exists() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL  # killed mid-run, not finished before the signal came
    # fake a half-written shard, as a kill during a write leaves one
    (out / ".shard-00003.tmp-junk").mkdir(exist_ok=True)
    (out / ".shard-00003.tmp-junk" / "images.npy").write_bytes(b"partial")
    r = subprocess.run([sys.executable, str(script), str(out), "-1", "0"], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert not list(out.glob(".shard-*"))
    same_tree(reference, out)


def test_a_second_run_of_the_same_part_is_refused_and_leaves_the_first_ones_shards_alone(tmp_path):
    # the same command started twice on one folder: the second used to remove the first one's
    # half-written shards as its own (a spawned worker of a script without a __main__ guard, which
    # runs the script again, did the same), and the first then failed on its vanished files
    from render.dataset import _part_lock
    from render.errors import RenderError

    cfg = DatasetConfig("rooms_ring", scenes=4, views=1, size=8, shard_size=2, seed=3)
    out = tmp_path / "d"
    out.mkdir()
    (out / ".shard-00000.tmp-inuse").mkdir()  # the first run's shard in the making
    with _part_lock(out, 0, 1):  # the first run, still going
        with pytest.raises(RenderError, match=rf"another process \(pid {os.getpid()}\) is generating this "
                                              r"dataset now \(\.lock is locked\); let it finish"):
            generate(cfg, out, progress=False, workers=1)
        assert (out / ".shard-00000.tmp-inuse").is_dir()
        # the parts of a split run lock their own parts only
        m = generate(cfg, out, progress=False, workers=1, shard_index=1, num_shards=2)
        assert list(m["shards"]) == ["1"]
        with _part_lock(out, 1, 2):
            with pytest.raises(RenderError, match="is generating part 1 of 2 of this dataset"):
                generate(cfg, out, progress=False, workers=1, shard_index=1, num_shards=2)
    # once the first run has ended its lock is free: the other part runs and joins the two
    # (a folder that a failed run made goes, lock file and all: see test_a_run_that_fails_before_...)
    generate(cfg, out, progress=False, workers=1, shard_index=0, num_shards=2)
    assert verify(out) == [] and not list(out.glob(".shard-*"))


def test_corrupt_shard_is_named(reference, tmp_path):
    from neural.data import SceneViews

    bad = tmp_path / "bad"
    shutil.copytree(reference, bad)
    f = bad / "shard-00002" / "images.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    problems = verify(bad)
    assert len(problems) == 1 and "shard-00002/images.npy" in problems[0] and "checksum" in problems[0]
    with pytest.raises(ShardError, match="shard-00002"):
        SceneViews(bad)
    shutil.rmtree(bad / "shard-00001")
    assert any("shard-00001" in p and "missing" in p for p in verify(bad))
    res = subprocess.run([sys.executable, "-m", "trirender", "dataset", "verify", str(bad)], capture_output=True, text=True)
    assert res.returncode == 1 and "shard-00001" in res.stderr and "shard-00002" in res.stderr


def test_verify_tells_an_unfinished_dataset_from_a_corrupt_one(reference, tmp_path):
    # an interrupted run: shards its workers finished after the last manifest update, and shards not
    # made yet, are 'unfinished' with a hint to resume; they are not called bad
    part = tmp_path / "part"
    shutil.copytree(reference, part)
    m = json.loads((part / "manifest.json").read_text())
    total = m["num_shards"]
    del m["shards"]["1"], m["shards"]["2"]
    (part / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(part / "shard-00002")
    problems = verify(part)
    assert problems == [f"{part}/shard-00001: whole, but not in manifest.json yet", f"{part}/shard-00002: not made yet"]
    res = subprocess.run([sys.executable, "-m", "trirender", "dataset", "verify", str(part)], capture_output=True, text=True)
    assert res.returncode == 1 and "bad:" not in res.stderr, res.stderr
    assert f"incomplete: manifest.json lists {total - 2} of {total} shards; run the same" in " ".join(res.stderr.split())


def test_loader_shapes_dtypes_and_viewpoints(reference):
    import torch

    from neural.data import make_loader, to_model

    loader = make_loader(reference, batch_size=3, max_context=2, seed=5)
    batches = list(loader)
    assert len(batches) == 7 // 3
    for b in batches:
        k = b["context_images"].shape[1]
        assert 1 <= k <= 2
        assert b["context_images"].dtype == torch.uint8 and b["context_images"].shape == (3, k, 16, 16, 3)
        assert b["query_image"].shape == (3, 16, 16, 3) and b["query_viewpoint"].shape == (3, 7)
        x = to_model(b)
        assert x["context_images"].shape == (3, k, 3, 16, 16) and x["context_images"].dtype == torch.float32
        assert 0.0 <= float(x["query_image"].min()) and float(x["query_image"].max()) <= 1.0
    # same seed: the same batches, whatever the worker count; resuming at batch 1 gives batch 1
    again = list(make_loader(reference, batch_size=3, max_context=2, seed=5, num_workers=2))
    assert len(again) == len(batches) >= 2
    for a, b in zip(batches, again):
        for key in a:
            assert torch.equal(a[key], b[key])
    resumed = next(iter(make_loader(reference, batch_size=3, max_context=2, seed=5, start_batch=1)))
    assert torch.equal(resumed["query_image"], batches[1]["query_image"])
    # viewpoint convention: position and yaw/pitch of the stored camera's forward (-z) axis
    sh = open_shard(reference, 0)
    for s in range(2):
        for v in range(3):
            m, vp = sh.cameras[s, v], sh.viewpoints[s, v]
            f = -m[:3, 2]
            np.testing.assert_allclose(vp[:3], m[:3, 3], atol=1e-6)
            np.testing.assert_allclose(vp[3:], [np.cos(np.arctan2(f[0], f[2])), np.sin(np.arctan2(f[0], f[2])),
                                                np.cos(np.arcsin(f[1])), np.sin(np.arcsin(f[1]))], atol=1e-5)


def test_a_stored_record_re_renders_to_the_stored_image(reference):
    import render
    from render.image_io import to_srgb8

    sh = open_shard(reference, 1)
    records = json.loads((reference / "shard-00001" / "scenes.json").read_text())
    rec = records[1]
    assert rec["scene"] == 3
    scene = render.scene_from_dict(rec["description"])
    for v in range(3):
        m = sh.cameras[1, v].astype(np.float64)
        cam = render.Camera(tuple(m[:3, 3]), tuple(m[:3, 3] - m[:3, 2]), tuple(m[:3, 1]), float(sh.fov[1, v]), 16, 16)
        f = render.rasterize(scene, cam, directional_resolution=shadow_map_size(16), shadow_resolution=shadow_map_size(16))
        img = to_srgb8(f.rgb)
        # the camera rebuilt from a float32 matrix differs in the last bits: allow rare edge pixels
        assert (np.abs(img.astype(int) - sh.images[1, v].astype(int)).max(axis=-1) > 2).mean() < 0.02


def test_bad_settings_are_refused():
    from render.errors import RenderError

    with pytest.raises(RenderError, match="family 'rooms'.*renderer 'opengl'"):
        DatasetConfig("rooms", 1, 1, renderer="opengl").check()
    with pytest.raises(RenderError, match="max_depth -5; expected -1"):
        DatasetConfig("rooms_ring", 1, 1, renderer="path", max_depth=-5).check()
    with pytest.raises(RenderError, match="size 20000; expected at most 16384"):
        DatasetConfig("rooms_ring", 1, 1, size=20000).check()


def test_a_run_that_fails_before_its_first_shard_leaves_nothing_to_block_the_next(tmp_path, monkeypatch):
    # the manifest written up front used to stay, and the corrected command was refused as "other settings"
    import render.dataset as D
    from render.errors import RenderError

    def broken(config, out, index):
        raise RenderError("the renderer failed")

    with monkeypatch.context() as m:
        m.setattr(D, "_make_shard", broken)
        with pytest.raises(RenderError, match="renderer failed"):
            generate(DatasetConfig("rooms_ring", 2, 2, size=16, shard_size=2), tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()
    (tmp_path / "e").mkdir()
    with monkeypatch.context() as m:
        m.setattr(D, "_make_shard", broken)
        with pytest.raises(RenderError):
            generate(DatasetConfig("rooms_ring", 2, 2, size=16, shard_size=2), tmp_path / "e", progress=False)
    assert (tmp_path / "e").is_dir() and not any((tmp_path / "e").iterdir())  # the user's folder stays
    generate(DatasetConfig("rooms_ring", 2, 2, size=24, shard_size=2), tmp_path / "d", progress=False)
    assert verify(tmp_path / "d") == []


def test_both_renderers_store_paired_images(tmp_path):
    from neural.data import SceneViews

    cfg = DatasetConfig("cornell_box", scenes=1, views=2, size=16, renderer="both", spp=16, shard_size=1)
    generate(cfg, tmp_path, progress=False)
    sh = open_shard(tmp_path, 0)
    assert sh.images_path is not None and sh.images_path.shape == sh.images.shape == (1, 2, 16, 16, 3)
    a, b = sh.images.astype(float), sh.images_path.astype(float)
    assert np.abs(a - b).mean() > 1.0  # direct light only vs global illumination: not the same image
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5  # but the same scene from the same camera
    views = SceneViews(tmp_path, images="images_path")
    imgs, _ = views.gather(np.array([0]), np.array([[1, 0]]))
    np.testing.assert_array_equal(imgs[0, 0], sh.images_path[0, 1])
    assert contact_sheet(tmp_path, 1, tmp_path / "sheet.png", "images_path").is_file()
    from render.dataset import _sheet_title

    m = json.loads((tmp_path / "manifest.json").read_text())  # the sheet's title says which images it shows
    assert _sheet_title("d", m, "images_path") == "d: cornell_box, both (path-traced images), 16px, seed 0"
    assert _sheet_title("d", m, "images") == "d: cornell_box, both (raster images), 16px, seed 0"


def test_contact_sheet_of_path_images_needs_a_both_dataset(reference, tmp_path):
    with pytest.raises(ShardError, match="--renderer raster dataset .* --path-images is for --renderer both"):
        contact_sheet(reference, 1, tmp_path / "sheet.png", "images_path")


def test_path_datasets_keep_to_the_backend_they_started_on(tmp_path):
    """CUDA and the CPU round differently: the manifest records the path tracer's backend, and a
    resume or a merge with another backend is refused by name."""
    from render.pathtracer import init_backend

    cfg = DatasetConfig("cornell_box", scenes=2, views=1, size=8, renderer="path", spp=2, shard_size=1)
    m = generate(cfg, tmp_path / "one", progress=False)
    assert m["render_settings"]["path_backend"] == init_backend("auto")[0]
    other = "gpu" if m["render_settings"]["path_backend"] == "cpu" else "cpu"
    m["render_settings"]["path_backend"] = other
    (tmp_path / "one" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="render_settings.path_backend"):
        generate(cfg, tmp_path / "one", progress=False)
    # two halves of a distributed run rendered apart, one of them (as if) on the other backend
    parts = tmp_path / "parts"
    for i in range(2):
        generate(cfg, tmp_path / f"half{i}", shard_index=i, num_shards=2, progress=False)
        shutil.copytree(tmp_path / f"half{i}", parts, dirs_exist_ok=True)
    p1 = parts / "manifest.part-1-of-2.json"
    m1 = json.loads(p1.read_text())
    m1["render_settings"]["path_backend"] = other
    p1.write_text(json.dumps(m1))
    with pytest.raises(ShardError, match="render_settings.path_backend"):
        merge(parts)


def test_generate_cli_as_a_user_runs_it(tmp_path):
    out = tmp_path / "rooms"
    args = [sys.executable, "-m", "trirender", "dataset", "generate", "rooms_ring", "--scenes", "5", "--views", "2",
            "--size", "16", "--shard-size", "2", "--out", str(out)]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "5 scenes x 2 views in 3 shard(s)" in res.stdout
    assert "scene" in res.stderr and "100%" in res.stderr  # the progress bar
    res = subprocess.run([sys.executable, "-m", "trirender", "dataset", "show", str(out), "--out", str(tmp_path / "s.png")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and (tmp_path / "s.png").stat().st_size > 1000


def test_ctrl_c_keeps_the_finished_shards_and_says_how_to_resume(tmp_path):
    out = tmp_path / "d"
    # 2,000 scenes: several seconds, so the signal comes mid-run; the whole process group gets it, as
    # from a terminal (the parent and its worker)
    cmd = [sys.executable, "-m", "trirender", "dataset", "generate", "rooms_ring", "--scenes", "2000", "--views", "3",
           "--size", "16", "--shard-size", "20", "--workers", "2", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=sigint_as_from_a_terminal)
    t0 = time.time()
    while not (out / "shard-00001").is_dir() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err and "Traceback" not in err, err[-2000:]
    kept = json.loads((out / "manifest.json").read_text())["shards"]
    assert 1 <= len(kept) < 100
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert verify(out) == [] and len(json.loads((out / "manifest.json").read_text())["shards"]) == 100


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_dataset_workers_start_with_ctrl_c_blocked():
    # a Ctrl-C reaches the whole process group; a worker still importing (before its initializer
    # ignores SIGINT; seconds on a slow machine) printed a KeyboardInterrupt traceback, so workers
    # start with SIGINT blocked, and this process gets its own Ctrl-C back
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from render.dataset import _submit

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        assert _submit(pool, sigint_blocked).result()
        assert not sigint_blocked()
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        assert not pool.submit(sigint_blocked).result()  # (what the test tells apart)


def test_a_killed_worker_is_reported_in_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "trirender", "dataset", "generate", "rooms_ring", "--scenes", "2000", "--views", "3",
           "--size", "16", "--shard-size", "20", "--workers", "2", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / "shard-00001").is_dir() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.01)
    children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    workers = [int(c) for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert workers, children
    os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err[-2000:]
    assert "a worker process died" in err and "run the same command again to resume" in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert verify(out) == [] and len(json.loads((out / "manifest.json").read_text())["shards"]) == 100
