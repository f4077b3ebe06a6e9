import json
import math
import subprocess
import sys

import numpy as np
import pytest

from render import Frame, write_image
from render.metrics import aov_agreement, compare, display, psnr, ssim


def frame(rng, h=24, w=32):
    f = Frame.empty(h, w)
    f.rgb[:] = rng.random((h, w, 3), dtype=np.float32)
    f.depth[:] = rng.uniform(1, 5, (h, w))
    n = rng.normal(size=(h, w, 3))
    f.normal[:] = n / np.linalg.norm(n, axis=-1, keepdims=True)
    f.object_id[:] = rng.integers(-1, 4, (h, w))
    f.depth[f.object_id < 0] = np.inf
    f.normal[f.object_id < 0] = 0
    return f


def test_identical_frames():
    f = frame(np.random.default_rng(0))
    c = compare(f, f)
    assert c.psnr == math.inf and c.ssim == pytest.approx(1.0) and c.rmse == 0.0 and c.mae == 0.0
    assert c.aov == {"id": 1.0, "depth": 1.0, "normal": 1.0}
    assert c.error_map.shape == (24, 32) and not c.error_map.any()


def test_known_perturbation_gives_known_psnr_and_rmse():
    a = np.full((10, 10, 3), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01 on a data range of 1
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    lin = np.full((8, 8, 3), 0.2, np.float32)
    c = compare(lin, lin + np.float32(0.05))
    assert c.rmse == pytest.approx(0.05, rel=1e-5) and c.mae == pytest.approx(0.05, rel=1e-5)
    assert c.psnr == pytest.approx(psnr(display(lin), display(lin + np.float32(0.05))))


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.random((40, 50, 3))
    for noise in (0.02, 0.1, 0.3):
        b = np.clip(a + rng.normal(0, noise, a.shape), 0, 1)
        want = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=-1)
        assert ssim(a, b) == pytest.approx(want, abs=1e-9)


def test_aov_agreement_counts_disagreeing_pixels():
    rng = np.random.default_rng(2)
    a = frame(rng)
    b = Frame(a.rgb.copy(), a.depth.copy(), a.normal.copy(), a.albedo.copy(), a.object_id.copy())
    hit = np.argwhere(a.object_id >= 0)
    r, c = hit[0]
    b.object_id[r, c] += 1
    b.depth[r, c] *= 1.05
    b.normal[r, c] = -b.normal[r, c]
    n = a.depth.size
    assert aov_agreement(a, b) == pytest.approx({"id": 1 - 1 / n, "depth": 1 - 1 / n, "normal": 1 - 1 / n})


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match="32x24 vs 16x24"):
        compare(np.zeros((24, 32, 3)), np.zeros((24, 16, 3)))


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trirender", *args], capture_output=True, text=True, cwd=cwd)


def test_compare_cli_writes_the_picture_and_numbers(tmp_path):
    res = run("compare", "cornell_box", "--width", "48", "--height", "40", "--spp", "4", "--ssaa", "1",
              "--out", str(tmp_path / "c.png"), "--json", str(tmp_path / "c.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    import imageio.v3 as iio

    img = iio.imread(tmp_path / "c.png")
    assert img.ndim == 3 and img.shape[1] > 2 * img.shape[0]  # three panels side by side
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["width"] == 48 and data["height"] == 40 and data["path"]["spp"] == 4
    m = data["raster_vs_path"]
    assert 0 < m["psnr"] < 60 and 0 < m["ssim"] < 1 and m["rmse"] > 0
    assert m["aov"]["id"] > 0.9  # same geometry and camera: ids agree off the silhouettes


def test_compare_cli_bad_arguments(tmp_path):
    write_image(tmp_path / "small.exr", np.zeros((8, 8, 3), np.float32))
    res = run("compare", "cornell_box", "--reference", str(tmp_path / "missing.exr"), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "missing.exr: file not found" in " ".join(res.stderr.split())
    res = run("compare", "cornell_box", "--reference", str(tmp_path / "small.exr"), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "image is 8x8; expected 256x256" in " ".join(res.stderr.split())
    res = run("render", "cornell_box", "--renderer", "opengl")
    assert res.returncode == 2 and "opengl" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.png").exists()


def test_convergence_cli(tmp_path):
    res = run("convergence", "cornell_box", "--max-spp", "4", "--width", "24", "--height", "24",
              "--out", str(tmp_path / "conv.png"), "--json", str(tmp_path / "conv.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "conv.json").read_text())
    assert data["spp"] == [1, 2, 4] and data["reference"] == "path tracer, 64 spp"
    assert all(0 < r < 1 for r in data["rmse"]) and data["rmse"][2] < 0.7 * data["rmse"][0]  # 4x the samples: ~half the error
    assert 0 < data["raster_rmse"] < 1
    assert (tmp_path / "conv.png").stat().st_size > 5000


def test_compare_with_a_neural_column(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "run"
    res = run("dataset", "generate", "rooms_ring", "--scenes", "4", "--views", "3", "--size", "64", "--out", str(data))
    assert res.returncode == 0, res.stderr[-2000:]
    res = run("train", str(data), "--preset", "tiny", "--steps", "1", "--batch", "2", "--device", "cpu",
              "--no-progress", "--out", str(runs))
    assert res.returncode == 0, res.stderr[-2000:]
    res = run("compare", "rooms_ring", "--neural", str(runs), "--spp", "2", "--ssaa", "1", "--width", "128",
              "--out", str(tmp_path / "c.png"), "--json", str(tmp_path / "c.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["width"] == data["height"] == 64  # the model's image size, said to override --width
    assert "note: --width/--height ignored: with --neural every image is at the model's size, 64x64" in res.stderr
    assert 0 < data["neural"]["psnr"] < 60 and data["neural"]["context"] == 3
    import imageio.v3 as iio

    img = iio.imread(tmp_path / "c.png")
    assert img.shape[1] > 3 * img.shape[0]  # four panels
    res = run("compare", "rooms_ring", "--neural", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "not a training run folder" in res.stderr
