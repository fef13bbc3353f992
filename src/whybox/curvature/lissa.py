"""LiSSA (Agarwal et al. 2017): a stochastic Neumann series for H⁻¹v from mini-batch HVPs.

    h₀ = v,  h_j = v + (I − (Ĥ_j + λI)/scale)·h_{j−1},   estimate (H + λI)⁻¹v ≈ h_t / scale

with Ĥ_j the Hessian of R on a random mini-batch. The series converges when every eigenvalue of
Ĥ_j + λI lies in (0, 2·scale); its truncation error shrinks like (1 − λ_min/scale)^t, and its
mini-batch noise does not shrink at all with depth. So whybox first measures both ends of the
spectrum (Lanczos), sets ``scale`` from the top and the depth from the bottom, refuses when that
depth exceeds the budget, and runs the series in rounds on the full-data residual (iterative
refinement), each round cutting truncation error and noise alike, until the residual is below
``residual_tolerance``.
"""

from __future__ import annotations

import math

import torch

from whybox.curvature.base import (
    Curvature,
    InaccurateSolveError,
    NotPositiveDefiniteError,
    alternative_solver,
    lanczos,
    not_pd_message,
)
from whybox.objective import Objective

ROUND_CONTRACTION = 0.1  # the default depth cuts the truncation error tenfold in every round


class LiSSADivergenceError(ValueError):
    """The LiSSA series blew up (norm growth or NaN): raise ``scale`` or ``damping``."""


class LiSSA(Curvature):
    """Stochastic inverse HVP, in rounds of ``repeats`` averaged series of length ``depth``.

    Args:
        damping: λ added to the Hessian.
        scale: must exceed the largest eigenvalue of the mini-batch Hessians + λ; default
            ``scale_margin`` × (Lanczos estimate of λ_max(H + λI)).
        depth: series length t per round. Default: the number of terms for the truncation error
            (1 − λ_min/scale)^t to fall below ``ROUND_CONTRACTION`` = 0.1, with λ_min the Lanczos
            estimate of the smallest eigenvalue of H + λI. Above ``max_depth`` LiSSA refuses
            (``InaccurateSolveError`` at ``fit``, naming the solver to use instead).
        repeats: independent series averaged in each round.
        batch_size: training examples per sampled Hessian (default min(n, 256)).
        seed: for the spectrum estimate and the mini-batch draws.
        max_depth: the largest default depth accepted (the time budget: each round costs
            2·depth mini-batch HVPs with ``tail_average``).
        tail_average: run 2·depth steps and average the iterates of the last ``depth`` steps
            (Polyak-Ruppert averaging): once converged the iterates only fluctuate around
            H⁻¹v·scale with mini-batch noise, and averaging cuts that noise at no extra bias.
            ``False`` gives the paper's estimator h_t/scale.
        max_rounds: refinement rounds at most; each round solves for the current full-data
            residual and adds the answer, until the residual is ≤ ``residual_tolerance``.
        residual_tolerance, strict, curvature: see ``Curvature`` (default tolerance 1e-4; with
            ``curvature="ggn"`` the series uses mini-batch Gauss-Newton products).
    """

    default_tolerance = 1e-4

    def __init__(
        self,
        damping: float = 0.0,
        scale: float | None = None,
        depth: int | None = None,
        repeats: int = 1,
        batch_size: int | None = None,
        seed: int = 0,
        scale_margin: float = 1.5,
        max_depth: int = 1000,
        tail_average: bool = True,
        max_rounds: int = 10,
        residual_tolerance: float | None = None,
        strict: bool = False,
        curvature: str = "hessian",
    ) -> None:
        super().__init__(damping, residual_tolerance, strict, curvature)
        for name, value in (("scale", scale), ("depth", depth), ("batch_size", batch_size),
                            ("max_depth", max_depth), ("max_rounds", max_rounds)):
            if value is not None and not value > 0:
                raise ValueError(f"LiSSA {name} must be > 0, got {value}")
        if repeats < 1:
            raise ValueError(f"LiSSA repeats must be >= 1, got {repeats}")
        if not scale_margin > 1:
            raise ValueError(f"LiSSA scale_margin must be > 1 (scale above λ_max), got {scale_margin}")
        self.scale, self.depth, self.repeats = scale, depth, repeats
        self.batch_size, self.seed = batch_size, seed
        self.scale_margin, self.max_depth, self.max_rounds = scale_margin, max_depth, max_rounds
        self.tail_average = tail_average

    def fit(self, objective: Objective) -> LiSSA:
        """Estimate both ends of the spectrum, choose scale and depth, or refuse (within seconds)."""
        super().fit(objective)
        self._batch = min(objective.n, self.batch_size or 256)
        # the smallest λ_min/scale a default depth can afford: (1 − c)^max_depth = ROUND_CONTRACTION
        self._min_ratio = 1 - ROUND_CONTRACTION ** (1 / self.max_depth)
        auto = self.scale is None and self.depth is None
        with self.held_products():  # ∇R's graph built once for all the Lanczos products
            spectrum = lanczos(self.matvec, objective.p, objective.theta, seed=self.seed,
                               stop_ratio=self.scale_margin * self._min_ratio if auto else 0.0)
        low, top = spectrum.smallest, spectrum.largest
        self.diagnostics.update(
            min_eigenvalue=low, max_eigenvalue=top, condition_number=top / low if low > 0 else None,
            lanczos_steps=spectrum.steps, spectrum_converged=spectrum.converged, batch_size=self._batch,
        )
        if low <= 0:
            raise NotPositiveDefiniteError(
                not_pd_message(low, self.damping, "LiSSA", self.curvature)
                + f" (LiSSA then needs damping ≥ {self._fitting_damping(low, top):.2g} to fit max_depth="
                f"{self.max_depth}; or use {alternative_solver(objective.p)} with damping)"
            )
        self._judge_damping()  # on H itself: λ_max(H) is lost in the rounding of λ_max(H) + damping
        self._scale = self.scale or self.scale_margin * top
        # error factor per step: the worse of the two ends (the top only matters for a given scale)
        contraction = max(1 - low / self._scale, abs(1 - top / self._scale))
        if contraction >= 1:
            needed = None
        else:
            needed = max(1, math.ceil(math.log(ROUND_CONTRACTION) / math.log(max(contraction, 1e-300))))
        self.diagnostics.update(scale=self._scale, needed_depth=needed)
        if needed is None and self.depth is None:  # with a given depth the series runs and reports divergence
            raise self._diverged(f"cannot converge: λ_max(H + damping·I) ≈ {top:.3g} is at least 2·scale",
                                 self.scale_margin * top)
        if self.depth is None and needed > self.max_depth:
            raise InaccurateSolveError(self._refusal(low, top, needed))
        self._depth = self.depth or needed
        self.diagnostics.update(depth=self._depth, repeats=self.repeats, tail_average=self.tail_average)
        return self

    def _fitting_damping(self, low: float, top: float) -> float:
        """A total damping D at which the default depth fits ``max_depth``: λ_min(H) + D ≥ c·scale,
        with scale = scale_margin·(λ_max(H) + D) unless ``scale`` is given. A positive Lanczos
        λ_min(H) is only an upper bound, so it is taken as 0 (safe for any positive definite H)."""
        c, m = self._min_ratio, self.scale_margin
        low_h, top_h = min(low - self.damping, 0.0), top - self.damping
        if self.scale is not None:
            return 1.1 * (c * self.scale - low_h)
        return 1.1 * (c * m * top_h - low_h) / (1 - c * m)

    def _refusal(self, low: float, top: float, needed: int) -> str:
        p = self._fitted().p
        return (
            f"LiSSA refuses: its series would need depth ≥ {needed:,} per round (budget max_depth="
            f"{self.max_depth:,}), because H + damping·I has condition number ≥ {top / low:.3g} "
            f"(eigenvalues {low:.3g} … {top:.3g} by Lanczos) and each step shrinks the error only by "
            f"1 − λ_min/scale = {1 - low / self._scale:.6g}. Use {alternative_solver(p)} instead (p = {p}); "
            f"or LiSSA(damping={self._fitting_damping(low, top):.2g}), which fits the budget but biases the "
            f"scores (see docs/solvers.md); or LiSSA(max_depth={needed}), slow"
        )

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        X = torch.zeros_like(B)
        R = B
        active = torch.ones(len(B), dtype=torch.bool, device=B.device)
        rounds = 0
        while rounds < self.max_rounds:
            rounds += 1
            X[active] += self._series(R[active], gen)
            R, rel = self.residuals(B, X)
            active = ~(rel <= self.residual_tolerance)
            if not active.any():
                break
        steps = (2 if self.tail_average else 1) * self._depth * self.repeats
        self.diagnostics.update(rounds=rounds, steps=rounds * steps)
        return X

    def _series(self, V: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The averaged LiSSA estimate of (H + λI)⁻¹V over ``repeats`` series."""
        obj = self._fitted()
        shift = obj.decay + self.damping  # per-coordinate weight decay (Objective.decay) + damping
        v_norm = V.norm(dim=1, keepdim=True).clamp_min(torch.finfo(V.dtype).tiny)
        steps = 2 * self._depth if self.tail_average else self._depth
        total = torch.zeros_like(V)
        for _ in range(self.repeats):
            h = V.clone()
            tail = torch.zeros_like(V)
            for j in range(steps):
                idx = torch.randint(obj.n, (self._batch,), generator=gen).to(obj.device)
                h = V + h - (obj.batch_curvature_vp(h, obj.X[idx], obj.y[idx], self.curvature) + shift * h) / self._scale
                ratio = (h.norm(dim=1, keepdim=True) / v_norm).max().item()
                if not math.isfinite(ratio) or ratio > 10 * (j + 2):
                    raise self._diverged(f"diverged at step {j + 1} (‖h‖/‖v‖ = {ratio:.3g})", 4 * self._scale)
                if j >= steps - self._depth:
                    tail += h
            total += tail / self._depth if self.tail_average else h
        return total / (self.repeats * self._scale)

    def _diverged(self, what: str, scale: float) -> LiSSADivergenceError:
        return LiSSADivergenceError(
            f"LiSSA {what}: the series needs every mini-batch eigenvalue below 2·scale = "
            f"{2 * self._scale:.3g} and above 0; raise scale (e.g. LiSSA(scale={scale:.3g})) or, "
            "for a non-convex/non-converged model, raise damping"
        )

    def _accuracy_fix(self) -> str:
        p, needed = self._fitted().p, self.diagnostics["needed_depth"]
        depth = f"depth (the spectrum asks for {needed}), " if needed and self._depth < needed else ""
        return (
            f"LiSSA used {self.diagnostics['rounds']} of max_rounds={self.max_rounds} refinement rounds: raise "
            f"{depth}max_rounds, batch_size or repeats (less mini-batch noise), or use {alternative_solver(p)} "
            f"(p = {p}), or add damping (LiSSA(damping=...); a bias, see docs/solvers.md)"
        )
