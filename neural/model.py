"""The GQN model in one file: representation network, ConvDRAW generator, ELBO.

After Eslami et al., "Neural scene representation and rendering", Science 360 (2018), and its
supplementary material. Every number of the faithful model is in ``PRESETS["paper"]``.

    cfg = PRESETS["tiny"]
    model = GQN(cfg)
    out = model(ctx_x, ctx_v, x_q, v_q, sigma=2.0)        # out["loss"]: negative ELBO, nats per image
    img = model.generate(ctx_x, ctx_v, v_q)               # (B, 3, 64, 64) in [0, 1]

Shapes: B batch, K context views per scene, C channels, H = W = image size (64), h = w = H / 4 (16),
L generation steps. Images are float in [0, 1], channels first; a viewpoint is the 7 numbers
(x, y, z, cos yaw, sin yaw, cos pitch, sin pitch) of DESIGN.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GQNConfig:
    """Everything that defines a model and its training; saved as ``config.json`` in every run."""

    # --- model -----------------------------------------------------------------------------------
    image_size: int = 64
    """Side of the square images (pixels); must be 64 for the tower (4x down to 16x16)."""
    x_channels: int = 3
    """Image channels (RGB)."""
    v_dim: int = 7
    """Viewpoint size: (x, y, z, cos yaw, sin yaw, cos pitch, sin pitch)."""
    representation: str = "tower"
    """``tower`` (r is C x 16 x 16), ``pool`` (tower, then average-pooled to C x 1 x 1) or
    ``pyramid`` (v tiled onto the image, four strided convolutions to C x 1 x 1)."""
    r_channels: int = 256
    """Channels of the scene representation r (the per-view codes are summed, not averaged)."""
    h_channels: int = 128
    """Hidden channels of the generator and inference ConvLSTM cores."""
    z_channels: int = 3
    """Channels of the latent z_l drawn at each step (16 x 16 spatially)."""
    u_channels: int = 128
    """Channels of the 64 x 64 canvas u that the steps write into."""
    steps: int = 12
    """L: ConvDRAW generation steps."""
    kernel_size: int = 5
    """Kernel of the ConvLSTM gates and of the prior / posterior convolutions."""
    shared_core: bool = False
    """One generator core and one inference core for all L steps (the paper: one per step)."""

    # --- training --------------------------------------------------------------------------------
    batch_size: int = 36
    """Scenes per step (per process under torchrun)."""
    max_context: int = 5
    """Context views per scene are drawn uniformly from 1..max_context for each batch."""
    sigma_start: float = 2.0
    """Pixel standard deviation of the likelihood at step 0 (images in [0, 1])."""
    sigma_end: float = 0.7
    """Pixel standard deviation after ``sigma_steps``."""
    sigma_steps: int = 200_000
    """Steps over which sigma is annealed linearly from start to end."""
    lr_start: float = 5e-4
    """Adam learning rate at step 0."""
    lr_end: float = 5e-5
    """Adam learning rate after ``lr_steps``."""
    lr_steps: int = 1_600_000
    """Steps over which the learning rate is annealed linearly."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: off; the paper does not clip)."""
    steps_total: int = 2_000_000
    """Default number of training steps (``--steps`` overrides)."""
    seed: int = 0
    """Seeds the data order, the initial weights and the latent draws."""

    # --- bookkeeping -----------------------------------------------------------------------------
    log_every: int = 100
    """Steps between CSV / TensorBoard scalars."""
    val_every: int = 1000
    """Steps between validation PSNR and sample grids (a fixed batch)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (also written at the end and on Ctrl-C)."""

    @property
    def grid(self) -> int:
        """Side of the 16 x 16 grid of the generator (image / 4)."""
        return self.image_size // 4

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GQNConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; expected some of {sorted(names)}")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d).checked()

    def override(self, **changes: Any) -> "GQNConfig":
        return replace(self, **changes).checked()

    def checked(self) -> "GQNConfig":
        """Self, or ValueError naming the field that cannot work."""
        if self.image_size != 64:
            raise ValueError(f"image_size {self.image_size}; the GQN tower and generator expect 64")
        if self.representation not in ("tower", "pool", "pyramid"):
            raise ValueError(f"representation {self.representation!r}; expected tower, pool or pyramid")
        for name in ("r_channels", "h_channels", "z_channels", "u_channels", "steps", "batch_size", "max_context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}; expected >= 1")
        if self.r_channels % 8:
            raise ValueError(f"r_channels {self.r_channels}; expected a multiple of 8")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size {self.kernel_size}; expected odd")
        if not (self.sigma_start > 0 and self.sigma_end > 0 and self.lr_start > 0 and self.lr_end > 0):
            raise ValueError("sigma_start, sigma_end, lr_start and lr_end must be > 0")
        return self


PRESETS: dict[str, GQNConfig] = {
    # The faithful model: tower, 12 unshared steps, 128 hidden, z 3, batch 36, the paper's schedules.
    "paper": GQNConfig(),
    # One shared core, 8 steps, about a quarter of the channels and 3x3 gates; schedules shortened
    # so that a 30-minute run on a busy 2-core CPU (~800 steps) reaches sigma_end. About 0.7M parameters.
    "small": GQNConfig(r_channels=64, h_channels=48, u_channels=32, steps=8, kernel_size=3, shared_core=True,
                       batch_size=16, sigma_steps=600, lr_start=1e-3, lr_end=2e-4, lr_steps=5_000,
                       steps_total=5_000, log_every=20, val_every=100, checkpoint_every=100),
    # Trains on a laptop CPU in about a minute (~200 steps): tests and docs. About 0.3M parameters.
    "tiny": GQNConfig(r_channels=32, h_channels=32, u_channels=16, steps=4, kernel_size=3, shared_core=True,
                      batch_size=8, sigma_start=1.0, sigma_end=0.3, sigma_steps=150, lr_start=2e-3, lr_end=5e-4,
                      lr_steps=300, steps_total=200, log_every=10, val_every=50, checkpoint_every=50),
}


def sigma_at(cfg: GQNConfig, step: int) -> float:
    """Pixel sigma, annealed linearly from ``sigma_start`` to ``sigma_end`` over ``sigma_steps``."""
    t = min(step / max(cfg.sigma_steps, 1), 1.0)
    return cfg.sigma_start + (cfg.sigma_end - cfg.sigma_start) * t


def lr_at(cfg: GQNConfig, step: int) -> float:
    """Learning rate, annealed linearly from ``lr_start`` to ``lr_end`` over ``lr_steps``."""
    t = min(step / max(cfg.lr_steps, 1), 1.0)
    return cfg.lr_start + (cfg.lr_end - cfg.lr_start) * t


# --- representation networks -------------------------------------------------------------------
def tile(v: torch.Tensor, size: int) -> torch.Tensor:
    """(N, D) -> (N, D, size, size): the viewpoint repeated at every position."""
    return v[:, :, None, None].expand(-1, -1, size, size)  # (N, D, s, s)


class Tower(nn.Module):
    """The tower network: x (N, 3, 64, 64), v (N, 7) -> (N, C, 16, 16).

    Two blocks, each a 2x2 stride-2 convolution path beside a residual 3x3 path; v is tiled and
    concatenated after the first block (at 16 x 16), then a 1x1 convolution gives the code.
    """

    def __init__(self, cfg: GQNConfig):
        super().__init__()
        c, m = cfg.r_channels, cfg.r_channels // 2
        self.conv1 = nn.Conv2d(cfg.x_channels, c, 2, stride=2)         # 64 -> 32
        self.skip1 = nn.Conv2d(c, c, 2, stride=2)                       # 32 -> 16
        self.conv2 = nn.Conv2d(c, m, 3, padding=1)                      # 32
        self.conv3 = nn.Conv2d(m, c, 2, stride=2)                       # 32 -> 16
        self.skip2 = nn.Conv2d(c + cfg.v_dim, c, 3, padding=1)         # 16
        self.conv4 = nn.Conv2d(c + cfg.v_dim, m, 3, padding=1)         # 16
        self.conv5 = nn.Conv2d(m, c, 3, padding=1)                      # 16
        self.conv6 = nn.Conv2d(c, c, 1)                                 # 16

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv1(x))                                       # (N, C, 32, 32)
        b = F.relu(self.conv3(F.relu(self.conv2(a)))) + F.relu(self.skip1(a))  # (N, C, 16, 16)
        b = torch.cat([b, tile(v, b.shape[-1])], dim=1)                 # (N, C + 7, 16, 16)
        c = F.relu(self.conv5(F.relu(self.conv4(b)))) + F.relu(self.skip2(b))  # (N, C, 16, 16)
        return F.relu(self.conv6(c))                                    # (N, C, 16, 16)


class Pool(nn.Module):
    """The tower followed by an average pool: (N, 3, 64, 64), (N, 7) -> (N, C, 1, 1)."""

    def __init__(self, cfg: GQNConfig):
        super().__init__()
        self.tower = Tower(cfg)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.tower(x, v).mean(dim=(2, 3), keepdim=True)          # (N, C, 1, 1)


class Pyramid(nn.Module):
    """The pyramid network: v tiled onto the image, four strided convolutions:
    (N, 3 + 7, 64, 64) -> C/8 @ 32 -> C/4 @ 16 -> C/2 @ 8 -> C @ 1 (8x8 stride 8)."""

    def __init__(self, cfg: GQNConfig):
        super().__init__()
        c = cfg.r_channels
        self.net = nn.Sequential(
            nn.Conv2d(cfg.x_channels + cfg.v_dim, c // 8, 2, stride=2), nn.ReLU(),
            nn.Conv2d(c // 8, c // 4, 2, stride=2), nn.ReLU(),
            nn.Conv2d(c // 4, c // 2, 2, stride=2), nn.ReLU(),
            nn.Conv2d(c // 2, c, 8, stride=8), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        xv = torch.cat([x, tile(v, x.shape[-1])], dim=1)                # (N, 3 + 7, 64, 64)
        return self.net(xv)                                             # (N, C, 1, 1)


REPRESENTATIONS = {"tower": Tower, "pool": Pool, "pyramid": Pyramid}


# --- generator ---------------------------------------------------------------------------------
class ConvLSTMCell(nn.Module):
    """A convolutional LSTM whose gates are one k x k convolution of [const, inp, h].

    GQN feeds every step the same ``const`` input (v_q and r, plus the downsampled query image for
    the inference core). Convolution is linear, so the gates split as
    ``conv_const(const) + conv_step([inp, h])``: ``precompute(const)`` runs once per forward pass and
    each step convolves only its own inputs (with a shared core this is L times less work on the
    widest input, r). ``reference_gates`` is the plain one-convolution form, kept for the tests.
    """

    def __init__(self, const_channels: int, in_channels: int, hidden: int, kernel: int):
        super().__init__()
        self.const = nn.Conv2d(const_channels, 4 * hidden, kernel, padding=kernel // 2)
        self.step = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2, bias=False)

    def precompute(self, const: torch.Tensor) -> torch.Tensor:
        return self.const(const)                                        # (B, 4 Hc, h, w)

    def reference_gates(self, const: torch.Tensor, inp: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        w = torch.cat([self.const.weight, self.step.weight], dim=1)     # (4 Hc, Cc + Ci + Hc, k, k)
        return F.conv2d(torch.cat([const, inp, h], dim=1), w, self.const.bias, padding=self.const.padding)

    def forward(self, const_gates: torch.Tensor, inp: torch.Tensor, h: torch.Tensor,
                c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = const_gates + self.step(torch.cat([inp, h], dim=1))         # (B, 4 Hc, h, w)
        i, f, o, s = g.chunk(4, dim=1)                                  # 4 x (B, Hc, h, w)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(s)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def gaussian_kl(mu_q: torch.Tensor, logstd_q: torch.Tensor, mu_p: torch.Tensor, logstd_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, e^{2 logstd_q}) || N(mu_p, e^{2 logstd_p})) per element, nats."""
    var_ratio = torch.exp(2 * (logstd_q - logstd_p))
    return 0.5 * (var_ratio + ((mu_q - mu_p) / torch.exp(logstd_p)) ** 2 - 1.0) + logstd_p - logstd_q


class GQN(nn.Module):
    """Representation network + ConvDRAW generator + inference network.

    Per step l = 1..L (Eslami et al. 2018, supplementary, "generation" and "inference"):
        prior        pi_l = N(eta_pi(h^g_{l-1}))                      5x5 conv of the generator state
        inference    (h^e_l, c^e_l) = C^e([x_q down 4x, v_q, r, h^g_{l-1}, u_{l-1} down 4x], h^e_{l-1}, c^e_{l-1})
        posterior    q_l = N(eta_q(h^e_l))                            5x5 conv of the inference state
        generator    (h^g_l, c^g_l) = C^g([v_q, r, z_l], h^g_{l-1}, c^g_{l-1})
        canvas       u_l = u_{l-1} + Delta(h^g_l)                     4x4 stride-4 transposed conv
    and the mean image is sigmoid(eta_g(u_L)), eta_g a 1x1 convolution.
    """

    def __init__(self, cfg: GQNConfig):
        super().__init__()
        cfg = cfg.checked()
        self.cfg = cfg
        self.represent = REPRESENTATIONS[cfg.representation](cfg)
        hc, zc, rc, k = cfg.h_channels, cfg.z_channels, cfg.r_channels, cfg.kernel_size
        n_cores = 1 if cfg.shared_core else cfg.steps
        self.gen_cores = nn.ModuleList(ConvLSTMCell(cfg.v_dim + rc, zc, hc, k) for _ in range(n_cores))
        # the inference core also sees the 4x-downsampled query image and canvas
        self.x_down = nn.Conv2d(cfg.x_channels, cfg.x_channels, 4, stride=4)     # 64 -> 16
        self.u_down = nn.Conv2d(cfg.u_channels, cfg.u_channels, 4, stride=4)     # 64 -> 16
        self.inf_cores = nn.ModuleList(ConvLSTMCell(cfg.x_channels + cfg.v_dim + rc, hc + cfg.u_channels, hc, k)
                                       for _ in range(n_cores))
        self.prior = nn.Conv2d(hc, 2 * zc, k, padding=k // 2)
        self.posterior = nn.Conv2d(hc, 2 * zc, k, padding=k // 2)
        self.write = nn.ConvTranspose2d(hc, cfg.u_channels, 4, stride=4)         # 16 -> 64
        self.observe = nn.Conv2d(cfg.u_channels, cfg.x_channels, 1)

    # --- pieces ----------------------------------------------------------------------------------
    def scene_representation(self, ctx_x: torch.Tensor, ctx_v: torch.Tensor) -> torch.Tensor:
        """r = sum over the K context views of the per-view codes.

        ctx_x (B, K, 3, H, W) float in [0, 1]; ctx_v (B, K, 7) -> r (B, C, 16, 16) (tower) or (B, C, 1, 1).
        """
        b, k = ctx_x.shape[:2]
        codes = self.represent(ctx_x.flatten(0, 1), ctx_v.flatten(0, 1))  # (B K, C, h', w')
        codes = codes.view(b, k, *codes.shape[1:])                          # (B, K, C, h', w')
        return codes.sum(dim=1)                                             # (B, C, h', w')

    def _broadcast(self, r: torch.Tensor, v_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.cfg.grid
        if r.shape[-1] != g:
            r = r.expand(-1, -1, g, g)                                      # (B, C, 16, 16)
        return r, tile(v_q, g)                                              # (B, C, 16, 16), (B, 7, 16, 16)

    def _zeros(self, b: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, s = self.cfg.grid, self.cfg.image_size
        h = ref.new_zeros(b, self.cfg.h_channels, g, g)                     # (B, Hc, 16, 16)
        u = ref.new_zeros(b, self.cfg.u_channels, s, s)                     # (B, Uc, 64, 64)
        return h, h.clone(), u

    # --- training --------------------------------------------------------------------------------
    def forward(self, ctx_x: torch.Tensor, ctx_v: torch.Tensor, x_q: torch.Tensor, v_q: torch.Tensor,
                sigma: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """The negative ELBO of the query images given the context.

        ctx_x (B, K, 3, 64, 64), ctx_v (B, K, 7), x_q (B, 3, 64, 64) in [0, 1], v_q (B, 7); sigma: pixel
        standard deviation (a float, or a 0-d tensor when compiled). Returns per-batch means, in nats
        per image: ``loss`` = ``nll`` + ``kl``; ``nll_each``, ``kl_each`` (B,) per image (detached);
        ``mean`` (B, 3, 64, 64), the mean image under the posterior's z.
        """
        b = x_q.shape[0]
        r, vt = self._broadcast(self.scene_representation(ctx_x, ctx_v), v_q)
        gen_const = torch.cat([vt, r], dim=1)                              # (B, 7 + C, 16, 16)
        inf_const = torch.cat([self.x_down(x_q), vt, r], dim=1)            # (B, 3 + 7 + C, 16, 16)
        gen_g = [core.precompute(gen_const) for core in self.gen_cores]    # n_cores x (B, 4 Hc, 16, 16)
        inf_g = [core.precompute(inf_const) for core in self.inf_cores]
        h_g, c_g, u = self._zeros(b, x_q)
        h_e, c_e = h_g.clone(), c_g.clone()
        kl = x_q.new_zeros(b)
        for l in range(self.cfg.steps):
            i = 0 if self.cfg.shared_core else l
            p_mu, p_logstd = self.prior(h_g).float().chunk(2, dim=1)        # 2 x (B, Z, 16, 16)
            inf_in = torch.cat([h_g, self.u_down(u)], dim=1)                # (B, Hc + Uc, 16, 16)
            h_e, c_e = self.inf_cores[i](inf_g[i], inf_in, h_e, c_e)
            q_mu, q_logstd = self.posterior(h_e).float().chunk(2, dim=1)    # 2 x (B, Z, 16, 16)
            z = q_mu + torch.exp(q_logstd) * torch.randn_like(q_mu)         # reparameterised draw
            h_g, c_g = self.gen_cores[i](gen_g[i], z.to(h_g.dtype), h_g, c_g)
            u = u + self.write(h_g)                                         # (B, Uc, 64, 64)
            kl = kl + gaussian_kl(q_mu, q_logstd, p_mu, p_logstd).flatten(1).sum(1)  # (B,)
        mean = torch.sigmoid(self.observe(u))                               # (B, 3, 64, 64)
        nll = gaussian_nll(x_q, mean.float(), sigma)                        # (B,)
        kl = kl.float()
        return {"loss": (nll + kl).mean(), "nll": nll.mean(), "kl": kl.mean(), "mean": mean,
                "nll_each": nll.detach(), "kl_each": kl.detach()}

    # --- rendering -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, ctx_x: torch.Tensor, ctx_v: torch.Tensor, v_q: torch.Tensor,
                 r: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """A mean image for each query drawn with z from the prior (one sample per query).

        ctx_x (B, K, 3, 64, 64) in [0, 1], ctx_v (B, K, 7), v_q (B, 7) -> (B, 3, 64, 64) in [0, 1].
        ``r`` (B, C, ...) skips the representation network (reuse one scene vector for many views).
        """
        if r is None:
            r = self.scene_representation(ctx_x, ctx_v)
        b = v_q.shape[0]
        r, vt = self._broadcast(r, v_q)
        gen_const = torch.cat([vt, r], dim=1)                              # (B, 7 + C, 16, 16)
        gen_g = [core.precompute(gen_const) for core in self.gen_cores]    # n_cores x (B, 4 Hc, 16, 16)
        h_g, c_g, u = self._zeros(b, vt)
        for l in range(self.cfg.steps):
            i = 0 if self.cfg.shared_core else l
            p_mu, p_logstd = self.prior(h_g).float().chunk(2, dim=1)        # 2 x (B, Z, 16, 16)
            eps = torch.randn(p_mu.shape, generator=generator, device=p_mu.device, dtype=p_mu.dtype)
            z = p_mu + torch.exp(p_logstd) * eps
            h_g, c_g = self.gen_cores[i](gen_g[i], z.to(h_g.dtype), h_g, c_g)
            u = u + self.write(h_g)                                         # (B, Uc, 64, 64)
        return torch.sigmoid(self.observe(u)).float()                      # (B, 3, 64, 64)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, sigma^2) summed over pixels and channels: (B, 3, H, W) -> (B,) nats.

    ``sigma`` may be a 0-d tensor: under ``torch.compile`` a Python float is baked into the graph, so
    an annealed sigma would recompile the model at every step; a tensor keeps one graph.
    """
    se = ((x - mean) ** 2).flatten(1).sum(1)                                # (B,)
    n = x[0].numel()
    log_sigma = torch.log(sigma) if isinstance(sigma, torch.Tensor) else math.log(sigma)
    return 0.5 * se / sigma ** 2 + n * (log_sigma + 0.5 * math.log(2 * math.pi))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
