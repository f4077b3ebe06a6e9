"""The GQN model: the paper's facts, shapes, the ELBO terms, and the fast paths against references."""

from __future__ import annotations

import math

import pytest
import torch

from neural.model import (GQN, PRESETS, ConvLSTMCell, GQNConfig, Pool, Pyramid, gaussian_kl, gaussian_nll, lr_at,
                          sigma_at)

TINY = PRESETS["tiny"]


def batch(b=2, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, k, 3, 64, 64, generator=g), torch.randn(b, k, 7, generator=g),
            torch.rand(b, 3, 64, 64, generator=g), torch.randn(b, 7, generator=g))


def test_paper_preset_has_the_papers_numbers():
    p = PRESETS["paper"]
    assert (p.image_size, p.v_dim, p.representation, p.r_channels) == (64, 7, "tower", 256)
    assert (p.steps, p.kernel_size, p.h_channels, p.z_channels, p.shared_core) == (12, 5, 128, 3, False)
    assert (p.sigma_start, p.sigma_end, p.sigma_steps) == (2.0, 0.7, 200_000)
    assert (p.lr_start, p.lr_end, p.lr_steps) == (5e-4, 5e-5, 1_600_000)
    assert (p.adam_betas, p.adam_eps, p.batch_size) == ((0.9, 0.999), 1e-8, 36)
    m = GQN(p)
    assert len(m.gen_cores) == 12 and len(m.inf_cores) == 12  # one core per step
    assert m.gen_cores[0].step.kernel_size == (5, 5) and m.prior.kernel_size == (5, 5)
    assert m.posterior.kernel_size == (5, 5)
    assert (m.write.kernel_size, m.write.stride) == ((4, 4), (4, 4))  # stride-4 transposed conv to 64x64
    assert m.observe.kernel_size == (1, 1)
    x = torch.rand(1, 3, 64, 64)
    v = torch.randn(1, 7)
    assert m.represent(x, v).shape == (1, 256, 16, 16)
    assert Pool(p)(x, v).shape == (1, 256, 1, 1)
    assert Pyramid(p)(x, v).shape == (1, 256, 1, 1)


def test_small_and_tiny_presets_share_one_core():
    for name in ("small", "tiny"):
        m = GQN(PRESETS[name])
        assert len(m.gen_cores) == 1 and len(m.inf_cores) == 1
    assert PRESETS["small"].steps == 8


@pytest.mark.parametrize("rep", ["tower", "pool", "pyramid"])
def test_shapes_and_elbo_terms(rep):
    torch.manual_seed(0)
    m = GQN(TINY.override(representation=rep))
    cx, cv, xq, vq = batch()
    r = m.scene_representation(cx, cv)
    assert r.shape == ((2, 32, 16, 16) if rep == "tower" else (2, 32, 1, 1))
    out = m(cx, cv, xq, vq, sigma=0.8)
    assert out["mean"].shape == (2, 3, 64, 64)
    assert out["nll_each"].shape == (2,) and out["kl_each"].shape == (2,)
    assert torch.all(out["kl_each"] >= 0)
    # nll is -log N(x; mean, sigma^2) summed over the 3 * 64 * 64 values
    n = 3 * 64 * 64
    want = 0.5 * ((xq - out["mean"]) ** 2).flatten(1).sum(1) / 0.64 + n * (math.log(0.8) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(out["nll_each"], want, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(out["loss"], (out["nll_each"] + out["kl_each"]).mean())
    out["loss"].backward()
    assert all(p.grad is not None for p in m.parameters()), "every parameter takes part in the ELBO"
    img = m.generate(cx, cv, vq)
    assert img.shape == (2, 3, 64, 64) and img.min() >= 0 and img.max() <= 1


def test_gaussian_terms_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mq, lq, mp, lp = (torch.randn(4, 3, 5, 5, generator=g) for _ in range(4))
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mq, lq.exp()), torch.distributions.Normal(mp, lp.exp()))
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), want, rtol=1e-5, atol=1e-5)
    x, mu = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    want = -torch.distributions.Normal(mu, 0.7).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(x, mu, 0.7), want, rtol=1e-5, atol=1e-4)


def test_convlstm_split_gates_equal_one_convolution_of_the_concatenation():
    torch.manual_seed(0)
    cell = ConvLSTMCell(const_channels=6, in_channels=4, hidden=5, kernel=5)
    const, inp, h = torch.randn(2, 6, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8)
    fast = cell.precompute(const) + cell.step(torch.cat([inp, h], 1))
    torch.testing.assert_close(fast, cell.reference_gates(const, inp, h), rtol=1e-5, atol=1e-5)
    c = torch.zeros(2, 5, 8, 8)
    h2, c2 = cell(cell.precompute(const), inp, h, c)
    i, f, o, s = cell.reference_gates(const, inp, h).chunk(4, 1)
    c_ref = torch.sigmoid(i) * torch.tanh(s)
    torch.testing.assert_close(c2, c_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, torch.sigmoid(o) * torch.tanh(c_ref), rtol=1e-5, atol=1e-5)


def test_scene_vector_is_the_sum_of_per_view_codes_and_ignores_order():
    torch.manual_seed(0)
    m = GQN(TINY)
    cx, cv, _, _ = batch(k=3)
    r = m.scene_representation(cx, cv)
    parts = sum(m.scene_representation(cx[:, i:i + 1], cv[:, i:i + 1]) for i in range(3))
    torch.testing.assert_close(r, parts, rtol=1e-5, atol=1e-5)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(m.scene_representation(cx[:, perm], cv[:, perm]), r, rtol=1e-5, atol=1e-5)


def test_generation_is_seeded_and_depends_on_the_context():
    torch.manual_seed(0)
    m = GQN(TINY)
    cx, cv, _, vq = batch()
    a = m.generate(cx, cv, vq, generator=torch.Generator().manual_seed(3))
    b = m.generate(cx, cv, vq, generator=torch.Generator().manual_seed(3))
    c = m.generate(cx.flip(0), cv.flip(0), vq, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_schedules_anneal_linearly_then_hold():
    p = PRESETS["paper"]
    assert sigma_at(p, 0) == 2.0 and sigma_at(p, 100_000) == pytest.approx(1.35)
    assert sigma_at(p, 200_000) == pytest.approx(0.7) and sigma_at(p, 10**7) == pytest.approx(0.7)
    assert lr_at(p, 0) == 5e-4 and lr_at(p, 800_000) == pytest.approx(2.75e-4)
    assert lr_at(p, 1_600_000) == pytest.approx(5e-5) and lr_at(p, 10**8) == pytest.approx(5e-5)


def test_config_round_trip_and_clear_errors():
    d = PRESETS["small"].to_dict()
    assert GQNConfig.from_dict(d) == PRESETS["small"]
    with pytest.raises(ValueError, match="unknown config key"):
        GQNConfig.from_dict({**d, "hiden": 3})
    with pytest.raises(ValueError, match="representation"):
        TINY.override(representation="grid")
    with pytest.raises(ValueError, match="image_size"):
        TINY.override(image_size=32)


def test_bf16_autocast_forward_is_finite():
    torch.manual_seed(0)
    m = GQN(TINY)
    cx, cv, xq, vq = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(cx, cv, xq, vq, sigma=1.0)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    ref = m(cx, cv, xq, vq, sigma=1.0)
    assert abs(float(out["nll"].detach()) - float(ref["nll"].detach())) / float(ref["nll"].detach()) < 0.05
