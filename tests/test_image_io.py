import numpy as np
import pytest

from render import Frame, read_image, write_image
from render.image_io import srgb8_reference, srgb_decode, srgb_encode, to_srgb8
from render.srgb8 import tables, to_srgb8_fast


def test_exr_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((17, 23, 3)) * 100).astype(np.float32)
    img[0, 0] = [np.inf, 0.0, 1e-30]
    write_image(tmp_path / "a.exr", img)
    back = read_image(tmp_path / "a.exr")
    assert back.dtype == np.float32 and back.shape == img.shape
    np.testing.assert_array_equal(back, img)
    write_image(tmp_path / "d.exr", img[..., 0])
    np.testing.assert_array_equal(read_image(tmp_path / "d.exr"), img[..., 0])


def test_png_is_srgb_8bit(tmp_path):
    lin = np.linspace(0, 1, 256, dtype=np.float32)
    img = np.stack([lin, lin, lin], -1)[None].repeat(2, 0)
    write_image(tmp_path / "a.png", img)
    back = read_image(tmp_path / "a.png")
    assert back.shape == img.shape
    np.testing.assert_allclose(back, img, atol=0.0075)  # 8-bit quantisation in sRGB space
    raw = read_image(tmp_path / "a.png", linear=False)
    assert raw[0, 128, 0] == pytest.approx(srgb_encode(np.float32(lin[128])), abs=1 / 255)
    assert to_srgb8(np.array([0.5]))[0] == 188  # linear 0.5 is sRGB 188/255


def test_srgb8_table_gives_the_reference_codes():
    first, step = tables()
    steps = step[step < 2.0]
    assert np.unique(first).size == 256 and steps.size >= 200  # every code appears; most steps fall inside a bucket
    # each code step and the 64 floats on either side (a misplaced step would show there), an even
    # grid of 2**22 values over [0, 1], random values
    bits = steps.view(np.int32)[:, None] + np.arange(-64, 65, dtype=np.int32)[None]
    rng = np.random.default_rng(1)
    x = np.concatenate([bits.ravel().view(np.float32), np.linspace(0, 1, 2**22, dtype=np.float32),
                        rng.random(100_000, dtype=np.float32)])
    x = np.clip(x, 0, 1)
    np.testing.assert_array_equal(to_srgb8_fast(x), srgb8_reference(x))
    # outside [0, 1], float64 input, shapes
    odd = np.array([-np.inf, -1.0, -0.0, 1.0, 1.5, np.inf, 1e-45, 0.0031308, 0.5], np.float64)
    np.testing.assert_array_equal(to_srgb8_fast(odd), srgb8_reference(odd))
    assert to_srgb8_fast(np.array([np.nan]))[0] == 0
    img = rng.random((3, 5, 7, 3)) * 1.3 - 0.1
    assert to_srgb8_fast(img).shape == img.shape and to_srgb8_fast(img).dtype == np.uint8
    np.testing.assert_array_equal(to_srgb8_fast(img), srgb8_reference(img))
    np.testing.assert_array_equal(to_srgb8(img), srgb8_reference(img))  # whichever way to_srgb8 goes
    assert np.shape(to_srgb8_fast(0.5)) == () and to_srgb8_fast(0.5) == srgb8_reference(0.5) == 188


@pytest.mark.slow
def test_srgb8_table_matches_the_reference_on_every_float_in_0_1():
    one = int(np.float32(1).view(np.int32))
    for start in range(0, one + 1, 1 << 24):
        x = np.arange(start, min(start + (1 << 24), one + 1), dtype=np.int32).view(np.float32)
        bad = np.flatnonzero(to_srgb8_fast(x) != srgb8_reference(x))
        assert bad.size == 0, f"{bad.size} floats from {x[bad[0]]!r} get another code"


def test_srgb_curves_invert_each_other():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(srgb_decode(srgb_encode(x)), x, atol=1e-6)


def test_frame_save_writes_aovs_beside_the_image(tmp_path):
    f = Frame.empty(4, 5)
    f.rgb[:] = 0.25
    f.depth[1, 2] = 3.5
    f.object_id[1, 2] = 7
    paths = f.save(tmp_path / "img.exr", ("depth", "normal", "albedo", "id"))
    assert [p.name for p in paths] == ["img.exr", "img.depth.exr", "img.normal.exr", "img.albedo.exr", "img.id.png"]
    assert read_image(tmp_path / "img.depth.exr")[1, 2] == 3.5
    import imageio.v3 as iio

    ids = iio.imread(tmp_path / "img.id.png")
    assert ids.dtype == np.uint16 and ids[1, 2] == 8 and ids[0, 0] == 0  # id + 1; background 0
    with pytest.raises(ValueError, match="unknown AOV"):
        f.save(tmp_path / "x.png", ("speed",))


def test_writes_are_atomic(tmp_path):
    target = tmp_path / "keep.exr"
    write_image(target, np.ones((2, 2, 3), np.float32))
    with pytest.raises(ValueError):
        write_image(target, np.ones((2, 2, 5), np.float32))  # refused: the old file must survive
    np.testing.assert_array_equal(read_image(target), np.ones((2, 2, 3), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.exr"]


def test_a_write_that_fails_halfway_leaves_the_old_file(tmp_path, monkeypatch):
    import render.image_io as image_io

    target = tmp_path / "keep.png"
    write_image(target, np.full((2, 2, 3), 0.5, np.float32))
    before = target.read_bytes()

    def dies_halfway(path, *args, **kwargs):  # the disk fills up (or the process is killed) mid-write
        with open(path, "wb") as f:
            f.write(before[:10])
        raise OSError("No space left on device")

    monkeypatch.setattr(image_io.iio, "imwrite", dies_halfway)
    with pytest.raises(OSError, match="No space"):
        write_image(target, np.zeros((2, 2, 3), np.float32))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    write_image(tmp_path / "a.png", np.zeros((2, 2, 3), np.float32))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~mask
