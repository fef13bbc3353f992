"""Conjugate gradients: H⁻¹v = argmin_t ½tᵀHt − vᵀt with full-data HVPs (paper §3)."""

from __future__ import annotations

import warnings

import torch

from whybox.curvature.base import Curvature, NotPositiveDefiniteError, not_pd_message


class CG(Curvature):
    """Batched conjugate gradients on (H + damping·I) t = v, one column per right-hand side.

    Args:
        damping: added to the Hessian's diagonal.
        rtol: stop a column when ‖residual‖ ≤ rtol·‖v‖.
        max_iter: iteration cap (default: 2·p, at least 100).

    ``diagnostics`` holds the iterations and the worst relative residual. Negative curvature
    (pᵀHp ≤ 0) raises ``NotPositiveDefiniteError``; hitting ``max_iter`` warns.
    """

    def __init__(self, damping: float = 0.0, rtol: float = 1e-10, max_iter: int | None = None) -> None:
        super().__init__(damping)
        if not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {rtol}")
        self.rtol = rtol
        self.max_iter = max_iter

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        obj = self._fitted()
        B = V.reshape(-1, obj.p)
        max_iter = self.max_iter or max(2 * obj.p, 100)
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
                raise NotPositiveDefiniteError(not_pd_message(curv, self.damping, "CG"))
            alpha = rs[active] / pAp
            X[active] += alpha[:, None] * P[active]
            R[active] -= alpha[:, None] * AP
            rs_new = (R * R).sum(1)
            beta = rs_new[active] / rs[active]
            P[active] = R[active] + beta[:, None] * P[active]
            rs = rs_new
            active = rs > target
            it += 1
        rel = (rs.sqrt() / B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)).max().item()
        self.diagnostics = {"iterations": it, "relative_residual": rel, "converged": not active.any().item()}
        if active.any():
            warnings.warn(
                f"CG stopped at max_iter={max_iter} with relative residual {rel:.2e} > rtol={self.rtol:g}; "
                "raise max_iter or add damping",
                RuntimeWarning,
                stacklevel=2,
            )
        return X
