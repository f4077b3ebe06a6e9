"""Correctness of the z-buffer rasterizer against brute force and analytic answers (issue 3).

Each test compares against something computed independently of the rasterizer's kernels: a numpy
ray cast per pixel centre (render.raster_reference), exact uv from a ray-plane intersection, the
Lambert formula, or plain counting.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import render
from render.camera import Camera
from render.errors import RenderError
from render.raster_reference import reference_visibility
from render.rasterizer import coverage, rasterize, rasterize_batch
from render.scene import Environment, Light, Material, Scene, SceneObject


def make_scene(positions, materials, material_id=None, object_id=None, camera=None, lights=(), normals=None,
               uvs=None, textures=(), environment=None) -> Scene:
    """A Scene straight from a (T, 3, 3) triangle soup (flat normals unless given)."""
    p = np.asarray(positions, np.float32)
    T = p.shape[0]
    if normals is None:
        n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        normals = np.repeat(n[:, None, :], 3, axis=1)
    mid = np.zeros(T, np.int32) if material_id is None else np.asarray(material_id, np.int32)
    oid = np.arange(T, dtype=np.int32) if object_id is None else np.asarray(object_id, np.int32)
    return Scene(positions=p, normals=np.asarray(normals, np.float32),
                 uvs=np.zeros((T, 3, 2), np.float32) if uvs is None else np.asarray(uvs, np.float32),
                 material_id=mid, object_id=oid, materials=tuple(materials),
                 objects=tuple(SceneObject(f"o{k}", "mesh", "m") for k in range(int(oid.max()) + 1)),
                 lights=tuple(lights), environment=environment or Environment(),
                 cameras=(camera,) if camera else (), textures=tuple(textures))


def segment_distance(px, py, a, b):
    """Distance from points (px, py) to the 2D segment a-b (raster units)."""
    d = b - a
    L2 = max(float(d @ d), 1e-30)
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / L2, 0.0, 1.0)
    return np.hypot(px - (a[0] + t * d[0]), py - (a[1] + t * d[1]))


def near_reference_edge(ref_id: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 3x3 neighbourhood in a reference id map is not uniform."""
    pad = np.pad(ref_id, 1, mode="edge")
    h, w = ref_id.shape
    out = np.zeros_like(ref_id, bool)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            out |= pad[di:di + h, dj:dj + w] != ref_id
    return out


# --- visibility against brute force -------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_id_and_depth_match_brute_force_ray_cast(seed):
    """Random layered triangles (each in its own depth slab, so none intersect; random winding, a
    third one-sided): id and depth equal the ray cast on every pixel more than half a pixel from
    any projected edge."""
    rng = np.random.default_rng(seed)
    cam = Camera((0.0, 0.0, 0.0), (0.0, 0.0, -1.0), fov=50.0, width=61, height=47)
    tris = []
    for k in range(25):
        z = -(1.5 + 0.4 * k + rng.uniform(0.0, 0.3, 3))       # this triangle's slab
        half = -z * math.tan(math.radians(25.0)) * 1.4
        x = rng.uniform(-1, 1, 3) * half * cam.aspect
        y = rng.uniform(-1, 1, 3) * half
        tris.append(np.stack([x, y, z], 1))
    mats = (Material("two", "diffuse", albedo=(0.5, 0.5, 0.5)),
            Material("one", "diffuse", albedo=(0.5, 0.5, 0.5), two_sided=False))
    scene = make_scene(tris, mats, material_id=rng.integers(0, 2, len(tris)) * (rng.random(len(tris)) < 0.5),
                       camera=cam)
    frame = rasterize(scene, shadows=False)
    ref_id, ref_depth, _ = reference_visibility(scene)

    jj, ii = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    raster, _ = cam.project(scene.positions.astype(np.float64))
    near_edge = np.zeros(jj.shape, bool)
    for t in range(len(tris)):
        for a, b in ((0, 1), (1, 2), (2, 0)):
            near_edge |= segment_distance(jj, ii, raster[t, a], raster[t, b]) < 0.5
    keep = ~near_edge
    assert keep.sum() > 0.3 * keep.size
    assert (ref_id[keep] >= 0).sum() > 0.3 * keep.sum()  # mostly covered: the comparison has teeth
    np.testing.assert_array_equal(frame.object_id[keep], ref_id[keep])
    hit = keep & (ref_id >= 0)
    # Corners are snapped to 1/256 px, so depth is exact for a plane shifted by up to 1/512 px:
    # on these steep triangles that is ~1e-4 relative (screen-linear depth would be off by percent).
    np.testing.assert_allclose(frame.depth[hit], ref_depth[hit], rtol=3e-4)
    assert np.all(np.isinf(frame.depth[keep & (ref_id < 0)]))


def test_cornell_box_matches_brute_force():
    scene = render.cornell_box(width=64, height=64)
    frame = rasterize(scene)
    ref_id, ref_depth, _ = reference_visibility(scene)
    keep = ~near_reference_edge(ref_id)
    np.testing.assert_array_equal(frame.object_id[keep], ref_id[keep])
    np.testing.assert_allclose(frame.depth[keep], ref_depth[keep], rtol=3e-4)


# --- watertightness -------------------------------------------------------------------------------
def _grid_scene(cam: Camera, rng, cells=(9, 12), step=0.5):
    """A mesh tiling a plane 3 m in front of the camera beyond the screen edges. Vertices sit on a
    jittered grid quantised to ``step`` pixels, so many edges run exactly through pixel centres."""
    rows, cols = cells
    xs = np.linspace(-3.0, cam.width + 3.0, cols + 1)
    ys = np.linspace(-3.0, cam.height + 3.0, rows + 1)
    gx, gy = np.meshgrid(xs, ys)
    jitter = rng.integers(-3, 4, size=(2,) + gx.shape) * step
    gx = np.round((gx + jitter[0]) / step) * step
    gy = np.round((gy + jitter[1]) / step) * step
    gx[:, 0], gx[:, -1], gy[0], gy[-1] = -3.0, cam.width + 3.0, -3.0, cam.height + 3.0
    dirs = cam.ray_directions(gx, gy)                          # (R+1, C+1, 3)
    _, _, f = cam.basis()
    pts = np.asarray(cam.position) + dirs * (3.0 / (dirs @ f))[..., None]
    tris = []
    for i in range(rows):
        for j in range(cols):
            a, b, c, d = pts[i, j], pts[i, j + 1], pts[i + 1, j + 1], pts[i + 1, j]
            # Rows go down the screen: (a, d, c) is counter-clockwise seen from the camera.
            if rng.random() < 0.5:
                tris += [(a, d, c), (a, c, b)]
            else:
                tris += [(a, d, b), (b, d, c)]
    return np.asarray(tris, np.float32)


@pytest.mark.parametrize("step", [0.5, 1.0 / 256.0])
def test_grid_mesh_covers_every_pixel_exactly_once(step):
    rng = np.random.default_rng(7)
    cam = Camera((0.3, -0.2, 1.0), (0.5, 0.1, -2.0), fov=45.0, width=53, height=41)
    tris = _grid_scene(cam, rng, step=step)
    scene = make_scene(tris, (Material("one", "diffuse", albedo=(1, 1, 1), two_sided=False),), camera=cam)
    assert (scene.geometric_normals() @ (np.asarray(cam.position) - tris[:, 0].mean(0)) > 0).all()  # front
    cnt = coverage(scene)
    assert cnt.shape == (cam.height, cam.width)
    np.testing.assert_array_equal(cnt, np.ones_like(cnt))
    # The shaded render agrees: no background pixel anywhere.
    assert (rasterize(scene, shadows=False).object_id >= 0).all()


def test_closed_mesh_is_watertight():
    """A closed icosphere: every pixel is covered 0 or 2 times with culling off (front and back),
    0 or 1 time with culling on, and both cover the same pixels (no cracks on either side)."""
    from render.shapes import make_sphere, rotation_xyz

    p, _, _ = make_sphere(1.0, subdivisions=2, smooth=False)
    p = p @ rotation_xyz((17.0, 33.0, 5.0)).T * np.array([1.0, 0.8, 1.2]) + np.array([0.1, -0.05, -4.0])
    cam = Camera((0.0, 0.0, 0.0), (0.0, 0.0, -1.0), fov=40.0, width=64, height=56)
    scene = make_scene(p, (Material("one", "diffuse", albedo=(1, 1, 1), two_sided=False),), camera=cam)
    both = coverage(scene, cull=False)
    front = coverage(scene, cull=True)
    assert set(np.unique(both)) == {0, 2}
    assert set(np.unique(front)) == {0, 1}
    np.testing.assert_array_equal(both > 0, front > 0)
    assert (front > 0).sum() > 500


def test_triangle_crossing_the_near_plane_renders_its_visible_part():
    cam = Camera((0.0, 0.0, 0.0), (0.0, 0.0, -1.0), fov=60.0, width=48, height=48, near=0.1)
    # One corner behind the camera, two in front: a naive w-divide would flip or drop it.
    tri = np.array([[[-1.5, -0.8, -2.0], [1.5, -0.8, -2.0], [0.0, -0.3, 2.0]]])
    scene = make_scene(tri, (Material("m", "diffuse", albedo=(1, 1, 1)),), camera=cam)
    frame = rasterize(scene, shadows=False)
    ref_id, ref_depth, _ = reference_visibility(scene)
    keep = ~near_reference_edge(ref_id)
    assert (ref_id[keep] == 0).sum() > 200
    np.testing.assert_array_equal(frame.object_id[keep], ref_id[keep])
    hit = keep & (ref_id == 0)
    np.testing.assert_allclose(frame.depth[hit], ref_depth[hit], rtol=3e-4)
    # The clipped part reaches the bottom edge of the image (it passes under the camera).
    assert (frame.object_id[-1] == 0).any()


# --- interpolation and shading ----------------------------------------------------------------------
def test_perspective_correct_uv_on_a_steep_textured_quad():
    """A floor quad from 1 m to 21 m away seen at a grazing angle, textured with a ramp whose red
    channel is u and green is v (bilinear lookup reproduces a linear ramp exactly). Albedo must
    equal the exact uv of the ray-plane hit at each pixel centre; affine (screen-linear)
    interpolation would be off by up to ~0.3 here."""
    n = 64
    ramp = np.zeros((n, n, 3), np.float32)
    ramp[..., 0] = ((np.arange(n) + 0.5) / n)[None, :]
    ramp[..., 1] = (1.0 - (np.arange(n) + 0.5) / n)[:, None]       # v = 0 at the bottom row
    x0, x1, z0, z1 = -2.0, 2.0, -1.0, -21.0
    corners = np.array([[x0, -1.0, z0], [x1, -1.0, z0], [x1, -1.0, z1], [x0, -1.0, z1]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    tris = corners[[[0, 1, 2], [0, 2, 3]]]
    uvs = uv[[[0, 1, 2], [0, 2, 3]]]
    cam = Camera((0.1, 0.0, 0.0), (0.0, -0.35, -5.0), fov=60.0, width=64, height=48)
    mat = Material("tex", "diffuse", albedo=(1, 1, 1), texture=0)
    scene = make_scene(tris, (mat,), object_id=[0, 0], camera=cam, uvs=uvs, textures=(ramp,))
    frame = rasterize(scene, shadows=False)
    o, d = cam.pixel_rays()
    t = (-1.0 - o[1]) / d[..., 1]
    hx, hz = o[0] + t * d[..., 0], o[2] + t * d[..., 2]
    u, v = (hx - x0) / (x1 - x0), (hz - z0) / (z1 - z0)
    inside = (t > 0) & (u > 1.0 / n) & (u < 1 - 1.0 / n) & (v > 1.0 / n) & (v < 1 - 1.0 / n)
    assert inside.sum() > 500
    assert (frame.object_id[inside] == 0).all()
    # The far corners project near the horizon, where a 1/512 px snap of a corner moves uv by a few
    # 1e-4 (the error falls smoothly to 1e-5 near the camera); affine interpolation is off by > 0.1.
    np.testing.assert_allclose(frame.albedo[inside, 0], u[inside], atol=6e-4)
    np.testing.assert_allclose(frame.albedo[inside, 1], v[inside], atol=6e-4)
    near_rows = inside & (np.arange(cam.height)[:, None] > 40)
    assert near_rows.sum() > 100
    np.testing.assert_allclose(frame.albedo[near_rows, :2], np.stack([u, v], -1)[near_rows], atol=3e-5)


def _sphere_scene(shadows_light_dir, width=64, height=64):
    desc = {
        "camera": {"position": [0.0, 0.0, 3.5], "look_at": [0.0, 0.0, 0.0], "fov": 40.0,
                   "width": width, "height": height},
        "materials": {"m": {"type": "diffuse", "albedo": [0.6, 0.5, 0.4]}},
        "objects": [{"shape": "sphere", "radius": 1.0, "subdivisions": 4, "material": "m"}],
        "lights": [{"type": "directional", "direction": list(shadows_light_dir), "irradiance": [2.0, 1.0, 0.5]}],
    }
    return render.scene_from_dict(desc)


def test_lambert_sphere_under_directional_light():
    """rgb = albedo / pi * E * cos(theta) at every pixel, theta between the normal and the light."""
    direction = np.array([-0.4, -0.5, -0.6])
    scene = _sphere_scene(direction)
    frame = rasterize(scene, shadows=True)
    wi = -direction / np.linalg.norm(direction)
    cos = frame.normal @ wi
    # Near the terminator a facet can face away from the light while its smooth normal does not
    # (then the rasterizer, like a path tracer, gives no light): compare where cos is clearly > 0.
    lit = (frame.object_id == 0) & (cos > 0.25)
    assert lit.sum() > 800
    expect = np.asarray([0.6, 0.5, 0.4]) / np.pi * np.asarray([2.0, 1.0, 0.5]) * cos[lit, None]
    np.testing.assert_allclose(frame.rgb[lit], expect, rtol=1e-4, atol=1e-6)
    dark = (frame.object_id == 0) & (cos < 0.0)
    assert dark.sum() > 100 and np.all(frame.rgb[dark] == 0.0)
    # Normals are unit and close to the true sphere's (tessellation error only).
    o, d = scene.camera.pixel_rays()
    _, ref_depth, _ = reference_visibility(scene)
    _, _, f = scene.camera.basis()
    hit = np.isfinite(ref_depth) & (frame.object_id == 0)
    p = o + d * (ref_depth / (d @ f))[..., None]
    np.testing.assert_allclose(np.linalg.norm(frame.normal[hit], axis=-1), 1.0, atol=1e-5)
    assert np.abs(frame.normal[hit] - p[hit] / np.linalg.norm(p[hit], axis=-1, keepdims=True)).max() < 0.03


@pytest.mark.parametrize("light", ["directional", "point"])
def test_shadow_maps_shadow_without_acne(light):
    """A floor under a small occluder: pixels whose straight line to the light crosses the occluder
    are black, the rest equal the unshadowed render exactly (no acne, no leaks beyond a margin)."""
    floor = np.array([[-3, 0, 3], [3, 0, 3], [3, 0, -3], [-3, 0, 3], [3, 0, -3], [-3, 0, -3]], float).reshape(2, 3, 3)
    blocker = np.array([[-0.5, 1, 0.5], [0.5, 1, 0.5], [0.5, 1, -0.5], [-0.5, 1, 0.5], [0.5, 1, -0.5],
                        [-0.5, 1, -0.5]], float).reshape(2, 3, 3)
    if light == "directional":
        lt = Light("directional", direction=(0.0, -1.0, 0.0), irradiance=(3.0, 3.0, 3.0))
    else:
        lt = Light("point", position=(0.0, 2.0, 0.0), intensity=(5.0, 5.0, 5.0))
    cam = Camera((0.0, 4.0, 4.0), (0.0, 0.0, 0.0), fov=50.0, width=64, height=64)
    scene = make_scene(np.concatenate([floor, blocker]), (Material("m", "diffuse", albedo=(0.7, 0.7, 0.7)),),
                       object_id=[0, 0, 1, 1], camera=cam, lights=[lt])
    lit = rasterize(scene, shadows=True)
    free = rasterize(scene, shadows=False)
    o, d = cam.pixel_rays()
    on_floor = lit.object_id == 0
    t = -o[1] / d[..., 1]
    hp = o + d * t[..., None]
    # Where the ray from the floor point towards the light crosses y = 1.
    if light == "directional":
        cross = hp[..., [0, 2]]
    else:
        cross = hp[..., [0, 2]] * 0.5                       # halfway to a light at height 2
    margin = 0.08
    inside = on_floor & (np.abs(cross) < 0.5 - margin).all(-1)
    outside = on_floor & (np.abs(cross) > 0.5 + margin).any(-1)
    assert inside.sum() > 20 and outside.sum() > 500
    assert np.all(lit.rgb[inside] == 0.0)
    np.testing.assert_array_equal(lit.rgb[outside], free.rgb[outside])


def test_cornell_box_has_no_shadow_acne():
    """On the Cornell box, the upper back wall sees every light sample unoccluded: with shadow maps
    it must equal the unshadowed render (acne would darken scattered pixels)."""
    scene = render.cornell_box(width=128, height=128)
    shadowed = rasterize(scene, shadows=True)
    free = rasterize(scene, shadows=False)
    ratio = shadowed.rgb.sum(-1) / np.maximum(free.rgb.sum(-1), 1e-12)
    back = (shadowed.object_id == 2)
    # Upper half of the back wall: nothing between it and the light, so it is fully lit.
    # (The strip above the light's plane gets no light at all: leave it out.)
    upper = back & (np.arange(128)[:, None] < 45) & (free.rgb.sum(-1) > 1e-3)
    assert upper.sum() > 1000
    assert ratio[upper].min() > 0.999


def test_emitter_is_one_sided_and_emits_its_radiance():
    quad = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, -1, 0], [1, 1, 0], [-1, 1, 0]], float).reshape(2, 3, 3)
    mats = (Material("lamp", "emitter", radiance=(4.0, 2.0, 1.0), two_sided=False),)
    front_cam = Camera((0.0, 0.0, 3.0), (0.0, 0.0, 0.0), fov=30.0, width=16, height=16)
    back_cam = Camera((0.0, 0.0, -3.0), (0.0, 0.0, 0.0), fov=30.0, width=16, height=16)
    scene = make_scene(quad, mats, object_id=[0, 0], camera=front_cam)
    f = rasterize(scene)
    np.testing.assert_allclose(f.rgb[f.object_id == 0], np.tile([4.0, 2.0, 1.0], ((f.object_id == 0).sum(), 1)))
    assert (f.object_id == 0).sum() > 100
    b = rasterize(scene, back_cam)
    assert (b.object_id == -1).all()  # back-face culled: emitters are one-sided by default


def test_ssaa_is_a_box_filter_of_the_fine_render():
    scene = render.cornell_box(width=32, height=32)
    coarse = rasterize(scene, ssaa=2, shadows=False)
    fine = rasterize(scene, scene.camera.with_size(64, 64), shadows=False)
    box = fine.rgb.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(coarse.rgb, box, rtol=1e-5, atol=1e-6)
    assert coarse.meta["ssaa"] == 2


def test_batch_equals_single_views():
    scene_a = render.make_scene("rooms_ring", seed=3)
    scene_b = render.cornell_box(width=40, height=30)
    cams = render.families.rooms_ring_cameras(np.random.default_rng(0), 3, 32, 32)
    pairs = [(scene_a, c) for c in cams] + [(scene_b, None)]
    frames = rasterize_batch(pairs, shadows=True)
    assert [f.rgb.shape for f in frames] == [(32, 32, 3)] * 3 + [(30, 40, 3)]
    for (s, c), f in zip(pairs, frames):
        one = rasterize(s, c, shadows=True)
        np.testing.assert_array_equal(f.object_id, one.object_id)
        np.testing.assert_array_equal(f.rgb, one.rgb)
        np.testing.assert_array_equal(f.depth, one.depth)
        assert f.meta["renderer"] == "raster"


@pytest.mark.skipif(__import__("numba").config.NUMBA_NUM_THREADS < 2, reason="row bands need 2 threads")
@pytest.mark.parametrize("ssaa", [1, 2])
def test_a_view_split_into_row_bands_equals_the_serial_render(ssaa):
    """A tall single view runs as one row band per thread; each band must see exactly the triangles
    and shadow maps the whole frame sees (odd height: bands of unequal size)."""
    from render.rasterizer import BAND_MIN_ROWS

    spheres = render.scene_from_dict({  # thousands of small triangles: bands cull whole chunks of them
        "camera": {"position": [0, 0.3, 3.2], "look_at": [0, 0, 0], "fov": 50, "width": 120,
                   "height": BAND_MIN_ROWS + 41},
        "materials": {"m": {"type": "diffuse", "albedo": [0.7, 0.5, 0.3]}},
        "objects": [{"shape": "sphere", "radius": 0.6, "subdivisions": 4, "material": "m", "translate": [x, y, 0]}
                    for x, y in ((-0.7, 0.7), (0.7, -0.7), (0.0, 0.0))],
        "lights": [{"type": "directional", "direction": [-0.3, -1, -0.4], "irradiance": [2, 2, 2]}]})
    for scene in (render.cornell_box(width=160, height=BAND_MIN_ROWS + 3),
                  render.make_scene("rooms_ring", seed=5, width=150, height=BAND_MIN_ROWS + 17), spheres):
        banded = rasterize(scene, ssaa=ssaa, shadows=True)
        serial = rasterize(scene, ssaa=ssaa, shadows=True, parallel=False)
        assert (banded.object_id >= 0).mean() > 0.4
        for name in ("rgb", "depth", "normal", "albedo", "object_id"):
            np.testing.assert_array_equal(getattr(banded, name), getattr(serial, name), err_msg=name)


def test_rasterize_rgb_equals_the_frames_rgb():
    """The images-only entry point (no AOV buffers) gives the same numbers on every code path:
    parallel views, one serial view, and a tall view split into row bands."""
    from render.rasterizer import BAND_MIN_ROWS, rasterize_rgb

    scene = render.make_scene("rooms_ring", seed=2)
    cams = render.families.rooms_ring_cameras(np.random.default_rng(1), 5, 24, 24)
    tall = render.cornell_box(width=64, height=BAND_MIN_ROWS + 9)
    pairs = [(scene, c) for c in cams] + [(tall, None)]
    for parallel in (True, False):
        rgbs = rasterize_rgb(pairs, parallel=parallel)
        frames = [rasterize(s, c, parallel=parallel) for s, c in pairs]
        assert [r.shape for r in rgbs] == [f.rgb.shape for f in frames]
        for r, f in zip(rgbs, frames):
            assert r.dtype == np.float32 and r.max() > 0
            np.testing.assert_array_equal(r, f.rgb)


def test_pack_cache_drops_dead_scenes_and_stays_within_its_budget(monkeypatch):
    import gc

    from render import rasterizer as R

    scene = render.make_scene("rooms_ring", seed=4, width=16, height=16)
    rasterize(scene)
    keys = [k for k in R._PACK_CACHE if k[0] == id(scene)]
    assert keys
    del scene
    gc.collect()
    assert not any(k in R._PACK_CACHE for k in keys)
    monkeypatch.setattr(R, "PACK_CACHE_BYTES", 1)  # every new pack evicts all older ones
    scenes = [render.make_scene("rooms_ring", seed=s, width=16, height=16) for s in range(3)]
    for s in scenes:
        rasterize(s)
    assert len(R._PACK_CACHE) == 1 and next(iter(R._PACK_CACHE))[0] == id(scenes[-1])
    assert R._pack_cache_bytes == next(iter(R._PACK_CACHE.values()))[2]


def test_output_pool_reuses_dropped_frames_and_never_a_kept_one(monkeypatch):
    from render import rasterizer as R

    a = render.make_scene("rooms_ring", seed=5, width=24, height=24)
    b = render.make_scene("rooms_ring", seed=6, width=24, height=24)
    kept = rasterize(a)
    expect = {name: getattr(kept, name).copy() for name in ("rgb", "depth", "normal", "albedo", "object_id")}
    rgb_view = kept.rgb[2:5]  # a slice alone must keep its memory from being handed out
    del kept
    other = rasterize(b)
    assert not np.shares_memory(other.rgb, rgb_view)
    np.testing.assert_array_equal(rgb_view, expect["rgb"][2:5])
    again = rasterize(a)
    for name, want in expect.items():  # and rendering the same view again gives the same numbers
        np.testing.assert_array_equal(getattr(again, name), want, err_msg=name)

    # A dropped frame's memory is what the next render of that size writes to (no fresh pages).
    address = other.rgb.__array_interface__["data"][0]
    del other
    assert rasterize(b).rgb.__array_interface__["data"][0] == address

    monkeypatch.setattr(R, "POOL_BYTES", 24 * 24 * 3 * 4)  # one rgb image at most
    for size in (8, 12, 16):
        rasterize(a, a.camera.with_size(size, size))
    assert R._pool_bytes <= R.POOL_BYTES
    assert R._pool_bytes == sum(x.nbytes for arrays in R._POOL.values() for x in arrays)


def test_threads_rendering_at_once_get_their_own_outputs():
    from concurrent.futures import ThreadPoolExecutor

    scenes = [render.make_scene("rooms_ring", seed=s, width=32, height=32) for s in range(6)]
    want = [rasterize(s).rgb.copy() for s in scenes]
    with ThreadPoolExecutor(3) as pool:
        frames = list(pool.map(lambda s: rasterize(s, parallel=False), scenes * 3))
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(f.rgb, want[k % len(scenes)])


def test_the_serial_views_kernel_lets_other_threads_run(monkeypatch):
    # a dataset worker gets its next shard from a thread of the calling process; while this
    # process held the GIL through a shard's serial render (~0.3 s), that thread could not run
    import threading
    import time

    from render import raster_kernels as K
    from render.rasterizer import rasterize_rgb

    scene = render.make_scene("rooms_ring", seed=1, width=64, height=64)
    pairs = [(scene, scene.camera)] * 400
    rasterize_rgb(pairs[:2], parallel=False)  # compiled (or loaded) before the clock starts
    ticks, stop, during = [0], threading.Event(), []

    def tick():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    kernel = K.render_views_serial

    def timed(*args):
        n0, t0 = ticks[0], time.perf_counter()
        kernel(*args)
        during.append((ticks[0] - n0, time.perf_counter() - t0))

    monkeypatch.setattr(K, "render_views_serial", timed)
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        rasterize_rgb(pairs, parallel=False)
    finally:
        stop.set()
        ticker.join()
    (n, seconds), = during
    assert seconds > 0.02 and n >= 5, (n, seconds)  # with the GIL held: no tick at all


def test_shadow_maps_rendered_serially_equal_the_parallel_ones(monkeypatch):
    # one face (a directional light), or one numba thread, renders the maps on the calling thread:
    # launching the parallel loop cost ~0.4 ms, more than a dataset view's 256^2 map takes
    import numba

    from render import raster_kernels as K
    from render import rasterizer as R

    base = render.cornell_box()
    scene = dataclasses.replace(base, lights=(Light("point", position=(0.1, 1.2, 0.2), intensity=(1, 1, 1)),
                                              Light("directional", direction=(0.3, -1, 0.2), irradiance=(1, 1, 1))))
    pos = np.array(scene.positions, np.float32)
    _, _, faces, size = R._scene_lights(scene, pos, True, 4, 64, 128)
    assert len(faces) > 7  # the point light's cube, the directional map, the emitter's samples' cubes
    maps = [np.full(size, np.inf, np.float32) for _ in range(2)]
    for m, parallel in zip(maps, (False, True)):
        R._render_shadow_maps(K.corner_rows(pos), K.chunk_bounds(pos), len(pos), faces, m, parallel)
    assert np.isfinite(maps[0]).mean() > 0.3
    np.testing.assert_array_equal(maps[0], maps[1])
    calls = []
    monkeypatch.setattr(K, "render_shadow_maps", lambda *a: calls.append("parallel"))
    monkeypatch.setattr(K, "render_shadow_maps_serial", lambda *a: calls.append("serial"))
    threads = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            for some in (faces[:1], faces):
                R._render_shadow_maps(K.corner_rows(pos), K.chunk_bounds(pos), len(pos), some, maps[0])
    finally:
        numba.set_num_threads(threads)
    several = "parallel" if numba.config.NUMBA_NUM_THREADS > 1 else "serial"
    assert calls == ["serial", "serial", "serial", several]


# --- bad input -------------------------------------------------------------------------------------
def test_resolution_too_large_is_refused_clearly():
    scene = render.cornell_box()
    with pytest.raises(RenderError, match="GiB"):
        rasterize(scene, scene.camera.with_size(300_000, 300_000))
    with pytest.raises(RenderError, match="ssaa"):
        rasterize(scene, ssaa=3)


def test_camera_inside_near_plane_gives_empty_frame_and_warning():
    scene = render.cornell_box(width=24, height=24)
    c = scene.camera
    cam = Camera(c.position, c.look_at, c.up, c.fov, 24, 24, near=50.0, far=100.0)
    with pytest.warns(UserWarning, match="near plane"):
        frame = rasterize(scene, cam)
    assert (frame.object_id == -1).all() and np.isinf(frame.depth).all() and (frame.rgb == 0).all()
    assert frame.meta["renderer"] == "raster"
    lit = dataclasses.replace(scene, environment=Environment(radiance=(0.25, 0.5, 1.0)))
    with pytest.warns(UserWarning, match="near plane"):
        frame = rasterize(lit, cam)
    np.testing.assert_allclose(frame.rgb, np.broadcast_to([0.25, 0.5, 1.0], frame.rgb.shape))  # the background


def test_every_triangle_behind_the_near_plane_warns_even_when_the_box_straddles_it():
    """The cheap bounding-box test cannot decide here (a box corner lies beyond the near plane,
    though no triangle does), so the exact per-triangle test must run and warn."""
    # looking along (1, 0, -1): each triangle is 0.5-0.7 m ahead, 0.55 m to a side, but the box
    # spanning both has a corner 1.15 m ahead
    tris = [[(0.81, -0.15, -0.185), (0.81, -0.15, 0.115), (0.81, 0.15, -0.035)],
            [(-0.115, -0.15, -0.81), (0.185, -0.15, -0.81), (0.035, 0.15, -0.81)]]
    cam = Camera((0.0, 0.0, 0.0), (1.0, 0.0, -1.0), fov=100.0, width=16, height=16, near=1.0)
    scene = make_scene(tris, (Material("m", "diffuse"),), camera=cam)
    with pytest.warns(UserWarning, match="near plane"):
        frame = rasterize(scene)
    assert (frame.object_id == -1).all()
    front = Camera((0.0, 0.0, 0.0), (1.0, 0.0, -1.0), fov=100.0, width=16, height=16, near=0.01)
    assert (rasterize(scene, front).object_id >= 0).any()  # the same triangles, drawn with a nearer plane


def test_meta_and_aovs():
    scene = render.cornell_box(width=32, height=32)
    frame = rasterize(scene, ssaa=1, shadows=False)
    for key in ("renderer", "ssaa", "shadows", "compile_seconds", "render_seconds"):
        assert key in frame.meta
    assert frame.rgb.dtype == np.float32 and frame.object_id.dtype == np.int32
    covered = frame.object_id >= 0
    assert np.isinf(frame.depth[~covered]).all() and (frame.normal[~covered] == 0).all()
    # Albedo is the material's base colour: the red wall's pixels show the red albedo.
    red = frame.object_id == 4
    np.testing.assert_allclose(frame.albedo[red], np.tile([0.570068, 0.0430135, 0.0443706], (red.sum(), 1)),
                               rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cornell", "rooms_ring"])
def test_aovs_agree_with_the_path_tracer(name):
    """DESIGN.md: on the same scene and camera, raster and path-traced depth, normal and id agree
    except on silhouette pixels (slow: compiles the path tracer's Taichi kernels)."""
    pathtrace = pytest.importorskip("render.pathtracer").pathtrace
    scene = render.cornell_box(width=48, height=48) if name == "cornell" else render.make_scene(name, seed=2)
    r = rasterize(scene)
    p = pathtrace(scene, spp=1, seed=0)
    ref_id, _, _ = reference_visibility(scene)
    keep = ~near_reference_edge(ref_id)
    np.testing.assert_array_equal(r.object_id[keep], p.object_id[keep])
    hit = keep & (ref_id >= 0)
    np.testing.assert_allclose(r.depth[hit], p.depth[hit], rtol=3e-4)
    np.testing.assert_allclose(r.normal[hit], p.normal[hit], atol=2e-3)
    np.testing.assert_allclose(r.albedo[hit], p.albedo[hit], atol=1e-6)


def test_frames_larger_than_the_buffer_pool_render(monkeypatch):
    # a buffer too large to pool left an empty list in the pool, and trimming the pool then popped
    # from it (4096 x 4096 frames crashed with IndexError)
    import render.rasterizer as R

    scene = render.cornell_box(width=48, height=48)
    small = rasterize(scene, scene.camera.with_size(16, 16)).rgb  # pooled buffers of another shape
    monkeypatch.setattr(R, "POOL_BYTES", 48 * 48 * 4 * 2)  # smaller than some of a 48 x 48 frame's buffers
    frames = [rasterize(scene) for _ in range(2)]
    np.testing.assert_array_equal(frames[0].rgb, frames[1].rgb)
    assert frames[0].rgb.mean() > 0.05 and small.mean() > 0.05
    assert R._pool_bytes <= R.POOL_BYTES
