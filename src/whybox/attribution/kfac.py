r"""Influence with K-FAC/EK-FAC curvature, scored from layer inputs and output gradients.

A factored layer's per-example gradient is Σ_t δ_t āᵢ_tᵀ (see ``whybox.curvature.kfac``), so the
score of training point i for test point t needs no per-example gradient of the whole model:

* K-FAC, T = 1 (Linear on ``[B, d]``): the solved test gradient stays rank one,
  (G⁻¹δₜ)(A⁻¹āₜ)ᵀ, and the layer adds (δᵢᵀG⁻¹δₜ)(āₜᵀA⁻¹āᵢ): two GEMMs of size n·m·(d_in + d_out).
* EK-FAC, T = 1: the solved test gradient is Sₜ = Q_G [(δ̃ₜãₜᵀ) ⊙ W] Q_Aᵀ with δ̃ = Q_Gᵀδ, ã = Q_Aᵀā
  and W = 1/(Λ + λ) one ``[d_out, d_in]`` matrix per layer, so the layer adds
  Σ_{o,j} δ̃ᵢₒ δ̃ₜₒ W[o, j] ãₜⱼ ãᵢⱼ. ``scoring="low_rank"`` (default) replaces W by a rank-R
  approximation W_R = Σ_r lᵣrᵣᵀ (``low_rank_inverse``, R from ``rank_tolerance``), which makes Sₜ
  rank R: Σ_r (δᵢ·Q_G(δ̃ₜ⊙lᵣ))(āᵢ·Q_A(ãₜ⊙rᵣ)), two GEMMs of n·m·R·(d_in + d_out); every test batch
  is checked against the exact form on ``CHECK_ROWS`` training rows. ``scoring="dense"``: Sₜ dense,
  one GEMM of the training δ against all Sₜ (n·m·d_out·d_in) without forming δᵢāᵢᵀ.
* T > 1 (Conv2d, Linear on sequences): the layer's per-example gradient Σ_t δ_tā_tᵀ is formed
  for one chunk of rows at a time, then dotted with Sₜ.
* Parameters outside factorable layers: their per-example gradients (the curvature's fallback).

Everything else (sign, units, the Koh & Liang quantities) is ``InfluenceFunction``'s; the scores
equal ``InfluenceFunction(objective, curvature).scores`` up to rounding (low-rank EK-FAC: within
``rank_tolerance``, measured).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch

from whybox.attribution.base import Index
from whybox.curvature.base import InaccurateSolveError
from whybox.curvature.ekfac import EKFAC, LowRankInverse, low_rank_inverse
from whybox.curvature.kfac import KFAC, ChunkGrads, KroneckerLayer, aligned_mm, chunk_grads
from whybox.influence.first_order import InfluenceFunction
from whybox.objective import Objective

_BLOCK_ELEMENTS = 2**23  # intermediate [rows, m, d] blocks of at most 64 MiB in float64
CHECK_ROWS = 16  # training rows on which test_factors compares low-rank EK-FAC scores with exact ones
SCORING = ("low_rank", "dense")


@dataclass
class LayerTestFactors:
    """One factored layer's solved test gradients: Σ_r U[t, r] V[t, r]ᵀ (``U [m, R, d_out]``,
    ``V [m, R, d_in]``; score = Σ_r (δᵢ·U)(āᵢ·V)), or dense ``S [m, d_out, d_in]``. ``rotated``:
    the test rows in the EK-FAC eigenbasis (δ̃ₜ, ãₜ), kept for the exact check of a low-rank layer."""

    U: torch.Tensor | None = None
    V: torch.Tensor | None = None
    S: torch.Tensor | None = None
    rotated: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def cat(parts: list[LayerTestFactors]) -> LayerTestFactors:
        out = {}
        for f in fields(LayerTestFactors):
            values = [getattr(p, f.name) for p in parts]
            if values[0] is None:
                out[f.name] = None
            elif isinstance(values[0], tuple):
                out[f.name] = tuple(torch.cat(v) for v in zip(*values))
            else:
                out[f.name] = torch.cat(values)
        return LayerTestFactors(**out)


@dataclass
class KroneckerTestFactors:
    """Solved test gradients: one ``LayerTestFactors`` per factored layer, ``left [m, p_left]`` for the rest."""

    layers: list[LayerTestFactors]
    left: torch.Tensor | None

    @property
    def m(self) -> int:
        if not self.layers:
            return len(self.left)
        f = self.layers[0]
        return len(f.S if f.S is not None else f.U)


def _layer_grads(a: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Per-example layer gradients Σ_t D[b, t] a[b, t]ᵀ, ``[B, d_out, d_in]``."""
    return torch.einsum("bto,bti->boi", D, a)


def _row_blocks(n_rows: int, per_row: int):
    size = max(1, _BLOCK_ELEMENTS // max(per_row, 1))
    for start in range(0, n_rows, size):
        yield slice(start, min(start + size, n_rows))


class KFACInfluence(InfluenceFunction):
    """``InfluenceFunction`` with ``KFAC``/``EKFAC`` curvature and factored scoring.

    Args:
        objective: the trained model, loss, weight decay and training data.
        curvature: a ``KFAC`` or ``EKFAC`` (default ``KFAC()``).
        scoring: EK-FAC only. ``"low_rank"`` (default): each Linear layer's inverse eigen-diagonal
            1/(Λ + λ) is replaced by its rank-R approximation (``whybox.curvature.ekfac.low_rank_inverse``),
            so a solved test gradient is Σ_r uᵣvᵣᵀ and scoring costs n·m·R·(d_in + d_out) instead of
            n·m·d_in·d_out; layers where R would not save work keep the exact route. ``"dense"``: the
            exact dense solved test gradients for every layer.
        rank_tolerance: with ``scoring="low_rank"``: R is the smallest rank whose estimated relative
            score error is at most this (0: full rank, exact). ``test_factors`` measures the actual
            error on ``CHECK_ROWS`` training rows and warns (``curvature.strict``: raises) above it
            (or above √eps of the dtype, rounding).

    ``scores``/``test_factors``/``score_chunk`` and ``self_influence`` (hence ``self_scores``) use
    captured layer inputs and output gradients; the other influence quantities take the flat route
    through ``curvature.solve``. ``diagnostics`` adds, per layer, the scoring route, R, the
    estimated error, the spectral error ‖W − W_R‖₂/‖W‖₂, and the worst measured error.
    """

    def __init__(self, objective: Objective, curvature: KFAC | None = None, scoring: str = "low_rank",
                 rank_tolerance: float = 1e-2) -> None:
        curvature = KFAC() if curvature is None else curvature
        if not isinstance(curvature, KFAC):
            raise TypeError(
                f"KFACInfluence needs a KFAC or EKFAC curvature, got {type(curvature).__name__}; "
                "use InfluenceFunction for other solvers"
            )
        if scoring not in SCORING:
            raise ValueError(f"scoring must be one of {SCORING}, got {scoring!r}")
        if not 0 <= rank_tolerance < 1:
            raise ValueError(f"rank_tolerance must be in [0, 1) (0: full rank, exact), got {rank_tolerance}")
        super().__init__(objective, curvature)
        self.scoring = scoring
        self.rank_tolerance = float(rank_tolerance)
        self._plans: dict[str, LowRankInverse | None] = {}
        self._scoring_info: dict[str, Any] = {}

    def fit(self) -> KFACInfluence:
        super().fit()
        self._plans.clear()
        self._scoring_info = {}
        return self

    def settings(self) -> dict[str, Any]:
        return dict(super().settings(), scoring=self.scoring, rank_tolerance=self.rank_tolerance)

    @property
    def diagnostics(self) -> dict[str, Any]:
        return dict(self.curvature.diagnostics, scoring=self.scoring, **self._scoring_info)

    def _chunks(self, X: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None):
        """True-label layer inputs and output gradients, chunk by chunk (of ``X[rows]`` when given:
        gathered one chunk at a time, so no copy of the training data is made)."""
        if not self._fitted:
            raise RuntimeError("call .fit() before computing influence")
        kf = self.curvature
        for s in self.objective.chunks(len(X) if rows is None else len(rows), kf.chunk_rows):
            Xs, ys = (X[s], y[s]) if rows is None else (X[rows[s]], y[rows[s]])
            yield s, chunk_grads(self.objective, kf.layers, kf.fallback_params, Xs, ys)

    # ------------------------------------------------------------------ low-rank EK-FAC
    def _plan(self, layer: KroneckerLayer) -> LowRankInverse | None:
        """The layer's low-rank inverse, or None for the exact dense route (K-FAC needs neither:
        its solved test gradients are rank one already)."""
        if not isinstance(self.curvature, EKFAC) or self.scoring == "dense":
            return None
        if layer.module not in self._plans:
            plan = low_rank_inverse(layer, self.rank_tolerance)
            saves = plan.rank * (layer.d_in + layer.d_out + 1) < layer.d_in * (layer.d_out + 1)
            self._plans[layer.module] = plan if saves else None
            info = self._scoring_info.setdefault("low_rank_layers", {})
            info[layer.module] = {"route": "low_rank" if saves else "dense (low rank would not save work)",
                                  "rank": plan.rank, "full_rank": min(layer.d_out, layer.d_in),
                                  "estimated_error": plan.estimated_error, "spectral_error": plan.spectral_error}
            self._scoring_info["rank_tolerance"] = self.rank_tolerance
        return self._plans[layer.module]

    # ------------------------------------------------------------------ test side
    def test_factors(self, X_test, y_test) -> KroneckerTestFactors:
        """The solved test gradients, per layer, ``KroneckerTestFactors``; low-rank EK-FAC layers
        are checked against the exact solve on ``CHECK_ROWS`` training rows first."""
        X, y = self.objective.check_data(X_test, y_test, "test")
        parts = [self._solve_test(cg) for _, cg in self._chunks(X, y)]
        layers = [LayerTestFactors.cat(list(per_layer)) for per_layer in zip(*(p.layers for p in parts))]
        left = torch.cat([p.left for p in parts]) if parts[0].left is not None else None
        factors = KroneckerTestFactors(layers, left)
        if any(f.rotated is not None for f in layers):
            self._check(factors)
        return factors

    def _solve_test(self, cg: ChunkGrads) -> KroneckerTestFactors:
        kf = self.curvature
        out = []
        for layer, (a, D) in zip(kf.layers, cg.layers):
            plan = self._plan(layer) if a.shape[1] == 1 else None
            if plan is not None:  # EK-FAC, low rank: Q_G(δ̃ₜ ⊙ leftᵣ) and Q_A(ãₜ ⊙ rightᵣ)
                qa, qg = layer.eig_A[1], layer.eig_G[1]
                dt, at = D[0, :, 0] @ qg, a[:, 0] @ qa
                U = (dt[:, None, :] * plan.left.T[None]) @ qg.T
                V = (at[:, None, :] * plan.right[None]) @ qa.T
                out.append(LayerTestFactors(U=U, V=V, rotated=(dt, at)))
            elif a.shape[1] == 1 and not isinstance(kf, EKFAC):  # K-FAC: rank one
                u, v = kf.solve_rank_one(layer, D[0, :, 0], a[:, 0])
                out.append(LayerTestFactors(U=u[:, None], V=v[:, None]))
            elif a.shape[1] == 1:
                (S,) = kf.solve_rank_one(layer, D[0, :, 0], a[:, 0])
                out.append(LayerTestFactors(S=S))
            else:
                out.append(LayerTestFactors(S=kf.layer_solve(layer, _layer_grads(a, D[0]))))
        left = kf.left_solve(cg.left[0]) if cg.left is not None else None
        return KroneckerTestFactors(out, left)

    def _check(self, factors: KroneckerTestFactors) -> None:
        """Scores of ``CHECK_ROWS`` evenly spaced training rows, low rank against exact
        (Σ_{o,j} δ̃ᵢₒ δ̃ₜₒ W[o, j] ãₜⱼ ãᵢⱼ): the relative error of the returned scores there."""
        obj = self.objective
        rows = torch.linspace(0, obj.n - 1, min(CHECK_ROWS, obj.n), device=obj.device).round().long().unique()
        kf = self.curvature
        cg = chunk_grads(obj, kf.layers, kf.fallback_params, obj.X[rows], obj.y[rows])
        total, error = 0.0, 0.0
        for layer, (a, D), f in zip(kf.layers, cg.layers, factors.layers):
            ours = self._layer_scores(layer, a, D[0], f)
            total = total + ours
            if f.rotated is not None:
                dt, at = f.rotated
                di, ai = D[0, :, 0] @ layer.eig_G[1], a[:, 0] @ layer.eig_A[1]
                W = layer.extra["inverse_diagonal"]
                exact = (((ai[:, None, :] * at[None]) @ W.T) * (di[:, None, :] * dt[None])).sum(2)
                error = error + (ours - exact)
        if cg.left is not None:
            total = total + cg.left[0] @ factors.left.T
        exact_total = total - error
        measured = (error.norm() / exact_total.norm().clamp_min(torch.finfo(exact_total.dtype).tiny)).item()
        worst = self._scoring_info.get("low_rank_measured_error")
        self._scoring_info["low_rank_measured_error"] = measured if worst is None or not measured <= worst else worst
        self._scoring_info["low_rank_check_rows"] = len(rows)
        if measured <= max(self.rank_tolerance, torch.finfo(exact_total.dtype).eps ** 0.5):  # False for NaN; √eps: rounding
            return
        message = (f"KFACInfluence: low-rank EK-FAC scoring has relative error {measured:.2e} on {len(rows)} training "
                   f"rows checked against the exact solve, above rank_tolerance={self.rank_tolerance:g}; use a smaller "
                   "rank_tolerance, or scoring='dense' for the exact route")
        if kf.strict:
            raise InaccurateSolveError(message)
        warnings.warn(message + " (strict=True on the curvature makes this an error)", RuntimeWarning, stacklevel=3)

    def scores(self, X_test, y_test, train_idx: Index = None) -> torch.Tensor:
        """``[m, k]`` = ``removal_effect(order=1)``, scored from layer inputs and output gradients."""
        return self.score_chunk(self.test_factors(X_test, y_test), train_idx)

    def score_chunk(self, factors: KroneckerTestFactors, train_idx: Index) -> torch.Tensor:
        obj = self.objective
        rows = self.rows(train_idx)
        out = torch.empty(factors.m, len(rows), dtype=obj.dtype, device=obj.device)  # memory: the answer, once
        for s, cg in self._chunks(obj.X, obj.y, rows):
            total = sum(self._layer_scores(layer, a, D[0], f) for layer, (a, D), f in
                        zip(self.curvature.layers, cg.layers, factors.layers))
            if cg.left is not None:
                total = total + cg.left[0] @ factors.left.T
            out[:, s] = total.T
        return out.div_(self.n)

    @staticmethod
    def _layer_scores(layer: KroneckerLayer, a: torch.Tensor, D: torch.Tensor, f: LayerTestFactors) -> torch.Tensor:
        """``[B, m]`` dot products of the chunk's layer gradients with the solved test gradients."""
        blocks = []
        if f.S is None:  # Σ_r (δᵢ·U[t, r])(āᵢ·V[t, r]): two GEMMs
            m, R = f.U.shape[:2]
            U, V = f.U.reshape(m * R, -1).T, f.V.reshape(m * R, -1).T
            for s in _row_blocks(len(a), m * R):
                blocks.append((aligned_mm(D[s, 0], U) * aligned_mm(a[s, 0], V)).reshape(-1, m, R).sum(2))
            return torch.cat(blocks)
        S = f.S
        m = len(S)
        if a.shape[1] == 1:  # one GEMM over the longer side of Sₜ, then the other side elementwise
            if layer.d_out >= layer.d_in:
                inner, outer, cols = D[:, 0], a[:, 0], S.permute(1, 0, 2).reshape(layer.d_out, m * layer.d_in)
            else:
                inner, outer, cols = a[:, 0], D[:, 0], S.permute(2, 0, 1).reshape(layer.d_in, m * layer.d_out)
            for s in _row_blocks(len(a), cols.shape[1]):
                blocks.append((aligned_mm(inner[s], cols).reshape(len(inner[s]), m, -1) * outer[s, None, :]).sum(2))
        else:
            for s in _row_blocks(len(a), layer.d_out * layer.d_in):
                blocks.append(_layer_grads(a[s], D[s]).reshape(len(a[s]), -1) @ S.reshape(m, -1).T)
        return torch.cat(blocks)

    # ------------------------------------------------------------------ self-influence
    def self_influence(self, train_idx: Index = None) -> torch.Tensor:
        """I_up,loss(z_i, z_i) = −∇L(z_i)ᵀH⁻¹∇L(z_i) with H the K-FAC/EK-FAC curvature, ``[k]``."""
        obj, kf = self.objective, self.curvature
        rows = self.rows(train_idx)
        out = []
        for _, cg in self._chunks(obj.X, obj.y, rows):
            total = torch.zeros(len(cg.layers[0][0]) if cg.layers else cg.left.shape[1], dtype=obj.dtype, device=obj.device)
            for layer, (a, D) in zip(kf.layers, cg.layers):
                if a.shape[1] == 1:
                    total += kf.rank_one_quadratic(layer, D[0, :, 0], a[:, 0])
                else:
                    for s in _row_blocks(len(a), layer.d_out * layer.d_in):
                        g = _layer_grads(a[s], D[0, s])
                        total[s] += (g * kf.layer_solve(layer, g)).sum((1, 2))
            if cg.left is not None:
                total += (cg.left[0] * kf.left_solve(cg.left[0])).sum(1)
            out.append(-total)
        return torch.cat(out)
