"""Conjugate gradients: H⁻¹V = argmin_T ½tr(TᵀHT) − tr(VᵀT) with full-data HVPs (paper §3).

All right-hand sides are solved together by block conjugate gradients (O'Leary 1980, in the
breakdown-free form of Ji & Li 2017): every iteration multiplies H by one block of search
directions, one per right-hand side still above ``rtol``, and each column's step uses the whole
block Krylov space, so k test points take fewer iterations than k separate CG runs (the space
grows by k directions per product pass). Directions that become linearly dependent are dropped
(rank-revealing SVD), so the block never breaks down.

Preconditioning (``preconditioner=``) changes only the path: the answer solves the exact system
(H + damping·I)X = V and ``Curvature.solve`` checks its true residual either way.
"""

from __future__ import annotations

import torch

from whybox.curvature.base import Curvature, NotPositiveDefiniteError, alternative_solver, not_pd_message
from whybox.objective import Objective

PRECONDITIONERS = ("gradients", None)


class CG(Curvature):
    """Block conjugate gradients on (H + damping·I) T = V, all right-hand sides at once.

    Args:
        damping: added to the Hessian's diagonal.
        rtol: stop when every column's (recursively updated) residual is ≤ rtol·‖v‖.
        max_iter: iteration cap (default: 2·p, at least 100).
        residual_tolerance: largest accepted true relative residual (default max(1e-6, min(100·rtol, √rtol))).
        strict: raise ``InaccurateSolveError`` instead of warning when it is missed.
        curvature: ``"hessian"`` or ``"ggn"`` (Gauss-Newton products; see ``Curvature``).
        preconditioner: an SPD M ≈ H + damping·I whose inverse is cheap:

            * ``"gradients"`` (default): M = diag(decay + damping) + (1/n)ΣᵢgᵢgᵢᵀT over the
              ``preconditioner_rank`` training gradients gᵢ with the largest norms (the empirical
              Fisher's biggest terms; random rows when the gradients do not fit in the objective's
              cache), inverted by the Woodbury identity. The training gradients are the ones
              scoring needs anyway (the objective caches them).
            * ``None``: plain (block) CG.
            * a lower Cholesky factor ``[p, p]`` of an SPD matrix close to H + damping·I (e.g. H
              at nearby parameters).
            * a ``Curvature`` such as ``KFAC(damping=...)`` (fitted on the same objective if it is
              not): its approximate inverse.
        preconditioner_rank: how many training gradients ``"gradients"`` uses.
        max_block: solve at most this many right-hand sides in one block (more are split into groups):
            a step orthonormalises the block at O(k²p), small next to its k HVPs up to a few hundred.

    ``diagnostics`` holds the iterations, the Hessian-vector products (vectors) used, whether every
    column met ``rtol``, the preconditioner, and the true relative residual (measured by
    ``Curvature.solve``). Negative curvature in a search block raises ``NotPositiveDefiniteError``.
    """

    def __init__(self, damping: float = 0.0, rtol: float = 1e-10, max_iter: int | None = None,
                 residual_tolerance: float | None = None, strict: bool = False, curvature: str = "hessian",
                 preconditioner: str | torch.Tensor | Curvature | None = "gradients",
                 preconditioner_rank: int = 128, max_block: int = 256) -> None:
        if not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {rtol}")
        if torch.is_tensor(preconditioner):
            if preconditioner.ndim != 2 or preconditioner.shape[0] != preconditioner.shape[1]:
                raise ValueError("preconditioner must be a square [p, p] Cholesky factor, got shape "
                                 f"{tuple(preconditioner.shape)}")
        elif not isinstance(preconditioner, Curvature) and preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, a [p, p] Cholesky factor or a "
                             f"Curvature (e.g. KFAC()), got {preconditioner!r}")
        if preconditioner_rank < 1:
            raise ValueError(f"preconditioner_rank must be >= 1, got {preconditioner_rank}")
        if max_block < 1:
            raise ValueError(f"max_block must be >= 1, got {max_block}")
        default_tolerance = max(1e-6, min(100 * rtol, rtol**0.5))
        super().__init__(damping, default_tolerance if residual_tolerance is None else residual_tolerance, strict,
                         curvature)
        self.rtol = rtol
        self.max_iter = max_iter
        self.preconditioner = preconditioner
        self.preconditioner_rank = int(preconditioner_rank)
        self.max_block = int(max_block)
        self._pre: tuple = ("none",)  # what _precondition applies: plain data, so a fitted CG pickles

    def fit(self, objective: Objective) -> CG:
        super().fit(objective)
        self._pre = self._build_preconditioner(objective)
        self._judge_damping()  # judge the damping against the top of H's spectrum (usually one HVP)
        return self

    # ------------------------------------------------------------------ preconditioners
    def _build_preconditioner(self, obj: Objective) -> tuple:
        M = self.preconditioner
        if M is None:
            self.diagnostics["preconditioner"] = "none"
            return ("none",)
        if isinstance(M, Curvature):
            if M.objective is not obj:
                M.fit(obj)
            self.diagnostics["preconditioner"] = repr(M)
            return ("curvature", M)
        if torch.is_tensor(M):
            if M.shape[0] != obj.p:
                raise ValueError(f"preconditioner is {M.shape[0]}x{M.shape[0]} but p = {obj.p}")
            self.diagnostics["preconditioner"] = "Cholesky factor"
            return ("cholesky", M.to(device=obj.device, dtype=obj.dtype))
        return self._gradient_preconditioner(obj)

    def _precondition(self, R: torch.Tensor) -> torch.Tensor:
        """M⁻¹R for rows ``R [k, p]``."""
        kind, *data = self._pre
        if kind == "curvature":
            return data[0]._solve(R)  # its approximate inverse, without its own residual check
        if kind == "cholesky":
            return torch.cholesky_solve(R.T, data[0]).T
        if kind == "woodbury":
            U, D, L = data
            Y = R / D
            return Y - torch.cholesky_solve(U @ Y.T, L).T @ U / D
        return R

    def _gradient_preconditioner(self, obj: Objective) -> tuple:
        """M⁻¹ for M = D + UᵀU, D = decay + damping, U = ``m`` training gradients /√n (Woodbury:
        M⁻¹r = D⁻¹r − D⁻¹Uᵀ(I + UD⁻¹Uᵀ)⁻¹UD⁻¹r, an m×m Cholesky factor)."""
        m = min(obj.n, self.preconditioner_rank)
        if obj.n * obj.p * obj.theta.element_size() <= obj.cache_bytes:  # all gradients: keep the largest terms
            G = obj.train_grads(slice(None))
            U = G[G.norm(dim=1).topk(m).indices] / obj.n**0.5
            how = f"{m} largest of {obj.n} training gradients"
        else:  # an unbiased sample of the empirical Fisher
            gen = torch.Generator(device="cpu").manual_seed(0)
            rows = torch.randperm(obj.n, generator=gen)[:m].to(obj.device)
            U = obj.train_grads(rows) / m**0.5
            how = f"{m} random training gradients of {obj.n}"
        D = obj.decay + self.damping
        floor = 1e-3 * (U.pow(2).sum() / obj.p).item() or 1.0  # any SPD M works; it must be invertible
        D = D.clamp_min(floor) if not D.min() > 0 else D
        K = U / D @ U.T
        K.diagonal().add_(1.0)
        L = torch.linalg.cholesky(0.5 * (K + K.T))
        self.diagnostics["preconditioner"] = f"gradients: diag(decay + damping) + empirical Fisher of the {how}"
        return ("woodbury", U, D, L)

    # ------------------------------------------------------------------ the solve
    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        """Block CG on groups of at most ``max_block`` columns (diagnostics: the worst group's iterations)."""
        X, its, hvps, converged = [], 0, 0, True
        for start in range(0, len(B), self.max_block):
            X.append(self._block_cg(B[start : start + self.max_block]))
            d = self.diagnostics
            its, hvps, converged = max(its, d["iterations"]), hvps + d["hvps"], converged and d["converged"]
        self.diagnostics.update(iterations=its, hvps=hvps, converged=converged)
        return torch.cat(X)

    def _block_cg(self, B: torch.Tensor) -> torch.Tensor:
        max_iter = self.max_iter or max(2 * B.shape[1], 100)
        X = torch.zeros_like(B)
        R = B.clone()
        target = self.rtol * B.norm(dim=1)
        active = R.norm(dim=1) > target
        P = _orthonormal(self._precondition(R[active])) if active.any() else R[:0]
        it = products = 0
        while active.any() and it < max_iter and len(P):
            Q = self.matvec(P)
            products += len(P)
            PQ = P @ Q.T
            L, info = torch.linalg.cholesky_ex(0.5 * (PQ + PQ.T))
            if info.item() != 0:  # P has orthonormal rows: PQ's eigenvalues are Rayleigh quotients of H + damping·I
                curv = torch.linalg.eigvalsh(0.5 * (PQ + PQ.T))[0].item()
                raise NotPositiveDefiniteError(not_pd_message(curv, self.damping, "CG", self.curvature))
            alpha = torch.cholesky_solve(P @ R.T, L)  # [r, k]: each column's best step in span P (energy norm)
            X += alpha.T @ P
            R -= alpha.T @ Q
            it += 1
            active = R.norm(dim=1) > target
            if not active.any():
                break
            Z = self._precondition(R[active])
            beta = torch.cholesky_solve(Q @ Z.T, L)  # make the new directions H-orthogonal to P
            P = _orthonormal(Z - beta.T @ P)
        self.diagnostics.update(iterations=it, hvps=products, max_iter=max_iter, converged=not bool(active.any()))
        return X

    def _accuracy_fix(self) -> str:
        p = self._fitted().p
        d = self.diagnostics
        fixes = [] if d["converged"] else [f"raise max_iter (CG stopped at {d['max_iter']})"]
        fixes.append("add damping (CG(damping=...); a bias, see docs/solvers.md)")
        if alternative_solver(p) == "Exact()":
            fixes.append(f"use Exact() (p = {p})")
        return ", or ".join(fixes)


def _orthonormal(Z: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal rows spanning the rows of ``Z`` (each scaled to unit length first, so a nearly
    converged column counts as much as the others), without the directions whose singular value
    is below ``rtol`` of the largest: the block shrinks instead of breaking down."""
    Z = Z / Z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(Z.dtype).tiny)
    _, S, Vh = torch.linalg.svd(Z, full_matrices=False)
    return Vh[S > rtol * S[0]]
