"""Exact inverse HVPs: form H (small p), factorise it once, solve any number of right-hand sides."""

from __future__ import annotations

import torch

from whybox.curvature.base import Curvature, NotPositiveDefiniteError, lanczos, not_pd_message
from whybox.objective import Objective


class Exact(Curvature):
    """Dense (H + damping·I), Cholesky-factorised. Cost O(p²·n) to form, O(p³) to factorise.

    Raises ``NotPositiveDefiniteError`` with the smallest eigenvalue and a damping that fixes it.
    Use for p up to a few thousand parameters (a linear model, the last layer of a network).
    Each solve's residual is measured against the formed matrix (which is the full-data HVP
    applied to the identity), so an ill-conditioned factorisation cannot pass unnoticed.

    Args:
        damping, residual_tolerance, strict, curvature: see ``Curvature`` (``curvature="ggn"`` forms
            the Gauss-Newton matrix from per-example output Jacobians instead of p HVPs).
        max_params: refuse to form H above this many parameters.
        matrix: the undamped H (or G) already formed at the objective's θ (``objective.curvature_matrix()``),
            to share one between several solvers instead of forming it again; it is copied, not changed.
    """

    def __init__(self, damping: float = 0.0, max_params: int = 20_000, residual_tolerance: float | None = None,
                 strict: bool = False, curvature: str = "hessian", matrix: torch.Tensor | None = None) -> None:
        super().__init__(damping, residual_tolerance, strict, curvature)
        self.max_params = max_params
        self._matrix = matrix

    def fit(self, objective: Objective) -> Exact:
        super().fit(objective)
        if objective.p > self.max_params:
            raise ValueError(
                f"Exact would form a {objective.p}x{objective.p} Hessian; for p > {self.max_params} "
                "use CG or LiSSA, or restrict to a subset of parameters (params=...)"
            )
        if self._matrix is None:
            H = objective.curvature_matrix(self.curvature)
        elif self._matrix.shape != (objective.p, objective.p):
            raise ValueError(f"matrix must be the [p, p] = [{objective.p}, {objective.p}] {self.matrix_name}, "
                             f"got shape {tuple(self._matrix.shape)}")
        else:
            H = self._matrix.to(dtype=objective.dtype, device=objective.device, copy=True)
        H.diagonal().add_(self.damping)
        self.hessian = H
        self.diagnostics["p"] = objective.p
        if objective.p <= 3000:  # cheap enough: report the spectrum, catch numerically singular H
            evals = torch.linalg.eigvalsh(H)
            low, top = evals[0].item(), evals[-1].item()
            if low <= 1e-12 * abs(top):
                raise NotPositiveDefiniteError(not_pd_message(low, self.damping, "Exact", self.curvature))
            self.diagnostics.update(min_eigenvalue=low, max_eigenvalue=top, condition_number=top / low)
            self._check_damping(top - self.damping)
        elif self.damping > 0:  # only the top eigenvalue is needed, to judge the damping
            undamped = lambda V: V @ H - self.damping * V  # noqa: E731
            self._check_damping(lanczos(undamped, objective.p, H, ends="largest").largest)
        chol, info = torch.linalg.cholesky_ex(H)
        if info.item() != 0:
            min_eig = torch.linalg.eigvalsh(H)[0].item()
            raise NotPositiveDefiniteError(not_pd_message(min_eig, self.damping, "Exact", self.curvature))
        self._chol = chol
        return self

    @property
    def cholesky(self) -> torch.Tensor:
        """The lower Cholesky factor of the formed (H + damping·I) (e.g. ``zoo.fit(newton=...)``)."""
        self._fitted()
        return self._chol

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """(H + damping·I)·V with the formed matrix (the same operator as the full-data HVP)."""
        self._fitted()
        return V.reshape(-1, self.hessian.shape[0]) @ self.hessian

    def dense(self) -> torch.Tensor:
        self._fitted()
        return self.hessian

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(B.T, self._chol).T

    def _accuracy_fix(self) -> str:
        cond = self.diagnostics.get("condition_number")
        about = f" (condition number {cond:.3g})" if cond else ""
        float64 = "" if self.hessian.dtype == torch.float64 else ", or work in float64"
        return (
            f"the Hessian is too ill-conditioned for a {self.hessian.dtype} factorisation{about}: add damping "
            f"(Exact(damping=...)), use weight decay, or standardise the inputs{float64}"
        )
