"""Conjugate gradients: H⁻¹v = argmin_t ½tᵀHt − vᵀt with full-data HVPs (paper §3)."""

from __future__ import annotations

import torch

from whybox.curvature.base import Curvature, NotPositiveDefiniteError, alternative_solver, lanczos, not_pd_message
from whybox.objective import Objective


class CG(Curvature):
    """Batched conjugate gradients on (H + damping·I) t = v, one column per right-hand side.

    Args:
        damping: added to the Hessian's diagonal.
        rtol: stop a column when its (recursively updated) residual is ≤ rtol·‖v‖.
        max_iter: iteration cap (default: 2·p, at least 100).
        residual_tolerance: largest accepted true relative residual (default max(1e-6, 100·rtol)).
        strict: raise ``InaccurateSolveError`` instead of warning when it is missed.
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton products; see ``Curvature``).
        preconditioner: the lower Cholesky factor ``[p, p]`` of an SPD matrix M close to H + damping·I
            (e.g. H at nearby parameters): preconditioned CG, which converges in a few iterations when
            M⁻¹(H + damping·I) ≈ I. The answer and its residual check are unchanged.

    ``diagnostics`` holds the iterations, whether every column met ``rtol``, and the true relative
    residual (measured by ``Curvature.solve``). Negative curvature (pᵀHp ≤ 0) raises
    ``NotPositiveDefiniteError``.
    """

    def __init__(self, damping: float = 0.0, rtol: float = 1e-10, max_iter: int | None = None,
                 residual_tolerance: float | None = None, strict: bool = False, curvature: str = "hessian",
                 preconditioner: torch.Tensor | None = None) -> None:
        if not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {rtol}")
        if preconditioner is not None and (preconditioner.ndim != 2 or preconditioner.shape[0] != preconditioner.shape[1]):
            raise ValueError(f"preconditioner must be a square [p, p] Cholesky factor, got shape {tuple(preconditioner.shape)}")
        self.preconditioner = preconditioner
        super().__init__(damping, max(1e-6, 100 * rtol) if residual_tolerance is None else residual_tolerance, strict,
                         curvature)
        self.rtol = rtol
        self.max_iter = max_iter

    def fit(self, objective: Objective) -> CG:
        super().fit(objective)
        if self.preconditioner is not None and self.preconditioner.shape[0] != objective.p:
            raise ValueError(f"preconditioner is {self.preconditioner.shape[0]}x{self.preconditioner.shape[0]} but p = {objective.p}")
        if self.damping > 0:  # judge the damping against the top of H's spectrum (a few HVPs)
            self._check_damping(lanczos(self.undamped, objective.p, objective.theta, ends="largest").largest)
        return self

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        max_iter = self.max_iter or max(2 * B.shape[1], 100)
        L = self.preconditioner
        precondition = (lambda R: R) if L is None else (  # noqa: E731 - z = M⁻¹r
            lambda R: torch.cholesky_solve(R.T, L.to(R)).T)
        X = torch.zeros_like(B)
        R = B.clone()
        Z = precondition(R)
        P = Z.clone()
        rz = (R * Z).sum(1)
        target = (self.rtol * B.norm(dim=1)) ** 2
        active = (R * R).sum(1) > target
        it = 0
        while active.any() and it < max_iter:
            AP = self.matvec(P[active])
            pAp = (P[active] * AP).sum(1)
            if (pAp <= 0).any():
                curv = (pAp / (P[active] * P[active]).sum(1)).min().item()
                raise NotPositiveDefiniteError(not_pd_message(curv, self.damping, "CG", self.curvature))
            alpha = rz[active] / pAp
            X[active] += alpha[:, None] * P[active]
            R[active] -= alpha[:, None] * AP
            Z[active] = precondition(R[active])
            rz_new = (R * Z).sum(1)
            beta = rz_new[active] / rz[active]
            P[active] = Z[active] + beta[:, None] * P[active]
            rz = rz_new
            active = (R * R).sum(1) > target
            it += 1
        self.diagnostics.update(iterations=it, max_iter=max_iter, converged=not bool(active.any()))
        return X

    def _accuracy_fix(self) -> str:
        p = self._fitted().p
        d = self.diagnostics
        fixes = [] if d["converged"] else [f"raise max_iter (CG stopped at {d['max_iter']})"]
        fixes.append("add damping (CG(damping=...); a bias, see docs/solvers.md)")
        if alternative_solver(p) == "Exact()":
            fixes.append(f"use Exact() (p = {p})")
        return ", or ".join(fixes)
