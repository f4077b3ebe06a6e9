import math

import numpy as np
import pytest

from render import Camera


def cam(**kw):
    base = dict(position=(1.0, 2.0, 5.0), look_at=(0.2, 0.5, -0.3), up=(0, 1, 0), fov=50.0, width=160, height=90)
    base.update(kw)
    return Camera(**base)


def test_projected_point_and_ray_through_that_pixel_agree():
    c = cam()
    rng = np.random.default_rng(0)
    px = rng.uniform(0, c.width, 200)
    py = rng.uniform(0, c.height, 200)
    d = c.ray_directions(px, py)
    t = rng.uniform(0.5, 20.0, 200)[:, None]
    pts = np.asarray(c.position) + t * d
    raster, depth = c.project(pts)
    np.testing.assert_allclose(raster[:, 0], px, atol=1e-9)
    np.testing.assert_allclose(raster[:, 1], py, atol=1e-9)
    # depth is the distance along the forward axis, not along the ray
    _, _, f = c.basis()
    np.testing.assert_allclose(depth, (t * d) @ f, rtol=1e-12)


def test_opengl_matrices_project_like_the_camera():
    c = cam(near=0.1, far=50.0)
    rng = np.random.default_rng(1)
    pts = np.asarray(c.look_at) + rng.normal(size=(100, 3))
    h = np.c_[pts, np.ones(len(pts))] @ (c.projection_matrix() @ c.view_matrix()).T
    ndc = h[:, :3] / h[:, 3:]
    raster, depth = c.project(pts)
    np.testing.assert_allclose((ndc[:, 0] + 1) / 2 * c.width, raster[:, 0], atol=1e-8)
    np.testing.assert_allclose((1 - ndc[:, 1]) / 2 * c.height, raster[:, 1], atol=1e-8)
    np.testing.assert_allclose(h[:, 3], depth, rtol=1e-12)  # clip w = forward distance
    # near and far planes map to ndc z = -1 and +1
    _, _, f = c.basis()
    for dist, z in ((0.1, -1.0), (50.0, 1.0)):
        p = np.r_[np.asarray(c.position) + dist * f, 1.0]
        q = c.projection_matrix() @ c.view_matrix() @ p
        assert q[2] / q[3] == pytest.approx(z, abs=1e-9)


def test_camera_to_world_looks_down_minus_z_and_centre_ray_hits_look_at():
    c = cam()
    m = c.camera_to_world()
    f = np.subtract(c.look_at, c.position)
    np.testing.assert_allclose(-m[:3, 2], f / np.linalg.norm(f), atol=1e-12)
    np.testing.assert_allclose(c.ray_directions(np.array(c.width / 2), np.array(c.height / 2)), -m[:3, 2], atol=1e-12)
    # row 0 is the top: a ray through the top row points more "up" than the centre one
    o, d = c.pixel_rays()
    assert d.shape == (c.height, c.width, 3)
    assert d[0, c.width // 2] @ m[:3, 1] > 0 > d[-1, c.width // 2] @ m[:3, 1]
    assert d[c.height // 2, -1] @ m[:3, 0] > 0 > d[c.height // 2, 0] @ m[:3, 0]


def test_vertical_fov():
    c = cam(fov=60.0, width=300, height=100)
    top = c.ray_directions(np.array(150.0), np.array(0.0))
    _, u, f = c.basis()
    assert math.degrees(math.atan2(top @ u, top @ f)) == pytest.approx(30.0)


def test_viewpoint_is_position_yaw_pitch():
    c = Camera((0, 1, 0), (1, 2, 0), (0, 1, 0), 45.0, 8, 8)  # looking along +x, 45 degrees up
    v = c.viewpoint()
    assert v.dtype == np.float32 and v.shape == (7,)
    np.testing.assert_allclose(v, [0, 1, 0, 0, 1, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-6)


@pytest.mark.parametrize("kw,words", [
    (dict(look_at=(1.0, 5.0, 5.0), up=(0, 1, 0)), "up"),
    (dict(look_at=(1.0, 2.0, 5.0)), "look_at"),
    (dict(fov=180.0), "fov"),
    (dict(width=0), "size"),
    (dict(position=(math.nan, 0, 0)), "finite"),
])
def test_bad_cameras_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        cam(**kw)
