import numpy as np
import pytest

from render import Frame, read_image, write_image
from render.image_io import srgb_decode, srgb_encode, to_srgb8


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


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    write_image(tmp_path / "a.png", np.zeros((2, 2, 3), np.float32))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o666 & ~mask
