"""Conjugate gradients: H⁻¹V = argmin_T ½tr(TᵀHT) − tr(VᵀT) with full-data HVPs (paper §3).

All right-hand sides are solved together by block conjugate gradients (O'Leary 1980, in the
breakdown-free form of Ji & Li 2017): every iteration multiplies H by one block of search
directions, one per right-hand side still above ``rtol``, and each column's step uses the whole
block Krylov space, so k test points take fewer iterations than k separate CG runs (the space
grows by k directions per product pass). Directions that become linearly dependent are dropped
(rank-revealing SVD), so the block never breaks down.

Preconditioning (``preconditioner=``) changes only the path: the answer solves the exact system
(H + damping·I)X = V and ``Curvature.solve`` checks its true residual either way.

By default (``precision="float32"``) a float64 objective's Krylov iterations run on a float32 copy of the
model (products 2–4× cheaper on a CPU, most for convolutions) and refines the answer against
residuals measured in float64 (mixed-precision iterative refinement: each round solves
(H + damping·I)D = R in float32 and adds D; R = V − (H + damping·I)X in float64). A round that
does not halve the worst residual (or meets negative curvature, which float32 rounding can fake)
means float32 cannot resolve the system; the solve then finishes in float64 from where it stands. Either way the returned answer's residual is the float64 one.
"""

from __future__ import annotations

import math

import torch

from whybox.curvature.base import Curvature, NotPositiveDefiniteError, alternative_solver, not_pd_message
from whybox.objective import Objective

PRECONDITIONERS = ("gradients", None)
PRECISIONS = ("model", "float32")
MAX_REFINEMENTS = 8


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
        precision: ``"float32"`` (default): iterate on a float32 copy of the model and refine against
            residuals in the objective's float64 (module text; plain CG for a float32 objective, and
            for a GLM or explained last layer, whose Hessian products are two GEMMs already).
            ``"model"``: iterate in the objective's dtype throughout.

    ``diagnostics`` holds the iterations, the Hessian-vector products (vectors) used, whether every
    column met ``rtol``, the preconditioner, the refinement rounds (``precision="float32"``), and
    the true relative residual (measured by ``Curvature.solve``). Negative curvature in a search
    block raises ``NotPositiveDefiniteError`` (decided in float64: a float32 round that meets it
    hands over to the float64 finish).
    """

    def __init__(self, damping: float = 0.0, rtol: float = 1e-10, max_iter: int | None = None,
                 residual_tolerance: float | None = None, strict: bool = False, curvature: str = "hessian",
                 preconditioner: str | torch.Tensor | Curvature | None = "gradients",
                 preconditioner_rank: int = 128, max_block: int = 256, precision: str = "float32") -> None:
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
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        default_tolerance = max(1e-6, min(100 * rtol, rtol**0.5))
        super().__init__(damping, default_tolerance if residual_tolerance is None else residual_tolerance, strict,
                         curvature)
        self.rtol = rtol
        self.max_iter = max_iter
        self.preconditioner = preconditioner
        self.preconditioner_rank = int(preconditioner_rank)
        self.max_block = int(max_block)
        self.precision = precision
        self._pre: tuple = ("none",)  # what _precondition applies: plain data, so a fitted CG pickles
        self._working: Objective | None = None  # the float32 copy that iterates (precision="float32")
        self._pre32: tuple | None = None  # _pre in float32 for its rounds
        self._measured: tuple | None = None  # (X, R): the last refined answer and its float64 residual

    def fit(self, objective: Objective) -> CG:
        super().fit(objective)
        self._working = None
        mixed = self.precision == "float32" and objective.dtype != torch.float32
        if mixed and self.curvature == "hessian" and objective._linear_head() is not None:
            self.diagnostics["precision"] = "model (closed-form products of a GLM / last layer)"  # a copy does not pay
        elif mixed:
            try:
                self._working = objective.cast(torch.float32)
            except Exception as err:  # a model that cannot be copied or cast: iterate in its own dtype
                self.diagnostics["precision"] = f"model (no float32 copy: {type(err).__name__}: {err})"
        self._pre = self._build_preconditioner(objective)
        kind, *data = self._pre  # the float32 rounds' copy, cast once
        self._pre32 = (kind, *(d.float() if torch.is_tensor(d) else d for d in data)) if self._working else None
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
        """M⁻¹R for rows ``R [k, p]``, in R's dtype."""
        kind, *data = self._pre32 if self._pre32 is not None and R.dtype == torch.float32 else self._pre
        if kind == "curvature":  # its approximate inverse, without its own residual check, in its dtype
            M = data[0]
            return M._solve(R.to(M.objective.dtype)).to(R.dtype)
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
        if self._working is None:
            return self._grouped(B, self.matvec, self.rtol)
        return self._refined(B)

    def _grouped(self, B: torch.Tensor, matvec, rtol: float | torch.Tensor) -> torch.Tensor:
        """Block CG on groups of at most ``max_block`` columns (diagnostics: the worst group's
        iterations); ``rtol`` per column or one for all."""
        X, its, hvps, converged = [], 0, 0, True
        rtol = torch.as_tensor(rtol, dtype=B.dtype).expand(len(B))
        for start in range(0, len(B), self.max_block):
            group = slice(start, start + self.max_block)
            X.append(self._block_cg(B[group], matvec, rtol[group]))
            d = self.diagnostics
            its, hvps, converged = max(its, d["iterations"]), hvps + d["hvps"], converged and d["converged"]
        self.diagnostics.update(iterations=its, hvps=hvps, converged=converged)
        return torch.cat(X)

    def _refined(self, B: torch.Tensor) -> torch.Tensor:
        """Mixed-precision iterative refinement (module text): float32 block CG on the float64
        residual, until every column meets ``rtol`` in float64."""
        floor = 1e-5  # what a float32 recursion can still tell apart from rounding
        products = self._working.curvature_operator(self.curvature)
        matvec32 = lambda V: products(V) + self.damping * V  # noqa: E731
        X, R = torch.zeros_like(B), B
        b_norm = B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)
        worst, rounds, its, hvps = math.inf, 0, 0, 0
        while True:
            rel = R.norm(dim=1) / b_norm
            done = rel <= self.rtol
            if done.all() or rounds == MAX_REFINEMENTS or not rel.max() <= 0.5 * worst:
                break
            worst, rounds = rel.max().item(), rounds + 1
            inner = (self.rtol / rel).clamp(floor, 0.5)  # the accuracy this round must add, per column
            try:
                D = self._grouped(R[~done].float(), matvec32, inner[~done].float()).to(B.dtype)
            except NotPositiveDefiniteError:  # float32 rounding can hide small positive curvature: float64 decides
                break
            its, hvps = its + self.diagnostics["iterations"], hvps + self.diagnostics["hvps"]
            X[~done] += D
            R = B - self.matvec(X)
            hvps += len(B)
        if not done.all():  # float32 stalled (or the round cap): finish in the model's precision
            X[~done] += self._grouped(R[~done], self.matvec, self.rtol * b_norm[~done] / R[~done].norm(dim=1))
            its, hvps = its + self.diagnostics["iterations"], hvps + self.diagnostics["hvps"]
            R = None
        converged = bool(done.all()) or self.diagnostics["converged"]  # the float64 finish's, if it ran
        self.diagnostics.update(iterations=its, hvps=hvps, refinement_rounds=rounds, converged=converged,
                                precision="float32 iterations, float64 residuals")
        self._measured = (X, R)
        return X

    def residuals(self, B: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The base check, reusing the float64 residual the refinement already measured for this X."""
        if self._measured is not None and self._measured[0] is X and self._measured[1] is not None:
            R = self._measured[1]
            self._measured = None
            return R, R.norm(dim=1) / B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)
        return super().residuals(B, X)

    def _block_cg(self, B: torch.Tensor, matvec, rtol: torch.Tensor) -> torch.Tensor:
        max_iter = self.max_iter or max(2 * B.shape[1], 100)
        X = torch.zeros_like(B)
        R = B.clone()
        target = rtol * B.norm(dim=1)
        active = R.norm(dim=1) > target
        P = _orthonormal(self._precondition(R[active])) if active.any() else R[:0]
        it = products = 0
        while active.any() and it < max_iter and len(P):
            Q = matvec(P)
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
