"""The BVH must return exactly what testing every triangle returns (render.bvh's brute force)."""

import numpy as np
import pytest

import render
from render.bvh import build_bvh, intersect_brute_force, intersect_bvh


def _random_soup(rng, n, spread=2.0, size=0.3):
    centres = rng.uniform(-spread, spread, (n, 1, 3))
    return centres + rng.normal(0.0, size, (n, 3, 3))


def _random_rays(rng, n, spread=3.0):
    o = rng.uniform(-spread, spread, (n, 3))
    d = rng.normal(size=(n, 3))
    return o, d / np.linalg.norm(d, axis=1, keepdims=True)


def _check_tree(bvh, positions):
    # every triangle sits in exactly one leaf, and every node's box contains its triangles
    assert sorted(bvh.tri_index.tolist()) == list(range(len(positions)))
    leaves = bvh.node_b > 0
    assert bvh.node_b[leaves].sum() == len(positions)
    for node in np.flatnonzero(leaves):
        tris = positions[bvh.tri_index[bvh.node_a[node]:bvh.node_a[node] + bvh.node_b[node]]].reshape(-1, 3)
        assert (tris >= bvh.node_lo[node]).all() and (tris <= bvh.node_hi[node]).all()
    inner = np.flatnonzero(~leaves)
    for node in inner:  # children's boxes lie inside the parent's
        for child in (node + 1, bvh.node_a[node]):
            assert (bvh.node_lo[child] >= bvh.node_lo[node]).all() and (bvh.node_hi[child] <= bvh.node_hi[node]).all()


@pytest.mark.parametrize("n_tri", [1, 2, 7, 300, 3000])
def test_bvh_matches_brute_force_on_random_rays(n_tri):
    rng = np.random.default_rng(n_tri)
    positions = _random_soup(rng, n_tri)
    bvh = build_bvh(positions)
    _check_tree(bvh, positions)
    o, d = _random_rays(rng, 400)
    # plus 100 rays aimed at random triangles' centroids, so every size has many hits to get right
    aim = positions[rng.integers(0, n_tri, 100)].mean(axis=1) - o[:100]
    o, d = np.concatenate([o, o[:100]]), np.concatenate([d, aim / np.linalg.norm(aim, axis=1, keepdims=True)])
    t_ref, tri_ref = intersect_brute_force(positions, o, d)
    t, tri = intersect_bvh(bvh, positions, o, d)
    assert (tri_ref >= 0).sum() >= 100
    np.testing.assert_array_equal(tri, tri_ref)
    np.testing.assert_allclose(t, t_ref, rtol=1e-9)


def test_bvh_respects_t_max_and_degenerate_input():
    rng = np.random.default_rng(1)
    base = _random_soup(rng, 50)
    positions = np.concatenate([base, np.repeat(base[:1], 20, axis=0)])  # 20 duplicates: same centroid
    bvh = build_bvh(positions)
    _check_tree(bvh, positions)
    assert bvh.node_b.max() <= 4
    o, d = _random_rays(rng, 300)
    for t_max in (0.5, 2.0):
        t_ref, tri_ref = intersect_brute_force(positions, o, d, t_max)
        t, tri = intersect_bvh(bvh, positions, o, d, t_max)
        hit = tri_ref >= 0
        np.testing.assert_array_equal(hit, tri >= 0)
        np.testing.assert_allclose(t[hit], t_ref[hit], rtol=1e-9)


def test_bvh_on_cornell_box_primary_rays():
    scene = render.cornell_box()
    cam = scene.camera.with_size(24, 24)
    o, d = cam.pixel_rays()
    d = d.reshape(-1, 3)
    o = np.broadcast_to(o, d.shape)
    bvh = build_bvh(scene.positions)
    t_ref, tri_ref = intersect_brute_force(scene.positions, o, d)
    t, tri = intersect_bvh(bvh, scene.positions, o, d)
    assert (tri >= 0).mean() > 0.9  # the open box fills most of the view
    np.testing.assert_allclose(t, t_ref, rtol=1e-9)
    # axis-aligned rays through a quad's diagonal or a shared edge hit two triangles at the same t;
    # either answer is right there, and only there
    np.testing.assert_array_equal(tri >= 0, tri_ref >= 0)
    assert (tri != tri_ref).mean() < 0.05


def test_sah_tree_is_shallow_and_small_leaves():
    rng = np.random.default_rng(3)
    positions = _random_soup(rng, 20000, spread=10.0, size=0.05)
    bvh = build_bvh(positions)
    assert bvh.depth < 40
    assert bvh.node_b[bvh.node_b > 0].max() <= 4


def test_block_priced_sah_makes_bigger_leaves_and_stays_exact():
    # pricing a leaf as ceil(n / width) block tests lets the SAH keep up to `width` triangles together
    rng = np.random.default_rng(4)
    positions = _random_soup(rng, 3000)
    narrow = build_bvh(positions)
    wide = build_bvh(positions, max_leaf=8, width=8, block_cost=2.0)
    _check_tree(wide, positions)
    assert wide.node_b[wide.node_b > 0].max() <= 8
    assert wide.num_nodes < 0.7 * narrow.num_nodes
    o, d = _random_rays(rng, 400)
    t_ref, tri_ref = intersect_brute_force(positions, o, d)
    t, tri = intersect_bvh(wide, positions, o, d)
    np.testing.assert_array_equal(tri, tri_ref)
    np.testing.assert_allclose(t, t_ref, rtol=1e-9)
