r"""Arnoldi / Lanczos low-rank inverse (Schioppa et al. 2022, "Scaling up influence functions").

The top-``rank`` eigenpairs (λᵢ, uᵢ) of the symmetric H are found by implicitly restarted Lanczos
(ARPACK through ``scipy.sparse.linalg.eigsh``) on a ``LinearOperator`` whose matvec is the
objective's full-data HVP, and the solve is the projection onto them:

    x = U diag(1/(λᵢ + damping)) Uᵀ v

This is a **rank-k approximation**, not a solve of (H + damping·I)x = v: the component of v outside
span(U) is dropped. With exact eigenpairs the true residual is exactly that component,
‖(H + damping·I)x − v‖/‖v‖ = ‖(I − UUᵀ)v‖/‖v‖, so ``diagnostics`` reports, besides the true residual
(``relative_residual``, measured like every other solver's), the residual *within* the subspace
(``subspace_residual``: how well the rank-k problem itself is solved), the share of each right-hand
side the subspace holds (``rhs_captured``, worst column) and the share of trace(H) the kept
eigenvalues hold (``spectrum_captured``, trace by Hutchinson's estimator, or exact with the full
spectrum). Above ``residual_tolerance`` it warns once per ``fit`` saying all of this; with
``rank ≥ p`` the whole spectrum is kept and it is exact.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from whybox.curvature.base import (
    Curvature,
    InaccurateSolveError,
    NotPositiveDefiniteError,
    alternative_solver,
    not_pd_message,
)
from whybox.objective import Objective


class Arnoldi(Curvature):
    """Low-rank inverse from the top-``rank`` eigenpairs of H (Lanczos on HVPs), plus damping.

    Args:
        damping: added to every kept eigenvalue.
        rank: eigenpairs kept (k). With ``rank ≥ p`` the dense Hessian is diagonalised instead
            (``torch.linalg.eigh``; small p only) and the inverse is exact.
        eig_tol: ARPACK's relative accuracy of the eigenvalues (0: machine precision).
        max_iter: ARPACK restarts at most (default: scipy's, 10·p).
        trace_probes: Rademacher probes of Hutchinson's trace estimate for ``spectrum_captured``
            (0: skip it).
        seed: for ARPACK's start vector and the trace probes.
        residual_tolerance: largest accepted *full* relative residual (default 1e-6, as every
            solver: a rank-k answer misses it unless v lies in the top-k subspace, and warns).
        strict: raise ``InaccurateSolveError`` instead of warning.
        curvature: ``"hessian"`` or ``"ggn"`` (the top eigenpairs of the Gauss-Newton matrix; see ``Curvature``).

    ``NotPositiveDefiniteError`` when a kept eigenvalue plus damping is ≤ 0.
    """

    def __init__(self, damping: float = 0.0, rank: int = 100, eig_tol: float = 1e-10, max_iter: int | None = None,
                 trace_probes: int = 30, seed: int = 0, residual_tolerance: float | None = None,
                 strict: bool = False, curvature: str = "hessian") -> None:
        super().__init__(damping, residual_tolerance, strict, curvature)
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"Arnoldi rank must be an integer >= 1, got {rank!r}")
        if not 0 <= eig_tol < 1:
            raise ValueError(f"Arnoldi eig_tol must be in [0, 1), got {eig_tol}")
        if trace_probes < 0:
            raise ValueError(f"Arnoldi trace_probes must be >= 0, got {trace_probes}")
        self.rank, self.eig_tol, self.max_iter = rank, eig_tol, max_iter
        self.trace_probes, self.seed = trace_probes, seed

    def fit(self, objective: Objective) -> Arnoldi:
        """Find the top-``rank`` eigenpairs of H (without damping) and check them."""
        super().fit(objective)
        with self.held_products():  # ∇R's graph built once for all of ARPACK's products
            return self._fit(objective)

    def _fit(self, objective: Objective) -> Arnoldi:
        t0 = time.perf_counter()
        p = objective.p
        if self.rank >= p:  # the whole spectrum: no Lanczos needed
            evals, evecs = torch.linalg.eigh(objective.curvature_matrix(self.curvature))
            trace, hvps, method = evals.sum().item(), p, "dense eigh (rank ≥ p)"
        else:
            evals, evecs, hvps = self._lanczos(objective)
            trace, method = self._trace(objective), "Lanczos (scipy eigsh, ARPACK)"
        order = torch.argsort(evals, descending=True)
        evals, evecs = evals[order], evecs[:, order]
        if (evals + self.damping).min() <= 0:
            raise NotPositiveDefiniteError(
                not_pd_message((evals + self.damping).min().item(), self.damping, "Arnoldi")
                + " (a kept eigenvalue of the top-rank spectrum is ≤ 0)"
            )
        self._U = evecs.T.contiguous()  # [k, p]
        self._inv = 1.0 / (evals + self.damping)
        # eigenpair accuracy, measured with fresh HVPs: max ‖Hu − λu‖/|λ|
        eig_res = ((self.undamped(self._U) - evals[:, None] * self._U).norm(dim=1) / evals.abs()).max().item()
        kept = evals.sum().item()
        self.diagnostics.update(
            method=method, rank=len(evals), p=p, max_eigenvalue=evals[0].item(), min_kept_eigenvalue=evals[-1].item(),
            eigenpair_residual=eig_res, hvps=hvps, fit_seconds=time.perf_counter() - t0,
            spectrum_captured=None if trace is None else kept / trace,
            trace_estimate=trace, rhs_captured=None, subspace_residual=None,
        )
        self._check_damping(evals[0].item())
        self._warned = False
        return self

    def _lanczos(self, objective: Objective) -> tuple[torch.Tensor, torch.Tensor, int]:
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        p, like = objective.p, objective.theta
        calls = 0

        def matvec(v: np.ndarray) -> np.ndarray:
            nonlocal calls
            calls += 1
            x = torch.as_tensor(np.ascontiguousarray(v).reshape(1, p), dtype=like.dtype, device=like.device)
            return self.undamped(x)[0].detach().cpu().double().numpy()

        op = LinearOperator((p, p), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(self.seed).standard_normal(p)
        try:
            w, V = eigsh(op, k=self.rank, which="LA", v0=v0, tol=self.eig_tol, maxiter=self.max_iter)
        except ArpackNoConvergence as err:
            raise InaccurateSolveError(
                f"Arnoldi: Lanczos found only {len(err.eigenvalues)} of rank={self.rank} eigenpairs after {calls} HVPs; "
                "raise max_iter, loosen eig_tol, or lower rank"
            ) from None
        to = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
        return to(w), to(V), calls

    def _trace(self, objective: Objective) -> float | None:
        """Hutchinson's estimate of trace(H): mean of zᵀHz over Rademacher z."""
        if self.trace_probes == 0:
            return None
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        Z = (torch.randint(0, 2, (self.trace_probes, objective.p), generator=gen) * 2 - 1).to(objective.theta)
        return (self.undamped(Z) * Z).sum(1).mean().item()

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        return ((B @ self._U.T) * self._inv) @ self._U

    def _prove(self, B: torch.Tensor, X: torch.Tensor) -> None:
        """The true residual (as every solver), plus what explains it for a rank-k answer."""
        R, rel = self.residuals(B, X)
        C = B @ self._U.T  # coordinates of each column in the subspace
        captured = (C.norm(dim=1) / B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)).min().item()
        sub = ((R @ self._U.T).norm(dim=1) / C.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)).max().item()
        d = self.diagnostics
        worst = rel.max().item()
        d["relative_residual"] = worst if d.get("relative_residual") is None or not worst <= d["relative_residual"] \
            else d["relative_residual"]
        d["residual_tolerance"] = self.residual_tolerance
        d["rhs_captured"] = captured if d.get("rhs_captured") is None else min(captured, d["rhs_captured"])
        d["subspace_residual"] = sub if d.get("subspace_residual") is None else max(sub, d["subspace_residual"])
        if worst <= self.residual_tolerance:
            return
        spectrum = d.get("spectrum_captured")
        share = "" if spectrum is None else f", which hold ≈{spectrum:.1%} of trace(H)"
        message = (
            f"Arnoldi(rank={d['rank']}) is a rank-{d['rank']} approximation of (H + damping·I)⁻¹ (p = {d['p']}): it "
            f"solves only within the top-{d['rank']} eigenvectors{share}. Relative residual "
            f"‖(H + damping·I)x − v‖/‖v‖ = {worst:.2e} > residual_tolerance={self.residual_tolerance:g} "
            f"(worst of {len(B)} right-hand sides; the subspace holds ≥ {captured:.1%} of each v's norm, and "
            f"within it the residual is {sub:.1e}). Scores are those of the projected influence; for the full "
            f"solve raise rank or use {alternative_solver(d['p'])}; to accept the approximation pass "
            "residual_tolerance=..."
        )
        if self.strict:
            raise InaccurateSolveError(message)
        if not self._warned:  # once per fit: every solve of a rank-k method misses a tight tolerance
            self._warned = True
            warnings.warn(message + " (strict=True makes this an error; warned once per fit)", RuntimeWarning,
                          stacklevel=3)

    def _accuracy_fix(self) -> str:
        return f"raise rank (now {self.rank}) or use {alternative_solver(self._fitted().p)}"
