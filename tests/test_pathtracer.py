"""Physics and agreement tests of the path tracer (render.pathtrace), each able to fail.

Tolerances come from the estimator's noise: where a test compares an image mean with a known value,
the bound is several standard errors of that mean (measured with the settings used here), never a
loose constant that a biased renderer would also pass.
"""

import dataclasses
import math
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import render
from render.bvh import intersect_brute_force
from render.errors import RenderError

from helpers import random_triangles_and_rays

pt = pytest.importorskip("render.pathtracer")

# Mitsuba 3.9.1, cornell_box(), path max_depth 8, 4096 spp, box filter (shared/reference/README.md)
CORNELL_MEAN = np.array([0.24016, 0.14113, 0.05998])


def cam(position, look_at, fov=40.0, size=32, up=(0.0, 1.0, 0.0)):
    return {"position": list(position), "look_at": list(look_at), "up": list(up), "fov": fov, "width": size,
            "height": size}


def trace(scene, camera=None, **kw):
    kw.setdefault("backend", "cpu")
    return render.pathtrace(scene, camera, **kw)


def flipped(scene):
    """The same scene with every triangle's winding reversed (front faces point the other way)."""
    return dataclasses.replace(scene, positions=scene.positions[:, [0, 2, 1]].copy(),
                               normals=-scene.normals[:, [0, 2, 1]], uvs=scene.uvs[:, [0, 2, 1]].copy())


def interior(mask):
    """Pixels whose 3x3 neighbourhood lies wholly in mask (a pixel's samples cover its whole area,
    so silhouette pixels mix both sides)."""
    pad = np.pad(mask, 1, mode="edge")
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out &= pad[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def mean_and_stderr(img):
    """Image mean per channel and its standard error (pixels are independent estimates)."""
    x = img.reshape(-1, img.shape[-1]).astype(np.float64)
    return x.mean(0), x.std(0) / math.sqrt(len(x))


# --- white furnace ------------------------------------------------------------------------------
@pytest.mark.parametrize("albedo", [1.0, 0.5])
def test_furnace_convex_sphere_in_constant_environment(albedo):
    # A convex object of albedo a under constant radiance 1 reflects exactly a: every ray leaving it
    # escapes. At albedo 1 the sphere vanishes (the classic white furnace).
    scene = render.scene_from_dict({
        "camera": cam((0, 0, 4.5), (0, 0, 0), fov=30, size=24),
        "materials": {"m": {"type": "diffuse", "albedo": [albedo] * 3}},
        "objects": [{"shape": "sphere", "radius": 1.0, "subdivisions": 2, "smooth": False, "material": "m"}],
        "environment": {"radiance": [1.0, 1.0, 1.0]},
    })
    f = trace(scene, spp=16, max_depth=-1)
    hit = interior(f.object_id == 0)
    miss = interior(f.object_id < 0)
    assert hit.mean() > 0.3 and miss.mean() > 0.1
    np.testing.assert_array_equal(f.rgb[miss], 1.0)  # background: the environment exactly
    m, se = mean_and_stderr(f.rgb[hit])
    assert np.all(np.abs(m - albedo) < 5 * se + 1e-4), (m, se)
    assert np.abs(f.rgb[hit] - albedo).max() < 0.25 * albedo  # per pixel, 16 spp
    # with one segment the sphere shows no light at all (it does not emit)
    f1 = trace(scene, spp=2, max_depth=1)
    assert f1.rgb[hit].max() == 0.0 and f1.rgb[miss].min() == 1.0
    # with none (Mitsuba's max_depth 0) nothing at all, not even the environment; the AOVs stay
    f0 = trace(scene, spp=2, max_depth=0)
    assert f0.rgb.max() == 0.0
    np.testing.assert_array_equal(f0.object_id, f1.object_id)


def test_one_sided_material_is_black_but_opaque_from_behind():
    # A quad facing away from the camera under constant radiance 1: two-sided it reflects its
    # albedo exactly (every ray leaving it escapes); one-sided (Mitsuba's default BSDFs) its back
    # reflects nothing, yet it still hides the environment behind it.
    def quad(two_sided):
        return render.scene_from_dict({
            "camera": cam((0, 0, 3), (0, 0, 0), fov=40, size=24),
            "materials": {"m": {"type": "diffuse", "albedo": [0.5] * 3, "two_sided": two_sided}},
            "objects": [{"shape": "quad", "material": "m", "rotate": [0.0, 180.0, 0.0]}],  # faces -z
            "environment": {"radiance": [1.0, 1.0, 1.0]},
        })
    one, two = trace(quad(False), spp=8, max_depth=-1), trace(quad(True), spp=8, max_depth=-1)
    hit = interior(one.object_id == 0)
    assert hit.mean() > 0.3
    np.testing.assert_array_equal(one.object_id, two.object_id)
    assert one.rgb[hit].max() == 0.0
    m, se = mean_and_stderr(two.rgb[hit])
    assert np.all(np.abs(m - 0.5) < 5 * se + 1e-4) and two.rgb[hit].min() > 0.25, (m, se)
    np.testing.assert_array_equal(one.rgb[interior(one.object_id < 0)], 1.0)
    # glass has both sides by nature (a refracted ray meets the inside of its far surface): the flag
    # changes nothing there
    def ball(two_sided):
        return render.scene_from_dict({
            "camera": cam((0, 0, 3), (0, 0, 0), fov=40, size=24),
            "materials": {"g": {"type": "glass", "ior": 1.5, "two_sided": two_sided}},
            "objects": [{"shape": "sphere", "radius": 0.8, "subdivisions": 2, "material": "g"}],
            "environment": {"radiance": [1.0, 1.0, 1.0]},
        })
    g1, g2 = trace(ball(False), spp=4, max_depth=-1), trace(ball(True), spp=4, max_depth=-1)
    np.testing.assert_array_equal(g1.rgb, g2.rgb)
    assert g1.rgb[interior(g1.object_id == 0)].mean() > 0.9  # a clear ball in a white furnace stays white


@pytest.mark.parametrize("albedo,max_depth", [(0.5, 1), (0.5, 2), (0.5, 3), (0.5, 8), (0.5, -1), (1.0, 4)])
def test_furnace_emitting_enclosure_geometric_series(albedo, max_depth):
    # Inside a closed surface emitting radiance 1 with diffuse albedo a, a path of n segments gathers
    # a^(n-1): the pixel value is sum_{k < max_depth} a^k (2 for a = 0.5 unbounded), whatever the shape.
    closed = render.scene_from_dict({
        "camera": cam((0.1, 0.05, 0.2), (0.3, 0.0, -1.0), fov=60, size=16),
        "materials": {"glow": {"type": "emitter", "radiance": [1.0, 1.0, 1.0], "albedo": [albedo] * 3}},
        "objects": [{"shape": "sphere", "radius": 1.0, "subdivisions": 2, "smooth": False, "material": "glow"}],
    })
    scene = flipped(closed)  # emit inwards
    expected = 2.0 if max_depth == -1 else sum(albedo ** k for k in range(max_depth))
    f = trace(scene, spp=32, max_depth=max_depth)
    m, se = mean_and_stderr(f.rgb)
    assert np.all(np.abs(m - expected) < 5 * se + 1e-4 * expected), (m, se, expected)
    if max_depth == 1:  # emission only: exact in every pixel
        np.testing.assert_allclose(f.rgb, expected, rtol=1e-6)


# --- the Cornell box against Mitsuba 3 --------------------------------------------------------------
def test_cornell_box_mean_matches_mitsuba():
    # 256x256, 64 spp, depth 8: the image mean has a standard error of ~0.05% (measured), so 1% per
    # channel is far outside noise, while a black light quad (a ~1% drop) or a Gaussian filter would
    # shift the edges but a missing bounce, a wrong MIS weight or a wrong emitter convention fail it.
    scene = render.cornell_box()
    f = trace(scene, spp=64, max_depth=8)
    mean = f.rgb.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, CORNELL_MEAN, rtol=0.01)
    assert f.meta["renderer"] == "path" and f.meta["spp"] == 64 and f.meta["max_depth"] == 8
    for key in ("seed", "backend", "device", "paths_per_second", "compile_seconds", "render_seconds"):
        assert key in f.meta


def test_cornell_box_depth_controls_bounces():
    # depth 1 sees only the light quad; depth 2 adds direct light; each further segment adds light
    scene = render.cornell_box(width=48, height=48)
    means = [trace(scene, spp=8, max_depth=d).rgb.mean() for d in (1, 2, 3, 8)]
    f1 = trace(scene, spp=8, max_depth=1)
    light = np.array([18.387, 13.9873, 6.75357], np.float32)
    lit = f1.rgb.max(axis=2) > 0
    assert 0 < lit.sum() < 0.02 * lit.size
    np.testing.assert_allclose(f1.rgb[f1.rgb.sum(axis=2) > 20].max(axis=0), light, rtol=1e-6)
    assert means[0] < means[1] < means[2] < means[3]


# --- glass and mirrors ----------------------------------------------------------------------------
def test_glass_slab_transmits_fresnel_fraction():
    # Near-normal view through a slab of index 1.5 onto an emitter of radiance 1: the slab passes
    # (1 - R)^2 sum R^(2k) = (1 - R) / (1 + R) with R = ((n - 1) / (n + 1))^2 (all interreflections).
    n = 1.5
    R = ((n - 1) / (n + 1)) ** 2
    expected = (1 - R) / (1 + R)
    scene = render.scene_from_dict({
        "camera": cam((0, 0, 4), (0, 0, 0), fov=2.0, size=16),
        "materials": {"glass": {"type": "glass", "ior": n},
                      "lamp": {"type": "emitter", "radiance": [1.0, 1.0, 1.0]}},
        "objects": [{"shape": "box", "size": [4.0, 4.0, 0.1], "material": "glass"},
                    {"shape": "quad", "size": [20.0, 20.0], "translate": [0.0, 0.0, -1.0], "material": "lamp"}],
    })
    f = trace(scene, spp=256, max_depth=-1)
    m, se = mean_and_stderr(f.rgb)
    assert np.all(np.abs(m - expected) < 5 * se + 1e-4), (m, se, expected)
    assert abs(m[0] - 1.0) > 20 * se[0]  # the slab is not simply transparent


@pytest.mark.parametrize("roughness", [0.0, 1e-3])
def test_smooth_metal_reflects_a_point_exactly(roughness):
    # A mirror (F0 = 1, so Schlick gives F = 1 at every angle) shows the emitter exactly where the
    # emitter mirrored in its plane would appear without the mirror.
    light = {"shape": "quad", "size": [0.3, 0.3], "translate": [0.2, 0.6, -0.3], "rotate": [90.0, 0.0, 0.0],
             "material": "lamp"}  # faces -y
    mirrored = {**light, "translate": [0.2, -0.6, -0.3], "rotate": [-90.0, 0.0, 0.0]}  # faces +y
    mats = {"mirror": {"type": "metal", "color": [1.0, 1.0, 1.0], "roughness": roughness},
            "lamp": {"type": "emitter", "radiance": [1.0, 1.0, 1.0]}}
    c = cam((0.0, 0.4, 2.5), (0.0, -0.2, 0.0), fov=40, size=48)
    with_mirror = render.scene_from_dict({"camera": c, "materials": mats, "objects": [
        {"shape": "quad", "size": [20.0, 20.0], "rotate": [-90.0, 0.0, 0.0], "material": "mirror"}, light]})
    twin = render.scene_from_dict({"camera": c, "materials": mats, "objects": [light, mirrored]})
    spp = 16 if roughness == 0.0 else 64
    a = trace(with_mirror, spp=spp, max_depth=4).rgb[..., 0]
    b = trace(twin, spp=spp, max_depth=4).rgb[..., 0]
    assert b.sum() > 15  # the mirrored emitter is in view
    ys, xs = np.mgrid[:48, :48]
    centroid = lambda img: np.array([(img * ys).sum(), (img * xs).sum()]) / img.sum()  # noqa: E731
    # pixels; alpha 1e-3 blurs the image by ~2 alpha rad (~0.15 px here), slightly unevenly at this
    # incidence, so its centroid may move by a fraction of that
    np.testing.assert_allclose(centroid(a), centroid(b), atol=0.05 if roughness == 0.0 else 0.1)
    # total flux: exact for the mirror but for a float tie or two; the glossy lobe moves samples across
    # the small emitter's edges, and each image's edge coverage alone varies by ~1% between seeds
    # at 64 spp (measured), so 3% there
    np.testing.assert_allclose(a.sum(), b.sum(), rtol=0.005 if roughness == 0.0 else 0.03)
    if roughness == 0.0:  # the same samples land on the same emitter points: equal but for float ties
        assert (np.abs(a - b) > 1e-5).sum() <= 3
        assert np.abs(a - b).max() <= 2.0 / 16 + 1e-6


# --- each BSDF's estimator identities ------------------------------------------------------------
def _uniform_hemisphere(n, rng):
    z = rng.random(n)
    phi = 2 * np.pi * rng.random(n)
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1), 1.0 / (2 * np.pi)


def _dir(theta_deg):
    t = math.radians(theta_deg)
    return (math.sin(t), 0.0, math.cos(t))


@pytest.mark.parametrize("material,roughness,theta", [("diffuse", 0.0, 0.0), ("diffuse", 0.0, 75.0),
                                                      ("metal", 0.05, 20.0), ("metal", 0.3, 20.0),
                                                      ("metal", 0.3, 70.0), ("metal", 0.8, 50.0)])
def test_bsdf_sampling_integrates_to_albedo(material, roughness, theta):
    base = (0.9, 0.6, 0.3)
    wo = _dir(theta)
    n = 200_000
    s = pt.sample_bsdf(material, base, wo, n, roughness=roughness, seed=7)
    ok = s.pdf > 0
    # the sampler's own pdf and weight equal what eval reports at the drawn direction
    np.testing.assert_allclose(s.eval_pdf[ok], s.pdf[ok], rtol=2e-3)
    np.testing.assert_allclose(s.eval[ok] / s.pdf[ok, None], s.weight[ok], rtol=2e-3, atol=1e-6)
    # albedo by the sampling estimator E[f cos / pdf] ...
    w = s.weight.astype(np.float64)
    albedo_s, se_s = w.mean(0), w.std(0) / math.sqrt(n)
    # ... equals the albedo integrated with uniformly distributed directions, and the pdf integrates
    # to the fraction of samples that stay above the surface (1 for diffuse)
    rng = np.random.default_rng(3)
    wis, pdf_u = _uniform_hemisphere(n, rng)
    fc, pdf = pt.eval_bsdf(material, base, wo, wis, roughness=roughness)
    albedo_u = fc.astype(np.float64).mean(0) / pdf_u
    se_u = fc.astype(np.float64).std(0) / pdf_u / math.sqrt(n)
    assert np.all(np.abs(albedo_s - albedo_u) < 5 * np.hypot(se_s, se_u) + 1e-4), (albedo_s, albedo_u)
    pdf_integral = pdf.astype(np.float64).mean() / pdf_u
    pdf_se = pdf.astype(np.float64).std() / pdf_u / math.sqrt(n)
    assert abs(pdf_integral - ok.mean()) < 5 * pdf_se + 2e-3, (pdf_integral, ok.mean())
    if material == "diffuse":
        np.testing.assert_allclose(albedo_s, base, rtol=1e-6)
    else:  # energy lost by single scattering grows with roughness and grazing angle, never gained
        assert np.all(albedo_s <= np.asarray(base) + 5 * se_s)


@pytest.mark.parametrize("theta,entering", [(0.0, True), (45.0, True), (80.0, True), (30.0, False), (60.0, False)])
def test_glass_sampling_follows_fresnel(theta, entering):
    ior = 1.5
    wo = _dir(theta)
    n = 100_000
    s = pt.sample_bsdf("glass", (1.0, 1.0, 1.0), wo, n, ior=ior, entering=entering, seed=11)
    assert s.delta.all()
    eta = ior if entering else 1.0 / ior
    cos_i = math.cos(math.radians(theta))
    sin_t2 = (1 - cos_i ** 2) / eta ** 2
    if sin_t2 >= 1:
        F = 1.0
    else:
        cos_t = math.sqrt(1 - sin_t2)
        F = 0.5 * (((cos_i - eta * cos_t) / (cos_i + eta * cos_t)) ** 2 + ((eta * cos_i - cos_t) / (eta * cos_i + cos_t)) ** 2)
    reflected = s.wi[:, 2] > 0
    assert abs(reflected.mean() - F) < 5 * math.sqrt(F * (1 - F) / n) + 1e-6, (reflected.mean(), F)
    # reflection is the mirror direction; refraction obeys Snell's law and scales radiance by 1/eta^2
    np.testing.assert_allclose(s.wi[reflected], np.broadcast_to([-wo[0], -wo[1], wo[2]], s.wi[reflected].shape),
                               atol=1e-6)
    np.testing.assert_allclose(s.weight[reflected], 1.0)
    if F < 1:
        sin_t = np.hypot(s.wi[~reflected, 0], s.wi[~reflected, 1])
        np.testing.assert_allclose(sin_t, math.sin(math.radians(theta)) / eta, atol=1e-5)
        np.testing.assert_allclose(s.weight[~reflected], 1.0 / eta ** 2, rtol=1e-6)


def test_glass_below_the_shading_normal_reflects_the_fresnel_fraction():
    # near a smooth sphere's silhouette wo can dip below the interpolated normal (theta > 90 deg):
    # the reflected fraction is still Fresnel's at |cos theta| (the signed cosine gave F > 1, all reflected)
    ior, theta, n = 1.5, 95.0, 100_000
    wo = _dir(theta)
    s = pt.sample_bsdf("glass", (1.0, 1.0, 1.0), wo, n, ior=ior, seed=5)
    cos_i = abs(math.cos(math.radians(theta)))
    cos_t = math.sqrt(1 - (1 - cos_i ** 2) / ior ** 2)
    F = 0.5 * (((cos_i - ior * cos_t) / (cos_i + ior * cos_t)) ** 2 + ((ior * cos_i - cos_t) / (ior * cos_i + cos_t)) ** 2)
    reflected = np.abs(s.wi - [-wo[0], -wo[1], wo[2]]).max(axis=1) < 1e-6
    assert 0.5 < F < 0.9
    assert abs(reflected.mean() - F) < 5 * math.sqrt(F * (1 - F) / n), (reflected.mean(), F)
    np.testing.assert_allclose(s.weight[~reflected], 1.0 / ior ** 2, rtol=1e-6)


def test_total_internal_reflection():
    s = pt.sample_bsdf("glass", (1.0, 1.0, 1.0), _dir(60.0), 10_000, ior=1.5, entering=False)
    assert (s.wi[:, 2] > 0).all()  # beyond the critical angle (41.8 degrees) nothing leaves


# --- estimators agree ------------------------------------------------------------------------------
def _lit_scene():
    return render.scene_from_dict({
        "camera": cam((0.0, 1.5, 3.0), (0.0, 0.3, 0.0), fov=45, size=32),
        "materials": {"floor": {"type": "diffuse", "albedo": [0.6, 0.6, 0.6]},
                      "ball": {"type": "metal", "color": [0.9, 0.7, 0.4], "roughness": 0.35},
                      "lamp": {"type": "emitter", "radiance": [6.0, 6.0, 6.0]}},
        "objects": [{"shape": "quad", "size": [6.0, 6.0], "rotate": [-90.0, 0.0, 0.0], "material": "floor"},
                    {"shape": "sphere", "radius": 0.5, "translate": [0.0, 0.5, 0.0], "material": "ball"},
                    {"shape": "quad", "size": [0.8, 0.8], "translate": [0.6, 2.0, 0.5], "rotate": [90.0, 0.0, 0.0],
                     "material": "lamp"}],
        "lights": [{"type": "point", "position": [-1.0, 1.5, 1.0], "intensity": [2.0, 2.0, 2.0]}],
        "environment": {"radiance": [0.3, 0.4, 0.5]},
    })


def test_emitter_pdf_is_the_probability_the_search_really_picks():
    # a million emitters: each CDF bin spans ~16 of rand()'s 2^24 levels, so the nominal share of
    # power is off by several per cent; the light pdf must be the share the kernel's search gives
    power = np.random.default_rng(3).uniform(1e-3, 1.0, 1_000_000)
    cdf, pmf = pt.emitter_cdf(power)
    u = np.arange(pt.RAND_LEVELS, dtype=np.float32) * np.float32(2.0 ** -24)  # every value rand() returns
    picked = np.bincount(np.searchsorted(cdf, u, side="left"), minlength=len(power))  # cdf_find's rule
    np.testing.assert_array_equal(picked, pmf * pt.RAND_LEVELS)
    assert pmf.sum() == 1.0
    assert np.abs(pmf / (power / power.sum()) - 1.0).max() > 0.05  # what the nominal pmf got wrong


@pytest.mark.parametrize("scene_name", ["cornell", "lit", "lit_by_a_map"])
def test_nee_bsdf_and_mis_agree(scene_name):
    scene = render.cornell_box(width=32, height=32) if scene_name == "cornell" else _lit_scene()
    if scene_name == "lit_by_a_map":  # a glossy ball and a floor under a sky with a sun (and the lamps)
        scene = dataclasses.replace(scene, environment=render.Environment(radiance=(0.5, 0.5, 0.5),
                                                                          image=sun_sky(sun_radiance=40.0)))
    imgs = {(strategy, seed): trace(scene, spp=128, max_depth=5, strategy=strategy, seed=seed).rgb
            for strategy in ("mis", "nee", "bsdf") for seed in (0, 1)}
    # Judged on the per-pixel differences: the picture itself cancels, so the margin is the noise alone.
    for other in ("nee", "bsdf"):
        m, se = mean_and_stderr(imgs[(other, 0)] - imgs[("mis", 0)])
        assert np.all(np.abs(m) < 5 * se + 1e-6), (other, m, se)
    # MIS is no noisier than BSDF sampling alone (its purpose): the spread between two seeds
    noise = {k: np.std(imgs[(k, 0)] - imgs[(k, 1)], axis=(0, 1)) for k in ("mis", "nee", "bsdf")}
    assert np.all(noise["mis"] <= noise["bsdf"] * 1.05), noise


# --- delta lights: the radiometric units -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["point", "directional", "environment"])
def test_light_units_on_a_diffuse_plane(kind):
    # Seen straight down, a diffuse plane of albedo a reflects L = a / pi * E, with E = I / h^2 under
    # a point light of intensity I at height h, E = irradiance under a vertical directional light, and
    # L = a * L_env under constant environment radiance (the plane sees the whole upper hemisphere).
    a = 0.5
    desc = {
        "camera": cam((0.0, 1.0, 0.0), (0.0, 0.0, 0.0), fov=5.0, size=8, up=(0.0, 0.0, -1.0)),
        "materials": {"m": {"type": "diffuse", "albedo": [a, a, a]}},
        "objects": [{"shape": "quad", "size": [2000.0, 2000.0], "rotate": [-90.0, 0.0, 0.0], "material": "m"}],
    }
    if kind == "point":
        desc["lights"] = [{"type": "point", "position": [0.0, 2.0, 0.0], "intensity": [8.0, 8.0, 8.0]}]
        expected = a / math.pi * 8.0 / 4.0
    elif kind == "directional":
        desc["lights"] = [{"type": "directional", "direction": [0.0, -1.0, 0.0], "irradiance": [3.0, 3.0, 3.0]}]
        expected = a / math.pi * 3.0
    else:
        desc["environment"] = {"radiance": [1.0, 1.0, 1.0]}
        expected = a  # up to the far horizon the plane cannot reach: 2000 m wide seen from 1 m
    f = trace(render.scene_from_dict(desc), spp=64, max_depth=2)
    m, se = mean_and_stderr(f.rgb)
    tol = 5e-3 * expected if kind == "point" else 5 * se + 1e-5  # point: pixels span ~0.1% in cos^3
    assert np.all(np.abs(m - expected) < tol), (m, expected, se)


# --- seeds and determinism --------------------------------------------------------------------------
def test_same_seed_identical_different_seed_same_mean():
    scene = render.cornell_box(width=32, height=32)
    a = trace(scene, spp=16, seed=3)
    b = trace(scene, spp=16, seed=3)
    c = trace(scene, spp=16, seed=4)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert not np.array_equal(a.rgb, c.rgb)
    m, se = mean_and_stderr(a.rgb - c.rgb)  # the noise of the difference, not the picture's spread
    assert np.all(np.abs(m) < 5 * se), (m, se)
    # a time budget renders a prefix of the same sample sequence: the first passes are identical
    d = trace(scene, spp=1, seed=3)
    e = trace(scene, spp=16, seed=3, time_budget=1e-6)  # only the first (1-sample) pass fits
    assert e.meta["spp"] == 1
    np.testing.assert_array_equal(d.rgb, e.rgb)


@pytest.mark.parametrize("packets", [True, False], ids=["packet-kernel", "one-path-kernel"])
def test_a_quiet_cpu_render_takes_one_pass_and_agrees_with_passes(packets, monkeypatch):
    # Without a progress bar, time budget or Ctrl-C handling the CPU takes a small view's samples in
    # one pass; the same samples, summed per pixel in another order: equal to float rounding
    monkeypatch.setattr(pt, "CPU_PACKETS", packets)
    scene = render.cornell_box(width=32, height=32)
    quiet = trace(scene, spp=24, seed=5)
    passes = trace(scene, spp=24, seed=5, interruptible=True)
    assert (quiet.meta["passes"], passes.meta["passes"]) == (1, 6)  # 1, 1, 2, 4, 8, 8
    assert quiet.meta["spp"] == passes.meta["spp"] == 24
    np.testing.assert_allclose(quiet.rgb, passes.rgb, rtol=1e-5, atol=1e-7)
    assert quiet.rgb.mean() > 0.05
    np.testing.assert_array_equal(quiet.depth, passes.depth)
    np.testing.assert_array_equal(quiet.object_id, passes.object_id)
    # big renders still stop for a Ctrl-C now and then: passes of at most 2**22 paths per view,
    # whatever the number of views in the launch
    assert list(pt._quiet_schedule(100, 512 * 512)) == [16] * 6 + [4]
    assert list(pt._quiet_schedule(1000, 256 * 256)) == [64] * 15 + [40]
    assert list(pt._quiet_schedule(64, 64 * 64)) == [64]


def test_same_image_with_one_thread(tmp_path):
    # The random stream belongs to (seed, pixel, sample), not to a thread: one worker thread gives
    # the very same image as all of them.
    scene = render.cornell_box(width=24, height=24)
    here = trace(scene, spp=4, seed=9).rgb
    out = tmp_path / "one_thread.npy"
    code = textwrap.dedent(f"""
        import numpy as np, render, taichi as ti
        f = render.pathtrace(render.cornell_box(width=24, height=24), spp=4, seed=9, backend="cpu")
        np.save({str(out)!r}, f.rgb)
        print("THREADS", ti.lang.impl.current_cfg().cpu_max_num_threads)
    """)
    script = tmp_path / "one_thread.py"  # Taichi needs kernels' callers in real files
    script.write_text(code)
    env = {**os.environ, "TI_CPU_MAX_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(script)], check=True, env=env, cwd=os.getcwd(), capture_output=True,
                       text=True)
    assert "THREADS 1" in p.stdout  # the child really ran on one worker thread
    np.testing.assert_array_equal(np.load(out), here)


# --- AOVs, textures, traversal, settings -------------------------------------------------------------
def test_aovs_on_cornell_box():
    scene = render.cornell_box(width=64, height=64)
    f = trace(scene, spp=1, max_depth=1)
    names = [o.name for o in scene.objects]
    # the back wall (z = -1, camera at z = 3.9): depth is along the forward axis, not the ray, so it
    # is constant over the flat wall
    back = f.object_id == names.index("back")
    assert back.sum() > 500
    np.testing.assert_allclose(f.depth[back], 4.9, rtol=1e-4)
    np.testing.assert_allclose(f.normal[back], np.broadcast_to([0.0, 0.0, 1.0], f.normal[back].shape), atol=1e-5)
    white = [m for m in scene.materials if m.name == "white"][0].albedo
    np.testing.assert_allclose(f.albedo[back], np.broadcast_to(white, f.albedo[back].shape), rtol=1e-6)
    red = f.object_id == names.index("red_wall")
    assert red.sum() > 100 and np.allclose(f.normal[red], [1.0, 0.0, 0.0], atol=1e-5)
    assert np.isinf(f.depth[f.object_id < 0]).all()
    assert f.rgb.dtype == np.float32 and f.object_id.dtype == np.int32


def test_camera_rays_are_clipped_to_near_and_far_like_the_rasterizer():
    rasterizer = pytest.importorskip("render.rasterizer")
    scene = render.scene_from_dict({
        "camera": {**cam((0.0, 0.0, 0.0), (0.0, 0.0, -1.0)), "near": 0.5, "far": 5.0},
        "materials": {"w": {"type": "diffuse", "albedo": [0.5, 0.5, 0.5]}},
        "objects": [{"shape": "quad", "material": "w", "translate": [0, 0, -0.2], "size": [0.2, 0.2]},  # before near
                    {"shape": "quad", "material": "w", "translate": [0, 0, -3], "size": [1, 1]},
                    {"shape": "quad", "material": "w", "translate": [0, 0, -8], "size": [20, 20]}],  # beyond far
        "environment": {"radiance": [1.0, 1.0, 1.0]}})
    p = trace(scene, spp=4, max_depth=3)
    r = rasterizer.rasterize(scene, scene.camera)
    assert set(np.unique(p.object_id)) == {-1, 1}
    middle = p.object_id == 1
    assert 100 < middle.sum() < 400
    assert (p.object_id == r.object_id).mean() > 0.97  # silhouette pixels aside
    np.testing.assert_allclose(p.depth[middle], 3.0, rtol=1e-5)
    # where the clipped far wall would be, the environment is seen
    np.testing.assert_allclose(p.rgb[interior(p.object_id < 0)], 1.0, rtol=1e-6)
    # a far plane beyond float32 (the format takes any finite far) clips nothing, with no overflow
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unclipped = trace(scene, dataclasses.replace(scene.camera, far=1e300), spp=1, max_depth=1)
    assert 2 in set(np.unique(unclipped.object_id))


def test_aovs_agree_with_rasterizer():
    rasterizer = pytest.importorskip("render.rasterizer")
    scene = render.cornell_box(width=64, height=64)
    p = trace(scene, spp=1, max_depth=1)
    r = rasterizer.rasterize(scene, scene.camera)
    # silhouettes: pixels whose 3x3 neighbourhood holds more than one id in either image
    pad = np.pad(p.object_id, 1, mode="edge")
    edge = np.zeros_like(p.object_id, bool)
    for dy in range(3):
        for dx in range(3):
            edge |= pad[dy:dy + 64, dx:dx + 64] != p.object_id
    inner = ~edge
    assert inner.mean() > 0.7
    np.testing.assert_array_equal(p.object_id[inner], r.object_id[inner])
    hit = inner & (p.object_id >= 0)
    np.testing.assert_allclose(p.depth[hit], r.depth[hit], rtol=1e-3)
    cos = np.sum(p.normal[hit] * r.normal[hit], axis=-1)  # both: the stored normal, never flipped
    assert cos.min() > 0.999, cos.min()


def test_checker_and_texture_albedo(tmp_path):
    tex = np.zeros((2, 2, 3), np.float32)
    tex[0, 0] = (1, 0, 0)  # top-left   -> uv (0, 1) corner
    tex[0, 1] = (0, 1, 0)  # top-right
    tex[1, 0] = (0, 0, 1)  # bottom-left -> uv (0, 0)
    tex[1, 1] = (1, 1, 0)
    render.write_image(tmp_path / "t.exr", tex)
    quad = lambda m, x: {"shape": "quad", "size": [1.0, 1.0], "translate": [x, 0.0, 0.0], "material": m}  # noqa: E731
    scene = render.scene_from_dict({
        "camera": cam((0.5, 0.0, 7.0), (0.5, 0.0, 0.0), fov=20, size=64),
        "materials": {"tex": {"type": "diffuse", "texture": "t.exr"},
                      "chk": {"type": "diffuse", "checker": {"color1": [0.9, 0.9, 0.9], "color2": [0.1, 0.1, 0.1],
                                                             "scale": 2.0}}},
        "objects": [quad("tex", 0.0), quad("chk", 1.0)],
    }, base_dir=tmp_path)
    f = trace(scene, spp=1, max_depth=1)
    # sample each quad's four quarters at their centres, found through the camera
    raster, _ = scene.camera.project(np.array([[x + dx, dy, 0.0] for x in (0.0, 1.0) for dy in (0.25, -0.25)
                                               for dx in (-0.25, 0.25)]))
    px = [f.albedo[int(yy), int(xx)] for xx, yy in raster]
    # texture quad: upper-left, upper-right, lower-left, lower-right quarters show the image's texels
    np.testing.assert_allclose(px[0:4], [tex[0, 0], tex[0, 1], tex[1, 0], tex[1, 1]], atol=0.1)
    # checker scale 2 on a unit quad: lower-left quarter has floor(u*2)+floor(v*2) = 0, even -> color1
    np.testing.assert_allclose(px[6], [0.9] * 3, atol=1e-6)
    np.testing.assert_allclose(px[7], [0.1] * 3, atol=1e-6)
    np.testing.assert_allclose(px[4], [0.1] * 3, atol=1e-6)
    np.testing.assert_allclose(px[5], [0.9] * 3, atol=1e-6)


def test_environment_map_orientation():
    # Environment.image is oriented as Mitsuba 3's envmap: column u = atan2(d_x, -d_z) / (2 pi), column j
    # centred at (j + 0.5) / W; row v = acos(d_y) / pi, row i centred at i / (H - 1). So looking along
    # -z sees the map's left/right edges, +x its u = 0.25, +z its centre; both renderers.
    img = np.zeros((4, 8, 3), np.float32)
    img[:, 3:5] = (1.0, 0.0, 0.0)  # around u = 0.5 (looking along +z)
    img[:, 1:3] = (0.0, 1.0, 0.0)  # around u = 0.25 (+x)
    img[:, 0] = img[:, 7] = (0.0, 0.0, 1.0)  # around u = 0 (-z)
    rows = np.zeros((4, 8, 3), np.float32)
    rows[1] = 1.0  # row 1 of 4 is centred at v = 1/3: 30 degrees above the horizon
    base = render.scene_from_dict({
        "camera": cam((0, 0, 0), (0, 0, -1), fov=1.0, size=4),
        "materials": {"m": {"type": "diffuse"}},
        "objects": [{"shape": "quad", "size": [0.01, 0.01], "translate": [0.0, -50.0, 0.0], "material": "m"}],
    })
    up30 = (0.0, 0.5, -math.sqrt(0.75))
    for image, look, colour in ((img, (0, 0, -1), (0, 0, 2)), (img, (1, 0, 0), (0, 2, 0)), (img, (0, 0, 1), (2, 0, 0)),
                                (rows, up30, (2, 2, 2))):
        scene = dataclasses.replace(base, environment=render.Environment(radiance=(2.0, 2.0, 2.0), image=image))
        c = render.Camera((0, 0, 0), look, (0, 1, 0), 1.0, 4, 4)
        f = trace(scene, c, spp=4, max_depth=1)
        np.testing.assert_allclose(f.rgb.reshape(-1, 3).mean(0), colour, atol=2e-2, err_msg=str(look))
        with pytest.warns(UserWarning, match="near plane"):  # the tiny quad lies beside the camera
            r = render.rasterize(scene, c)
        np.testing.assert_allclose(r.rgb.reshape(-1, 3).mean(0), colour, atol=2e-2, err_msg=f"raster {look}")


def sun_sky(height=32, width=64, sun=(6, 40), sun_radiance=400.0, sky=0.05):
    """An equirect map: a dim sky and a small bright sun (2 x 2 texels) at texel (row, column) sun."""
    img = np.full((height, width, 3), sky, np.float32)
    r, c = sun
    img[r:r + 2, c:c + 2] = sun_radiance
    return img


def _sun_lit_plane(spp_size=16):
    base = render.scene_from_dict({
        "camera": cam((0.0, 1.0, 0.0), (0.0, 0.0, 0.0), fov=20.0, size=spp_size, up=(0.0, 0.0, -1.0)),
        "materials": {"m": {"type": "diffuse", "albedo": [0.5, 0.5, 0.5]}},
        "objects": [{"shape": "quad", "size": [2000.0, 2000.0], "rotate": [-90.0, 0.0, 0.0], "material": "m"}],
    })
    return dataclasses.replace(base, environment=render.Environment(radiance=(1.0, 1.0, 1.0), image=sun_sky()))


def test_environment_map_sampling_density():
    """Next-event estimation draws environment directions in proportion to the map's brightness
    (times the solid angle of its texels): the density integrates to 1 over the sphere, matches
    the density of the directions actually drawn, and is positive wherever the map is lit."""
    img = sun_sky()
    scene = dataclasses.replace(_sun_lit_plane(), environment=render.Environment(radiance=(1.0, 1.0, 1.0), image=img))
    rng = np.random.default_rng(0)
    d = rng.normal(size=(200_000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    assert pt.environment_pdf(scene, d).min() > 0.0

    def directions(v, u):  # unit directions of the map's (v, u) grid, and their sin(theta)
        vv, uu = np.meshgrid(v, u, indexing="ij")
        theta, phi = vv * math.pi, 2 * math.pi * uu
        return (np.stack([np.sin(theta) * np.sin(phi), np.cos(theta), -np.sin(theta) * np.cos(phi)], -1).reshape(-1, 3),
                np.sin(theta).ravel())

    # the density integrates to 1 over the sphere (midpoint quadrature, 4 x 4 points a texel; exact
    # up to rounding, since the density times sin(theta) is constant within a texel)
    grid, sin_t = directions((np.arange(4 * img.shape[0]) + 0.5) / (4 * img.shape[0]),
                             (np.arange(4 * img.shape[1]) + 0.5) / (4 * img.shape[1]))
    integral = float((pt.environment_pdf(scene, grid) * sin_t).sum()) * (math.pi / (4 * img.shape[0])) * (
        2 * math.pi / (4 * img.shape[1]))
    assert abs(integral - 1.0) < 1e-3, integral
    wi, pdf_drawn = pt.sample_environment(scene, rng.random((100_000, 2)))
    np.testing.assert_allclose(np.linalg.norm(wi, axis=1), 1.0, atol=1e-5)
    # (a draw within float rounding of a texel's edge may be looked up in the neighbouring texel)
    assert np.isclose(pdf_drawn, pt.environment_pdf(scene, wi), rtol=1e-3).mean() > 0.9999
    # The fraction of draws toward the sun is its share of the map's luminance x solid angle.
    u = (np.arctan2(wi[:, 0], -wi[:, 2]) / (2 * math.pi)) % 1.0
    v = np.arccos(np.clip(wi[:, 1], -1, 1)) / math.pi
    rows, cols = np.floor(v * img.shape[0]).astype(int), np.floor(u * img.shape[1]).astype(int) % img.shape[1]
    in_sun = (rows >= 5) & (rows <= 8) & (cols >= 39) & (cols <= 42)  # the sun and the texels its filter reaches
    assert in_sun.mean() > 0.8  # 400 / 0.05: nearly every draw goes toward the sun
    # The density's mass over those texels, by midpoint quadrature in (theta, phi) (20 x 20 points a texel).
    grid, sin_t = directions((5 + (np.arange(80) + 0.5) / 20) / img.shape[0], (39 + (np.arange(80) + 0.5) / 20) / img.shape[1])
    d_area = (math.pi / img.shape[0] / 20) * (2 * math.pi / img.shape[1] / 20)
    expected = float((pt.environment_pdf(scene, grid) * sin_t).sum() * d_area)
    assert abs(in_sun.mean() - expected) < 0.01, (in_sun.mean(), expected)


def test_environment_map_is_importance_sampled():
    """Under a small bright sun, light sampling (which picks the sun) is far less noisy than BSDF
    sampling (which rarely hits it), and both estimate the same image."""
    scene = _sun_lit_plane()
    nee = trace(scene, spp=16, max_depth=2, strategy="nee")
    bsdf = trace(scene, spp=16, max_depth=2, strategy="bsdf")
    mis = trace(scene, spp=16, max_depth=2)
    (m_n, se_n), (m_b, se_b), (m_m, se_m) = (mean_and_stderr(f.rgb) for f in (nee, bsdf, mis))
    assert np.all(np.abs(m_n - m_b) < 5 * np.hypot(se_n, se_b)), (m_n, m_b)
    assert np.all(np.abs(m_m - m_n) < 5 * np.hypot(se_m, se_n)), (m_m, m_n)
    pix_n = nee.rgb.reshape(-1, 3).std(0)
    pix_b = bsdf.rgb.reshape(-1, 3).std(0)
    assert np.all(pix_n < 0.25 * pix_b), (pix_n, pix_b)
    assert np.all(mis.rgb.reshape(-1, 3).std(0) < 0.5 * pix_b)


@pytest.mark.parametrize("packets", [True, False], ids=["packet-kernel", "one-path-kernel"])
def test_views_rendered_together_equal_views_rendered_alone(packets, monkeypatch):
    monkeypatch.setattr(pt, "CPU_PACKETS", packets)
    scene = render.make_scene("rooms_ring", seed=2, width=20, height=20)
    cams = render.families.rooms_ring_cameras(np.random.default_rng(3), 3, 20, 20)
    for passes in (False, True):  # one quiet pass; passes of 1, 1, 2 (interruptible)
        together = pt.pathtrace_views(scene, cams, spp=4, max_depth=4, seeds=[7, 8, 7], backend="cpu",
                                      interruptible=passes)
        assert together[0].meta["passes"] == (3 if passes else 1)
        assert together[0].meta["kernel"] == ("packet" if packets else "path")
        for cam, seed, f in zip(cams, (7, 8, 7), together):
            alone = trace(scene, cam, spp=4, max_depth=4, seed=seed, interruptible=passes)
            for name in ("rgb", "depth", "normal", "albedo", "object_id"):
                np.testing.assert_array_equal(getattr(f, name), getattr(alone, name), err_msg=name)
            assert f.meta["views"] == 3 and f.meta["seed"] == seed
    assert not np.array_equal(together[0].rgb, together[1].rgb)
    with pytest.raises(RenderError, match="one seed per camera"):
        pt.pathtrace_views(scene, cams, spp=1, seeds=[1], backend="cpu")
    with pytest.raises(RenderError, match="one size"):
        pt.pathtrace_views(scene, [cams[0], cams[1].with_size(8, 8)], spp=1, backend="cpu")


def test_gpu_backend_refused_without_cuda():
    from render.pathtracer import _gpu_name  # noqa: F401  (module loads without a GPU)

    if subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("a CUDA GPU may be present")
    scene = render.cornell_box(width=8, height=8)
    with pytest.raises(RenderError, match="CUDA"):
        render.pathtrace(scene, spp=1, backend="gpu")
    f = trace(scene, spp=1)  # and the CPU backend comes back
    assert f.meta["backend"] == "cpu" and np.isfinite(f.rgb).all()


@pytest.mark.parametrize("layout", ["blocks", "single", "packets", "packets-vector"])
def test_kernel_traversal_matches_brute_force(layout, monkeypatch):
    # every tree (the CPU's SIMD blocks; a GPU's one-by-one leaves; the packet kernel's larger
    # leaves, walked by the packet kernel's own traversal and either of its leaf steps), here all on
    # the CPU
    monkeypatch.setattr(pt, "_simd_leaves", lambda backend: layout == "blocks")
    scene, positions, o, d = random_triangles_and_rays(5, 500, 2000)
    t_ref, tri_ref = intersect_brute_force(positions, o, d)
    t, tri = pt.trace_rays(scene, o, d, packets={"packets": True, "packets-vector": "vector"}.get(layout, False))
    layout = layout.split("-")[0]
    leaves = pt._packed_cache[scene][layout]["node_i"]
    assert leaves[leaves[:, 1] > 0, 1].max() > (1 if layout == "single" else render.bvh.MAX_LEAF)
    np.testing.assert_array_equal(np.isfinite(t), tri_ref >= 0)
    hit = tri_ref >= 0
    assert hit.sum() > 200
    np.testing.assert_allclose(t[hit], t_ref[hit], rtol=1e-4, atol=1e-5)
    assert (tri[hit] == tri_ref[hit]).mean() > 0.99  # float32 may flip near-ties


@pytest.mark.parametrize("simd", [True, False, "packets", "vector"])
def test_rays_at_edges_and_corners_of_a_closed_room_never_leak(simd, monkeypatch):
    # a closed box seen from inside: every ray hits a wall, including rays aimed exactly at the
    # creases and corners where walls meet and at the diagonals where a wall's two triangles meet
    # (the node boxes of flat walls are flat; Moller-Trumbore alone is not watertight)
    # (simd: the one-path kernel's SIMD leaf blocks or one-by-one leaves, or the packet kernel's
    # tests: lane by lane or its vector leaf step)
    monkeypatch.setattr(pt, "_simd_leaves", lambda backend: simd is True)
    scene = render.scene_from_dict({"camera": cam((0, 0, 0), (0, 0, -1)), "materials": {"m": {"type": "diffuse"}},
                                    "objects": [{"shape": "box", "material": "m", "size": [2.0, 2.0, 2.0],
                                                 "rotate": [0.0, 0.0, 0.0], "translate": [0.0, 1.0, 0.0]}]})
    rng = np.random.default_rng(9)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (0, 2) for z in (-1, 1)], np.float64)
    pairs = [(a, b) for a in range(8) for b in range(a + 1, 8)
             if (corners[a] != corners[b]).sum() < 3]  # edges and face diagonals: lines on the walls
    a, b = corners[[p[0] for p in pairs]], corners[[p[1] for p in pairs]]
    u = rng.uniform(0, 1, (len(pairs), 64, 1))
    targets = np.concatenate([(a[:, None] + u * (b - a)[:, None]).reshape(-1, 3), corners])
    origins = rng.uniform([-0.9, 0.1, -0.9], [0.9, 1.9, 0.9], (len(targets), 3))
    d = targets - origins
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    t, tri = pt.trace_rays(scene, origins, d, packets={"packets": True, "vector": "vector"}.get(simd, False))
    assert (tri >= 0).all(), f"{int((tri < 0).sum())} of {len(tri)} rays leaked"
    np.testing.assert_allclose(t, np.linalg.norm(targets - origins, axis=1), rtol=1e-4)


def _normalised_ir(text):
    """The instructions of an LLVM IR text in one spelling: comments, attributes and alignments
    dropped, typed pointers written as opaque ones (LLVM 14's assembly against llvmlite's newer
    disassembly)."""
    out = []
    for line in text.splitlines():
        line = re.sub(r";.*", "", line).strip()
        if not line or line.startswith(("target", "source_filename", "attributes")):
            continue
        line = re.sub(r"(float|i32)\*", "ptr", line)
        line = re.sub(r"<((?:float|i32) [^,>]+)(?:, \1)+>", r"splat (\1)", line)  # newer LLVM's spelling
        line = re.sub(r", align \d+", "", line)
        line = re.sub(r"\s(#\d+|alwaysinline)\b", "", line)
        out.append(" ".join(line.split()))
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def test_fused_bitcode_is_assembled_from_its_source():
    # render/fused.bc (what the packet kernel links) must be render/fused.ll (what we read and edit)
    import llvmlite.binding as llvm

    from render import pt_packets

    source = pt_packets.FUSED_BITCODE.with_suffix(".ll").read_text()
    assembled = str(llvm.parse_bitcode(pt_packets.FUSED_BITCODE.read_bytes()))
    assert "@llvm.fma.f32" in assembled and "define void @tr_tri(" in assembled and "define void @tr_step8(" in assembled
    assert _normalised_ir(assembled) == _normalised_ir(source)


def test_fused_ir_is_written_by_its_generator():
    # render/fused.ll is generated (python -m render.fused_ir): the committed text is the generator's
    from render import fused_ir, pt_kernels, pt_packets

    assert pt_packets.FUSED_BITCODE.with_suffix(".ll").read_text() == fused_ir.source()
    assert fused_ir.LANES == pt_packets.LANES_FULL and fused_ir.EDGE_SLACK == pt_kernels.EDGE_SLACK


def test_fused_bitcode_is_linked_from_a_copy_named_by_its_content():
    # Taichi's offline cache keys a kernel by the linked bitcode's path: the kernels link a copy in
    # the cache's folder named by the content's hash, rewritten whenever it is not that content
    import hashlib

    import taichi as ti

    from render import pt_packets

    pt.init_backend("cpu")
    data = pt_packets.FUSED_BITCODE.read_bytes()
    copy = pt_packets._cached_bitcode()
    assert copy.parent == Path(ti.lang.impl.current_cfg().offline_cache_file_path)
    assert copy.name == f"trirender_fused_{hashlib.sha256(data).hexdigest()[:16]}.bc"
    copy.write_bytes(b"not bitcode")
    assert pt_packets._cached_bitcode() == copy and copy.read_bytes() == data


def test_fused_and_unfused_triangle_tests_agree(tmp_path):
    # the packet kernel's triangle tests with fused multiply-adds (where the platform allows it: this
    # one is x86-64 Linux, as CI), lane by lane and as the vector leaf step, against the same
    # arithmetic unfused (TRIRENDER_FMA=0, the other platforms' code), in another process since the
    # choice is made at import
    from render import pt_packets

    if sys.platform == "linux" and os.uname().machine == "x86_64" and pt_packets._cpu_has_fma():
        assert pt_packets.FUSED
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import render.pathtracer as pt
        from render import pt_packets
        sys.path.insert(0, TESTS)
        from helpers import random_triangles_and_rays
        scene, _, o, d = random_triangles_and_rays(11, 300, 3000)
        t, tri = pt.trace_rays(scene, o, d, packets=True)
        tv, triv = pt.trace_rays(scene, o, d, packets="vector")
        np.savez(sys.argv[1], t=t, tri=tri, tv=tv, triv=triv, fused=pt_packets.FUSED)
    """).replace("TESTS", repr(str(Path(__file__).parent)))
    runs = {}
    for flag in ("1", "0"):
        out = tmp_path / f"fma{flag}.npz"
        env = dict(os.environ, TRIRENDER_FMA=flag)
        r = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        with np.load(out) as z:
            runs[flag] = (z["t"], z["tri"], bool(z["fused"]), z["tv"], z["triv"])
    assert runs["0"][2] is False and runs["1"][2] is pt_packets.FUSED
    (t1, tri1, _, tv1, triv1), (t0, tri0, _, tv0, triv0) = runs["1"], runs["0"]
    # the vector step is the lane-by-lane test and update written as vector code: the same numbers
    np.testing.assert_array_equal(tv1, t1)
    np.testing.assert_array_equal(triv1, tri1)
    np.testing.assert_array_equal(tv0, t0)  # (unfused, both are the lane-by-lane code)
    np.testing.assert_array_equal(triv0, tri0)
    assert (tri0 >= 0).sum() > 500
    np.testing.assert_array_equal(np.isfinite(t1), np.isfinite(t0))
    np.testing.assert_allclose(t1[tri1 >= 0], t0[tri1 >= 0], rtol=1e-5, atol=1e-6)
    assert (tri1 == tri0).mean() > 0.999


def test_bad_settings_are_refused():
    scene = render.cornell_box(width=8, height=8)
    with pytest.raises(RenderError, match="a camera 1e\\+13 m from the origin"):  # cameras made in code too
        pt.pathtrace(scene, dataclasses.replace(scene.camera, position=(0.0, 0.0, 1e13)), spp=1)
    for kw in ({"spp": 0}, {"spp": 1, "max_depth": -2}, {"spp": 1, "backend": "tpu"}, {"spp": 1, "strategy": "x"},
               {"spp": 1, "time_budget": 0.0}):
        with pytest.raises(RenderError):
            render.pathtrace(scene, **{"backend": "cpu", **kw})


def test_progress_and_camera_argument():
    scene = render.cornell_box()
    small = scene.camera.with_size(20, 10)
    f = render.pathtrace(scene, small, spp=3, backend="cpu", progress=True)
    assert f.rgb.shape == (10, 20, 3) and f.depth.shape == (10, 20) and f.meta["spp"] == 3


@pytest.mark.gpu
def test_gpu_matches_cpu_mean():
    scene = render.cornell_box(width=64, height=64)
    g = render.pathtrace(scene, spp=64, backend="gpu")
    assert g.meta["backend"] == "gpu"
    np.testing.assert_allclose(g.rgb.reshape(-1, 3).mean(0), CORNELL_MEAN, rtol=0.02)


def test_kernel_traversal_with_leaves_of_several_blocks(monkeypatch):
    # leaves larger than one SIMD block (as when triangles cannot be separated) are tested block by block
    from render.bvh import BLOCK

    monkeypatch.setattr(pt, "LEAF_MAX", 3 * BLOCK)
    monkeypatch.setattr(pt, "BLOCK_COST", 0.25)  # cheap leaves: the SAH stops splitting early
    rng = np.random.default_rng(6)
    n = 300
    positions = (rng.uniform(-2, 2, (n, 1, 3)) + rng.normal(0, 0.3, (n, 3, 3))).astype(np.float32)
    scene = render.scene_from_dict({"camera": cam((0, 0, 5), (0, 0, 0)), "materials": {"m": {"type": "diffuse"}},
                                    "objects": [{"shape": "quad", "material": "m"}]})
    scene = dataclasses.replace(scene, positions=positions, normals=np.zeros_like(positions) + [0, 0, 1],
                                uvs=np.zeros((n, 3, 2), np.float32), material_id=np.zeros(n, np.int32),
                                object_id=np.zeros(n, np.int32))
    packed = pt._pack(scene)
    leaf_sizes = packed["node_i"][packed["node_i"][:, 1] > 0, 1]
    assert leaf_sizes.max() > 2 * BLOCK  # some leaves span three blocks
    o = rng.uniform(-3, 3, (2000, 3))
    d = rng.normal(size=(2000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    t_ref, tri_ref = intersect_brute_force(positions, o, d)
    t, tri = pt.trace_rays(scene, o, d)
    hit = tri_ref >= 0
    np.testing.assert_array_equal(np.isfinite(t), hit)
    assert hit.sum() > 200
    np.testing.assert_allclose(t[hit], t_ref[hit], rtol=1e-4, atol=1e-5)
    assert (tri[hit] == tri_ref[hit]).mean() > 0.99


def test_one_by_one_leaves_render_the_simd_image(monkeypatch):
    # A GPU traces a BVH of small leaves tested one triangle at a time; the CPU traces 8-triangle SIMD
    # blocks. Both layouts rendered here on the CPU: another tree and another triangle test, the same
    # hits, so the images differ by float rounding alone.
    monkeypatch.setattr(pt, "CPU_PACKETS", False)  # the one-path kernel, which both layouts serve
    scene = render.cornell_box(width=32, height=32)
    simd = trace(scene, spp=4)
    assert simd.meta["kernel"] == "path"
    monkeypatch.setattr(pt, "_simd_leaves", lambda backend: False)
    one = trace(scene, spp=4)
    layouts = pt._packed_cache[scene]
    assert layouts["single"]["bvh_nodes"] != layouts["blocks"]["bvh_nodes"]
    np.testing.assert_allclose(one.rgb, simd.rgb, rtol=0, atol=1e-6)
    # the AOVs come from pixel-centre rays, some of which meet an edge between two walls exactly (a tie)
    same = one.object_id == simd.object_id
    assert same.mean() > 0.97
    np.testing.assert_allclose(one.depth[same], simd.depth[same], rtol=1e-5)


def test_device_uploads_keep_every_array_layout():
    # On a GPU the scene arrays go up as Taichi ndarrays (vectors, matrices, the placeholder block);
    # here the same uploads are made on the CPU backend, checked element for element and traversed
    # by the kernel with the GPU's one-by-one leaves, so a layout slip shows without a GPU.
    scene = render.cornell_box(width=8, height=8)
    pt.init_backend("cpu")
    assert pt._simd_leaves("cpu") and not pt._simd_leaves("gpu")
    packed = pt._pack(scene, simd=False)
    assert packed["node_i"][packed["node_i"][:, 1] > 0, 1].max() <= 4  # render.bvh's one-by-one leaves
    host = pt._device_arrays(packed, "cpu")
    dev = pt._device_arrays(packed, "gpu")
    for key in pt._ARRAY_KEYS:
        assert not isinstance(dev[key], np.ndarray), key
        np.testing.assert_array_equal(dev[key].to_numpy().reshape(host[key].shape), host[key], err_msg=key)
    rng = np.random.default_rng(2)
    o = rng.uniform(-0.9, 0.9, (500, 3)).astype(np.float32)
    d = rng.normal(size=(500, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    out = {}
    for name, arrays in (("host", host), ("dev", dev)):
        t = np.zeros(500, np.float32)
        tri = np.zeros(500, np.int32)
        pt._state["kernels"].trace_rays(o, d, t, tri, arrays["node_lo"], arrays["node_hi"], arrays["node_i"],
                                        arrays["tri_v"], arrays["tri_blk"], False)
        out[name] = (t, tri)
    assert (out["host"][1] >= 0).mean() > 0.7  # rays from inside the open box mostly hit it
    np.testing.assert_array_equal(out["dev"][0], out["host"][0])
    np.testing.assert_array_equal(out["dev"][1], out["host"][1])


def test_direct_light_does_not_depend_on_where_the_scene_sits():
    # Shadow rays start offset from the surface by an amount that grows with |p|. Measured from p
    # instead of from the offset origin, the ray reached the sampled light point and the light hid
    # itself: the Cornell box moved 30 m along x lost 21 % of its red channel.
    base = render.cornell_box(width=24, height=24)
    means = []
    for shift in (0.0, 30.0):
        t = np.array([shift, 0.0, 0.0], np.float32)
        c = base.camera
        moved = dataclasses.replace(c, position=tuple(np.add(c.position, t)), look_at=tuple(np.add(c.look_at, t)))
        scene = dataclasses.replace(base, positions=base.positions + t, cameras=(moved,))
        means.append(trace(scene, spp=32).rgb.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(means[1], means[0], rtol=0.01)


def test_a_floor_close_under_a_light_gets_the_same_light_from_each_strategy():
    # the light 0.1 m above the floor: next-event estimation used to see the light block itself (0)
    scene = render.scene_from_dict({
        "camera": cam((0.8, 0.07, 0.0), (0.0, 0.0, 0.0), size=24),
        "materials": {"f": {"type": "diffuse", "albedo": [0.5, 0.5, 0.5]},
                      "lamp": {"type": "emitter", "radiance": [1, 1, 1]}},
        "objects": [{"shape": "quad", "material": "f", "size": [2, 2], "rotate": [-90, 0, 0]},
                    {"shape": "quad", "material": "lamp", "size": [0.4, 0.4], "rotate": [90, 0, 0],
                     "translate": [0, 0.1, 0]}]})
    nee = trace(scene, spp=256, max_depth=2, strategy="nee")
    bsdf = trace(scene, spp=256, max_depth=2, strategy="bsdf")
    floor = nee.object_id == 0
    assert floor.mean() > 0.3
    a, b = nee.rgb[floor, 0].mean(), bsdf.rgb[floor, 0].mean()
    assert b > 0.01 and abs(a - b) < 0.05 * b, (a, b)


def test_normals_against_the_winding_still_shade():
    # clockwise faces with outward vertex normals (as some OBJ/PLY exports have) shade as the
    # counter-clockwise mesh does, not black
    scene = render.scene_from_dict({
        "camera": cam((0.0, 0.6, 3.0), (0.0, 0.6, 0.0), fov=30, size=24),
        "materials": {"d": {"type": "diffuse", "albedo": [0.8, 0.8, 0.8]}},
        "objects": [{"shape": "sphere", "material": "d", "radius": 0.6, "translate": [0, 0.6, 0], "smooth": True}],
        "lights": [{"type": "directional", "direction": [0, -1, -1], "irradiance": [3, 3, 3]}],
        "environment": {"radiance": [0.3, 0.3, 0.3]}})
    cw = dataclasses.replace(scene, positions=scene.positions[:, [0, 2, 1]].copy(),
                             normals=scene.normals[:, [0, 2, 1]].copy(), uvs=scene.uvs[:, [0, 2, 1]].copy())
    a, b = trace(scene, spp=16, max_depth=4), trace(cw, spp=16, max_depth=4)
    sphere = a.object_id == 0
    assert sphere.mean() > 0.2
    assert a.rgb[sphere].mean() > 0.2
    np.testing.assert_allclose(b.rgb[sphere].mean(0), a.rgb[sphere].mean(0), rtol=1e-3)


def test_black_metal_still_gets_next_event_estimation():
    # Schlick Fresnel with F0 = 0 still reflects at grazing angles. Skipping NEE on a black base
    # while MIS down-weighted the BSDF's light hits lost a third of the reflection.
    scene = render.scene_from_dict({
        "camera": cam((0.0, 0.5, 4.0), (0.0, 0.0, 0.0), fov=30, size=24),
        "materials": {"m": {"type": "metal", "color": [0, 0, 0], "roughness": 0.2},
                      "lamp": {"type": "emitter", "radiance": [5, 5, 5]}},
        "objects": [{"shape": "quad", "material": "m", "size": [20, 20], "rotate": [-90, 0, 0]},
                    {"shape": "quad", "material": "lamp", "size": [2, 2], "translate": [0, 0.8, -4]}],
        "environment": {"radiance": [0.3, 0.3, 0.3]}})
    mis = trace(scene, spp=128, max_depth=2).rgb[..., 0].astype(np.float64)
    bsdf = trace(scene, spp=128, max_depth=2, strategy="bsdf").rgb[..., 0].astype(np.float64)
    floor = trace(scene, spp=1, max_depth=1).object_id == 0  # the metal, not the lamp or the sky
    d = (mis - bsdf)[floor]
    assert mis[floor].mean() > 0.05
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(d.size) + 0.01 * mis[floor].mean(), (mis[floor].mean(), d.mean())


def test_a_huge_spp_under_a_time_budget_stops_on_time():
    # "render until the time is up": the pass list was built whole first (2^31 / 16 entries)
    import time

    scene = render.cornell_box(width=8, height=8)
    trace(scene, spp=1)  # compiled
    t0 = time.perf_counter()
    f = trace(scene, spp=pt.MAX_SPP, time_budget=1.0)
    assert time.perf_counter() - t0 < 5.0
    assert 16 <= f.meta["spp"] < pt.MAX_SPP and np.isfinite(f.rgb).all()
    with pytest.raises(RenderError, match="spp"):
        trace(scene, spp=pt.MAX_SPP + 1)


# --- the CPU's packet kernel (render.pt_packets) ------------------------------------------------------
def packet_scene(size=24):
    """Every feature the packet kernel covers: a checker floor, smooth and flat shapes, a one-sided
    material, an emitter quad and an emissive sphere (many emitter triangles, picked by the CDF), a
    point and a directional light and a constant environment."""
    return render.scene_from_dict({
        "camera": cam((0.0, 1.2, 3.2), (0.0, 0.6, 0.0), size=size),
        "materials": {
            "floor": {"type": "diffuse", "albedo": [0.6, 0.6, 0.6],
                      "checker": {"color1": [0.8, 0.3, 0.2], "color2": [0.1, 0.4, 0.7], "scale": 6.0}},
            "white": {"type": "diffuse", "albedo": [0.75, 0.75, 0.75]},
            "red": {"type": "diffuse", "albedo": [0.7, 0.1, 0.1], "two_sided": False},
            "lamp": {"type": "emitter", "radiance": [6.0, 5.0, 3.0], "albedo": [0.5, 0.5, 0.5]},
            "glow": {"type": "emitter", "radiance": [0.5, 2.0, 1.0]},
        },
        "objects": [
            {"shape": "quad", "material": "floor", "size": [6.0, 6.0], "rotate": [-90.0, 0.0, 0.0]},
            {"shape": "sphere", "material": "white", "radius": 0.5, "translate": [-0.6, 0.5, 0.0]},
            {"shape": "box", "material": "red", "size": [0.6, 0.9, 0.6], "translate": [0.6, 0.45, -0.3],
             "rotate": [0.0, 25.0, 0.0]},
            {"shape": "quad", "material": "lamp", "size": [0.8, 0.8], "translate": [0.0, 2.2, 0.0],
             "rotate": [90.0, 0.0, 0.0]},
            {"shape": "sphere", "material": "glow", "radius": 0.2, "subdivisions": 2, "translate": [0.3, 0.2, 0.7]},
        ],
        "lights": [{"type": "point", "position": [1.0, 1.8, 1.0], "intensity": [2.0, 2.0, 2.0]},
                   {"type": "directional", "direction": [-0.3, -1.0, -0.4], "irradiance": [0.8, 0.8, 0.8]}],
        "environment": {"radiance": [0.2, 0.25, 0.3]},
    }, source="packet_scene")


def both_kernels(monkeypatch, scene, **kw):
    monkeypatch.setattr(pt, "CPU_PACKETS", True)
    packet = trace(scene, **kw)
    monkeypatch.setattr(pt, "CPU_PACKETS", False)
    path = trace(scene, **kw)
    assert (packet.meta["kernel"], path.meta["kernel"]) == ("packet", "path")
    return packet, path


def test_packet_kernels_smaller_variant_is_16_lanes_wide_only_with_avx512():
    from render import pt_packets

    assert pt_packets.lean_lanes({"fma", "avx2", "avx512f", "avx512bw"}) == 16
    assert pt_packets.lean_lanes({"fma", "avx2"}) == 8  # e.g. AMD Zen 3: 16 lanes ran 17 % slower
    assert pt_packets.lanes(False) == pt_packets.LANES_LEAN and pt_packets.lanes(True) == 8


@pytest.mark.parametrize("variant", ["full", "lean"])
@pytest.mark.parametrize("strategy,max_depth", [("mis", 8), ("mis", -1), ("nee", 3), ("bsdf", 3), ("mis", 1),
                                                ("mis", 0)])
def test_packet_kernel_renders_the_one_path_kernels_image(monkeypatch, strategy, max_depth, variant):
    # The packet kernel traces radiance()'s paths with radiance()'s random numbers in the same order,
    # 8 (its larger variant: packet_scene's point and directional lights) or, in its smaller one
    # (the Cornell box), 16 on a CPU with AVX-512 and 8 elsewhere, paths in lockstep: the images
    # agree to float rounding, pixel by pixel (a path whose float rounding tips a Russian roulette
    # or an edge test the other way may differ, so a handful of pixels may), and so do the AOVs of
    # the first pass
    # (not square: in a square image of the box, pixel centres on the diagonals lie on the room's
    # creases, where the two kernels' trees may pick either wall)
    from render import pt_packets

    scene = packet_scene() if variant == "full" else render.cornell_box(width=24, height=20)
    packet, path = both_kernels(monkeypatch, scene, spp=8, seed=3, strategy=strategy, max_depth=max_depth)
    assert packet.meta["lanes"] == (8 if variant == "full" else pt_packets.LANES_LEAN)
    if max_depth == 0:
        assert not packet.rgb.any() and not path.rgb.any()
    else:
        assert path.rgb.mean() > 0.05
        close = np.isclose(packet.rgb, path.rgb, rtol=1e-3, atol=1e-4).all(axis=2)
        assert close.mean() > 0.99, close.mean()
        np.testing.assert_allclose(packet.rgb.mean((0, 1)), path.rgb.mean((0, 1)), rtol=2e-3)
    same = packet.object_id == path.object_id
    assert same.mean() > (0.99 if variant == "full" else 0.95)
    # where the ids differ, both rays hit the same point (a crease of the box, where each kernel's
    # tree may pick either wall)
    np.testing.assert_allclose(packet.depth, path.depth, rtol=1e-5)
    np.testing.assert_allclose(packet.normal[same], path.normal[same], atol=1e-5)
    np.testing.assert_allclose(packet.albedo[same], path.albedo[same], atol=1e-6)


def test_packet_kernel_on_the_cornell_box_and_where_it_does_not_apply(monkeypatch):
    box = render.cornell_box(width=32, height=32)
    packet, path = both_kernels(monkeypatch, box, spp=16)
    np.testing.assert_allclose(packet.rgb, path.rgb, rtol=1e-3, atol=1e-4)
    # each kernel traverses its own tree: SIMD blocks of up to 3 x 8 triangles for the one-path
    # kernel, leaves of up to PACKET_LEAF_MAX triangles tested one by one for the packet kernel
    trees = pt._packed_cache[box]
    assert trees["packets"]["bvh_nodes"] != trees["blocks"]["bvh_nodes"]
    packet_leaves = trees["packets"]["node_i"]
    assert render.bvh.MAX_LEAF < packet_leaves[packet_leaves[:, 1] > 0, 1].max() <= pt.PACKET_LEAF_MAX
    # metal, glass, image textures and environment maps run in the one-path kernel
    monkeypatch.setattr(pt, "CPU_PACKETS", True)
    d = render.cornell_box(width=8, height=8)
    metal = dataclasses.replace(d, materials=tuple(dataclasses.replace(m, type="metal") if m.name == "white" else m
                                                   for m in d.materials))
    assert trace(metal, spp=1).meta["kernel"] == "path"
    assert pt._packet_scene(d)

    def white(**changes):
        return dataclasses.replace(d, materials=tuple(dataclasses.replace(m, **changes) if m.name == "white" else m
                                                      for m in d.materials))

    assert not pt._packet_scene(white(type="glass"))
    sky = np.ones((4, 8, 3), np.float32)
    assert not pt._packet_scene(dataclasses.replace(white(texture=0), textures=(sky,)))
    assert not pt._packet_scene(dataclasses.replace(d, environment=render.Environment(radiance=(1, 1, 1), image=sky)))
    # a map times zero radiance is no light at all (_pack packs no map): the packet kernel runs it
    dark = dataclasses.replace(d, environment=render.Environment(radiance=(0, 0, 0), image=sky))
    assert pt._packet_scene(dark) and trace(dark, spp=1).meta["kernel"] == "packet"
