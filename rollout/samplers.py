"""Samplers driven by a velocity function, so any black-box solver plugs in.

``velocity_fn(x, sigma) -> v`` with ``v ~ eps - x0`` (so ``x0_hat = x - sigma v``). Solvers:

- ``"euler"``: the ODE ``x' = x + (s' - s) v``.
- ``"dpm2"``: deterministic DPM-Solver++(2M) in data prediction (DiffusionNFT's default rollout).
- ``"sde"``: FlowGRPO's SDE step with a Gaussian log-probability per step.
- ``"cps"``: the coefficient-preserving SDE ("CPS") with its log-probability.
- ``"sa"``: SA-Solver (stochastic Adams, data prediction, predictor 2 / corrector 2, PEC), AWM's rollout; noise
  ``noise_level`` (tau) only where ``sa_window[0] <= t <= sa_window[1]``, a deterministic ODE solver at tau = 0.

``sde_window=(start, end)`` runs SDE/CPS only on steps ``start <= i < end`` and Euler elsewhere
(Flow-GRPO-Fast). :func:`sample_branches` is TempFlow-GRPO's rollout: an ODE trunk with K SDE branches at each
branch point, each continued by the ODE. Solver arithmetic is float32; ``latent_dtype`` (fp16 on GPU) is the dtype
the latents are cast to between steps, as in the references.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

Solver = Literal["euler", "dpm2", "sde", "cps", "sa"]
VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


Generators = "torch.Generator | list[torch.Generator] | None"


def randn_like_per_sample(like: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (float32). ``generator`` may be one generator for the batch or a
    list with one per sample, which makes every sample's noise independent of batch composition and of how samples
    are sharded over ranks (so a 2-process run reproduces a 1-process run)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != like.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}")
        eps = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generator])
        return eps.to(like.device)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=torch.float32)


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float or a per-sample tensor [B] as a float32 tensor of shape [B, 1, 1, 1]."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def sde_std_t(sigma: torch.Tensor, sigma_next: torch.Tensor, noise_level: float) -> torch.Tensor:
    """FlowGRPO's ``std_t = a sqrt(s / (1 - s~))``; ``s~ = sigma_next`` where ``sigma == 1`` (step 0), else sigma."""
    s_tilde = torch.where(sigma == 1, sigma_next, sigma)
    return noise_level * torch.sqrt(sigma / (1 - s_tilde))


def sde_moments(v32: torch.Tensor, x32: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, noise_level: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SDE step's Gaussian: ``(mean, std_t, std_t sqrt(-dt))`` from float32 ``v``, ``x`` and [B,1,1,1] sigmas."""
    dt = s_next - s
    std_t = sde_std_t(s, s_next, noise_level)
    mean = x32 * (1 + std_t**2 / (2 * s) * dt) + v32 * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    return mean, std_t, std_t * torch.sqrt(-dt)


def sde_step(
    v: torch.Tensor,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator=None,
    kind: Literal["sde", "cps"] = "sde",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic step from ``sigma`` to ``sigma_next`` (FlowGRPO), in float32.

    Returns ``(prev_sample, log_prob [B], mean, std [B,1,1,1])``. With ``prev_sample`` given, no noise is drawn
    and ``log_prob`` is that sample's log-density under the step. ``log_prob`` is a *mean* over C, H, W (not a sum),
    as in the reference -- which is why its clip range is 1e-4.

    ``kind="sde"``: ``std_t = a sqrt(s / (1 - s~))`` with ``s~ = sigma_next`` when ``s == 1`` (step 0), else ``s``;
    the Gaussian's std is ``std_t sqrt(-dt)``; with ``a = 0`` the step is plain Euler (log_prob is then NaN: a
    point mass has no density). ``kind="cps"``: ``std = s' sin(a pi / 2)``; log_prob drops constants and scale.
    The returned ``std`` is ``std_t`` (sde) or ``s' sin(a pi/2)`` (cps), not the Gaussian's std.
    """
    x32, v32 = x.float(), v.float()
    s, s_next = _per_sample(sigma, x32), _per_sample(sigma_next, x32)
    if kind == "sde":
        mean, std_t, gauss_std = sde_moments(v32, x32, s, s_next, noise_level)
        if prev_sample is None:
            prev_sample = mean + gauss_std * randn_like_per_sample(x32, generator)
        log_prob = _gaussian_log_density(prev_sample.float(), mean, gauss_std)
        std = std_t
    elif kind == "cps":
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0_hat = x32 - s * v32
        x1_hat = x32 + (1 - s) * v32
        mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt(s_next**2 - std**2)
        if prev_sample is None:
            prev_sample = mean + std * randn_like_per_sample(x32, generator)
        log_prob = -((prev_sample.float().detach() - mean) ** 2)
    else:
        raise ValueError(f"sde_step kind must be 'sde' or 'cps', got {kind!r}")
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return prev_sample.float(), log_prob, mean, std


def _gaussian_log_density(prev32: torch.Tensor, mean: torch.Tensor, gauss_std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(prev; mean, gauss_std^2) (no gradient through the sample)."""
    return (
        -((prev32.detach() - mean) ** 2) / (2 * gauss_std**2)
        - torch.log(gauss_std)
        - math.log(math.sqrt(2 * math.pi))
    )


def euler_step(v: torch.Tensor, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    x32 = x.float()
    return x32 + (_per_sample(sigma_next, x32) - _per_sample(sigma, x32)) * v.float()


def _log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma; -inf at sigma = 1, +inf at sigma = 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1 - sigma) / sigma)


def dpm2_step(x: torch.Tensor, d_now: torch.Tensor, d_prev: torch.Tensor | None, sig: list[float],
              i: int) -> torch.Tensor:
    """DPM-Solver++(2M) from ``sig[i]`` to ``sig[i+1]`` given data predictions ``D_i`` and ``D_{i-1}``.

    Step 0 is first order (DDIM in data prediction, equal to Euler when sigma_0 = 1); at step 1 the previous
    log-SNR is -inf so ``D1 = 0`` and the step is first order too. The last step (to sigma = 0) returns ``D_i``.
    """
    s, s_next = sig[i], sig[i + 1]
    if s_next == 0:
        return d_now
    lam, lam_next = _log_snr(s), _log_snr(s_next)
    h = lam_next - lam
    alpha_next = 1 - s_next
    d = d_now
    if d_prev is not None and i > 0:
        lam_prev = _log_snr(sig[i - 1])
        r0 = (lam - lam_prev) / h
        if math.isfinite(r0):
            d = d_now + 0.5 * (d_now - d_prev) / r0
    return (s_next / s) * x - alpha_next * (math.exp(-h) - 1) * d


def sa_grid(sigmas: torch.Tensor) -> list[float]:
    """SA-Solver's time grid from the standard sigma table (float32, as the reference edits it):
    ``g_{N-1} = g_{N-2} / 2`` first, then ``g_0 = 0.999``, so the first evaluation is not at pure noise."""
    g = torch.as_tensor(sigmas, dtype=torch.float32).clone()
    if len(g) < 3:
        raise ValueError(f"solver 'sa' needs at least 2 steps (a sigma table of 3 or more), got {len(g) - 1} steps")
    g[-2] = g[-3] / 2
    g[0] = 1 - 1e-3
    return [float(v) for v in g]


def sa_step(x: torch.Tensor, ds: list[torch.Tensor], nodes: list[float], s: float, t: float, tau: float,
            noise: torch.Tensor, corrector: bool) -> torch.Tensor:
    """One SA-Solver update from time ``s`` to ``t`` (data prediction), in float32 with float64 coefficients:

        x' = e^{-tau^2 h} (t/s) x + k t e^{-tau^2 lambda(t)} sum_j c_j D_j + t sqrt(1 - e^{-2 tau^2 h}) xi,
        c_j = int_{lambda(s)}^{lambda(t)} l_j(l) e^{k l} dl,   k = 1 + tau^2,   h = lambda(t) - lambda(s),

    with ``l_j`` the Lagrange basis on the lambdas of ``nodes`` (the times of ``ds``, most recent first: the
    predictor's last evaluated points, or the corrector's (t, s)). Written with ``u = l - lambda(t)``, c_j =
    e^{k lambda(t)} C_j and ``k t e^{-tau^2 lambda(t)} e^{k lambda(t)} = k (1 - t)``, so every number stays O(1).
    With two nodes, the few-step term (the reference's, O(h^3)) moves ``X`` from C_1 to C_0: predictor
    ``X = (h^2/2 - E/k^2) / (lambda(s) - lambda(s_prev))``, corrector ``X = h/2 - E/(k^2 h)``, ``E = kh - 1 + e^{-kh}``.
    """
    lam = [_log_snr(v) for v in nodes]
    lam_s, lam_t = _log_snr(s), _log_snr(t)
    h, k = lam_t - lam_s, 1 + tau**2
    m0 = -math.expm1(-k * h) / k  # int_{-h}^0 e^{ku} du
    if len(ds) == 1:
        c = [m0]
    else:
        a0, a1 = lam[0] - lam_t, lam[1] - lam_t
        m1 = ((1 + k * h) * math.exp(-k * h) - 1) / k**2  # int_{-h}^0 u e^{ku} du
        c = [(m1 - a1 * m0) / (a0 - a1), (m1 - a0 * m0) / (a1 - a0)]
        e = k * h - 1 + math.exp(-k * h)
        extra = h / 2 - e / (k**2 * h) if corrector else (h**2 / 2 - e / k**2) / (lam_s - lam[1])
        c = [c[0] + extra, c[1] - extra]
    out = math.exp(-tau**2 * h) * (t / s) * x.float()
    for cj, dj in zip(c, ds):
        out = out + (k * (1 - t) * cj) * dj
    return out + (t * math.sqrt(-math.expm1(-2 * tau**2 * h))) * noise


@dataclass
class SampleOutput:
    """What a rollout returns. Trajectory fields are filled only when ``keep_trajectory`` is set."""

    x0: torch.Tensor
    sigmas: torch.Tensor
    latents: list[torch.Tensor] = field(default_factory=list)  # x_i fed to step i (float32)
    next_latents: list[torch.Tensor] = field(default_factory=list)  # float32 output of step i
    log_probs: list[torch.Tensor] = field(default_factory=list)  # [B] per step (NaN for ODE steps)
    stochastic: list[bool] = field(default_factory=list)  # whether step i was an SDE/CPS step
    means: list[torch.Tensor] = field(default_factory=list)  # float32 step means (``keep_means``; ODE: the output)


@torch.no_grad()
def sample(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    solver: Solver,
    noise_level: float = 0.7,
    generator=None,
    sde_window: tuple[int, int] | None = None,
    keep_trajectory: bool | None = None,
    latent_dtype: torch.dtype | None = None,
    keep_means: bool = False,
    sa_window: tuple[float, float] = (0.3, 0.9),
) -> SampleOutput:
    """Integrate from ``x`` at ``sigmas[0]`` to ``sigmas[-1] = 0``.

    For ``"sde"``/``"cps"`` the trajectory (latents, next latents, per-step log-probs) is kept by default; with
    ``sde_window`` only steps inside the window are stochastic. ``latent_dtype`` casts the latent fed to the
    model and to the next step (fp16 in the reference on GPU); step arithmetic stays float32. ``keep_means`` also
    keeps each step's mean (GRPO-Guard's old-policy means; a deterministic step's mean is its output).
    ``"sa"`` takes the standard table and edits its grid itself (:func:`sa_grid`); ``sa_window`` is where its
    stochasticity ``noise_level`` applies (elsewhere tau = 0).
    """
    if solver not in ("euler", "dpm2", "sde", "cps", "sa"):
        raise ValueError(f"unknown solver {solver!r}; choose euler, dpm2, sde, cps or sa")
    if solver == "sa":
        return _sample_sa(velocity_fn, x, sigmas, noise_level, generator, sa_window, bool(keep_trajectory),
                          latent_dtype, keep_means)
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    if keep_trajectory is None:
        keep_trajectory = solver in ("sde", "cps")
    window = sde_window if sde_window is not None else (0, n)
    out = SampleOutput(x0=x, sigmas=torch.as_tensor(sigmas, dtype=torch.float32))
    d_prev = None
    x_cur = x if latent_dtype is None else x.to(latent_dtype)
    for i in range(n):
        v = velocity_fn(x_cur, sig[i])
        stochastic = solver in ("sde", "cps") and window[0] <= i < window[1]
        log_prob = torch.full((x.shape[0],), float("nan"), device=x.device)
        mean = None
        if stochastic:
            x_next, log_prob, mean, _ = sde_step(v, x_cur, sig[i], sig[i + 1], noise_level, generator=generator,
                                                 kind=solver)
        elif solver == "dpm2":
            d_now = x_cur.float() - sig[i] * v.float()
            x_next = dpm2_step(x_cur.float(), d_now, d_prev, sig, i)
            d_prev = d_now
        else:
            x_next = euler_step(v, x_cur, sig[i], sig[i + 1])
        if keep_trajectory:
            out.latents.append(x_cur.float())
            out.next_latents.append(x_next)
            out.log_probs.append(log_prob)
            out.stochastic.append(stochastic)
        if keep_means:
            out.means.append(x_next if mean is None else mean)
        x_cur = x_next if latent_dtype is None else x_next.to(latent_dtype)
    out.x0 = x_cur.float()
    return out


def _sample_sa(velocity_fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, noise_level: float, generator,
               sa_window: tuple[float, float], keep_trajectory: bool, latent_dtype: torch.dtype | None,
               keep_means: bool) -> SampleOutput:
    """SA-Solver in PEC mode on :func:`sa_grid` (the reference's loop): D_0 at (x, g_0); step 1 an order-1
    predictor, evaluated, no corrector; steps 2..N-1 an order-2 predictor to x_p, D_i at (x_p, g_i), then an order-2
    corrector from x_{i-1} with the same noise; step N returns D_{N-1}. N evaluations. One noise draw per loop
    iteration, N + 1 in all (the first and last unused), whatever tau, so the draws follow the reference's."""
    g = sa_grid(sigmas)
    n = len(g) - 1
    lo, hi = sa_window
    out = SampleOutput(x0=x, sigmas=torch.as_tensor(sigmas, dtype=torch.float32))
    cast = (lambda z: z) if latent_dtype is None else (lambda z: z.to(latent_dtype))  # noqa: E731

    def data_pred(z: torch.Tensor, t: float) -> torch.Tensor:
        return z.float() - t * velocity_fn(z, t).float()

    x_cur = cast(x)
    randn_like_per_sample(x_cur, generator)  # the reference's unused draw before the first evaluation
    ds = [data_pred(x_cur, g[0])]
    for i in range(1, n + 1):
        noise = randn_like_per_sample(x_cur, generator)
        tau = noise_level if i < n and lo <= g[i] <= hi else 0.0  # the last step returns D_{N-1}, noiseless
        if i == n:
            x_next = ds[-1]
        elif i == 1:
            x_next = sa_step(x_cur, ds, [g[0]], g[0], g[1], tau, noise, corrector=False)
            ds.append(data_pred(cast(x_next), g[1]))
        else:
            x_p = sa_step(x_cur, [ds[-1], ds[-2]], [g[i - 1], g[i - 2]], g[i - 1], g[i], tau, noise, corrector=False)
            ds.append(data_pred(cast(x_p), g[i]))
            x_next = sa_step(x_cur, [ds[-1], ds[-2]], [g[i], g[i - 1]], g[i - 1], g[i], tau, noise, corrector=True)
        if keep_trajectory:
            out.latents.append(x_cur.float())
            out.next_latents.append(x_next)
            out.log_probs.append(torch.full((x.shape[0],), float("nan"), device=x.device))
            out.stochastic.append(tau > 0)
        if keep_means:
            out.means.append(x_next)
        x_cur = cast(x_next)
        ds = ds[-2:]
    out.x0 = x_cur.float()
    return out


@dataclass
class BranchOutput:
    """What :func:`sample_branches` returns: S branch points with K branches each; row r of every branch tensor
    belongs to trunk sample ``r // K``."""

    latents: torch.Tensor  # [B, S, C, H, W] trunk (ODE) latents x_0..x_{S-1}, the inputs of the branch steps
    next_latents: torch.Tensor  # [B*K, S, C, H, W] branch latents after the SDE step at each point (float32)
    log_probs: torch.Tensor  # [B*K, S] their log-probs under the step (mean over C, H, W)
    x0: torch.Tensor  # [S, B*K, C, H, W] each branch's final latent (Euler ODE from sigma_{i+1} to 0)
    sigmas: torch.Tensor


def _branch_count(num_steps: int, branch_points: int | None) -> int:
    """Branch points of an ``num_steps``-step trunk: every step but the last (default), or its first few."""
    points = num_steps - 1 if branch_points is None else branch_points
    if not 1 <= points <= num_steps - 1:
        raise ValueError(f"branch_points must be between 1 and num_steps - 1 = {num_steps - 1}, got {branch_points}")
    return points


def branch_cost(num_steps: int, num_branches: int, branch_points: int | None = None) -> tuple[int, int]:
    """``(velocity evaluations, final images)`` per initial noise of :func:`sample_branches`: one trunk evaluation
    per branch point i, and K branches of ``num_steps - 1 - i`` ODE steps each (N = 10, K = 6: 279 and 54)."""
    points = _branch_count(num_steps, branch_points)
    return points + num_branches * sum(num_steps - 1 - i for i in range(points)), num_branches * points


@torch.no_grad()
def sample_branches(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    num_branches: int,
    noise_level: float = 0.7,
    generator=None,
    noise: torch.Tensor | None = None,
    latent_dtype: torch.dtype | None = None,
    *,
    branch_points: int | None = None,
    on_branch: Callable[[int, torch.Tensor], None] | None = None,
) -> BranchOutput:
    """TempFlow-GRPO's rollout: an Euler ODE trunk from ``x``, with K SDE branches at each branch point.

    At branch point i (i = 0..S-1, S = len(sigmas) - 2: every step but the last; ``branch_points`` keeps the first
    few) the trunk's velocity at x_i gives both the trunk's ODE step and the SDE step's mean, which is repeated K
    times (``repeat_interleave``: row r -> sample r // K) and drawn K times; each branch then runs the Euler ODE
    from sigma_{i+1} to 0. The trunk's last step is never taken (nothing branches from it).

    ``velocity_fn`` is called with the trunk's B rows and with branch batches of B * K rows in that row order, so
    per-sample conditioning is ``repeat_interleave(K)``-ed for them. ``generator``: one for the batch, or one per
    trunk sample (sample b draws its K branches' noise in order, so its branches do not depend on the batch).
    ``noise`` [S, B*K, C, H, W] replaces the draws (branch point i uses ``noise[i]``). ``on_branch(i, x0_i)`` is
    called as soon as branch point i's finals are ready, so their rewards can be scored while sampling continues.
    """
    sig = [float(s) for s in sigmas]
    points = _branch_count(len(sig) - 1, branch_points)
    k = num_branches
    gens = [g for g in generator for _ in range(k)] if isinstance(generator, (list, tuple)) else generator
    trunk, branches, log_probs, finals = [], [], [], []
    x_cur = x if latent_dtype is None else x.to(latent_dtype)
    for i in range(points):
        v = velocity_fn(x_cur, sig[i])
        x_rep, v_rep = x_cur.float().repeat_interleave(k, 0), v.float().repeat_interleave(k, 0)
        mean, _, gauss_std = sde_moments(v_rep, x_rep, _per_sample(sig[i], x_rep), _per_sample(sig[i + 1], x_rep),
                                         noise_level)
        eps = randn_like_per_sample(x_rep, gens) if noise is None else noise[i].to(mean)
        branch = mean + gauss_std * eps
        trunk.append(x_cur.float())
        branches.append(branch)
        log_probs.append(_gaussian_log_density(branch, mean, gauss_std).mean(dim=tuple(range(1, branch.ndim))))
        finals.append(sample(velocity_fn, branch, sig[i + 1:], "euler", latent_dtype=latent_dtype).x0)
        if on_branch is not None:
            on_branch(i, finals[-1])
        if i + 1 < points:
            x_next = euler_step(v, x_cur, sig[i], sig[i + 1])
            x_cur = x_next if latent_dtype is None else x_next.to(latent_dtype)
    return BranchOutput(latents=torch.stack(trunk, 1), next_latents=torch.stack(branches, 1),
                        log_probs=torch.stack(log_probs, 1), x0=torch.stack(finals), sigmas=torch.as_tensor(sig))
