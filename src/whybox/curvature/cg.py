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

    ``diagnostics`` holds the iterations, whether every column met ``rtol``, and the true relative
    residual (measured by ``Curvature.solve``). Negative curvature (pᵀHp ≤ 0) raises
    ``NotPositiveDefiniteError``.
    """

    def __init__(self, damping: float = 0.0, rtol: float = 1e-10, max_iter: int | None = None,
                 residual_tolerance: float | None = None, strict: bool = False, curvature: str = "hessian") -> None:
        if not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {rtol}")
        super().__init__(damping, max(1e-6, 100 * rtol) if residual_tolerance is None else residual_tolerance, strict,
                         curvature)
        self.rtol = rtol
        self.max_iter = max_iter

    def fit(self, objective: Objective) -> CG:
        super().fit(objective)
        if self.damping > 0:  # judge the damping against the top of H's spectrum (a few HVPs)
            self._check_damping(lanczos(self.undamped, objective.p, objective.theta, ends="largest").largest)
        return self

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        max_iter = self.max_iter or max(2 * B.shape[1], 100)
        X = torch.zeros_like(B)
        R = B.clone()
        P = R.clone()
        rs = (R * R).sum(1)
        target = (self.rtol * B.norm(dim=1)) ** 2
        active = rs > target
        it = 0
        while active.any() and it < max_iter:
            AP = self.matvec(P[active])
            pAp = (P[active] * AP).sum(1)
            if (pAp <= 0).any():
                curv = (pAp / (P[active] * P[active]).sum(1)).min().item()
                raise NotPositiveDefiniteError(not_pd_message(curv, self.damping, "CG", self.curvature))
            alpha = rs[active] / pAp
            X[active] += alpha[:, None] * P[active]
            R[active] -= alpha[:, None] * AP
            rs_new = (R * R).sum(1)
            beta = rs_new[active] / rs[active]
            P[active] = R[active] + beta[:, None] * P[active]
            rs = rs_new
            active = rs > target
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
