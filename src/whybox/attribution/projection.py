r"""Influence in a randomly projected gradient space (LoGra: Choe et al. 2024, as in LogIX and dattri).

Every training gradient gᵢ is replaced by g̃ᵢ = P gᵢ with a fixed random P ``[k, p]``, k ≪ p, and
influence is computed exactly in that k-dimensional space:

    score[t, i] = g̃ₜᵀ G̃⁻¹ g̃ᵢ / n,        G̃ = P (F + D + λI) Pᵀ,        F = (1/n) Σᵢ Σ_k gᵢᵏ gᵢᵏᵀ,

D the per-coordinate weight decay, λ the damping, and gᵢᵏ the curvature's gradients (``fisher``).
With P = I (every dimension ``None`` or at least the layer's size) this is
``InfluenceFunction`` with the curvature F + D + λI, to rounding; with any square invertible P too.

**The projection.** P is block diagonal over the explained parameters:

* a factored layer (``whybox.curvature.kfac.find_layers``: Linear, Conv2d) with layer matrix
  M = [W | b] ``[d_out, d_in]`` gets P_out ⊗ P_in, Gaussian ``[k_out, d_out]`` and
  ``[k_in, d_in]`` with entries N(0, 1/k). Its per-example gradient Σ_t δ_t ā_tᵀ projects to
  P_out (Σ_t δ_t ā_tᵀ) P_inᵀ = Σ_t (P_out δ_t)(P_in ā_t)ᵀ, ``[k_out, k_in]``, computed from the
  layer inputs ā and output gradients δ that one forward and backward pass captures, without
  the d_out·d_in per-example gradient;
* the other explained parameters (LayerNorm, embeddings, ...) get one dense Gaussian
  ``[k_left, p_left]``, generated block by block from the seed so its memory stays bounded;
  their per-example gradients come from per-example Jacobians (slower; ``fit`` warns).

**The curvature (``fisher``).**

* ``"empirical"`` (default): F = (1/n) Σ gᵢ gᵢᵀ of the observed labels' gradients, the empirical
  Fisher. It is what LoGra/LogIX use, and it is free: the projected training gradients that the
  scores need anyway give it (one pass over the data). It is positive semi-definite but not a
  curvature of the loss (it is the Gauss-Newton matrix only where the model's predictions match
  the labels' distribution); with poorly fitted points it overweights their directions.
* ``"ggn"``: the generalised Gauss-Newton (1/n) Σ Jᵢᵀ Λᵢ Jᵢ, from the columns of a root of each
  output Hessian Λᵢ (``kfac.output_cotangents``): a second pass with C backward passes per chunk.
  The curvature ``whybox.KFAC(fisher="ggn")`` approximates, here projected but not factored.
* ``"sampled"``: the true Fisher with one target per example drawn from the model (equals the GGN
  in expectation for cross-entropy, logistic and squared error); a second pass, one backward.

G̃ is ``[k, k]`` (k a few thousand at most, ``max_dim``), formed densely in float64 and
Cholesky-factorised; every solve's relative residual is measured against it and recorded in
``diagnostics`` like every whybox solver (warn, or raise with ``strict=True``). The damping is
projected like the weight decay (λ P Pᵀ, not λI in the projected space), so the scores do not
depend on the scale of P.

**Where the cost goes.** ``fit`` is one forward+backward pass (two with ``"ggn"``/``"sampled"``)
plus the n·k² accumulation of G̃; each query is then a GEMM of the ``[n, k]`` projected training
gradients with the m solved test vectors. Those gradients are kept in memory when they fit in
``objective.cache_bytes``, and written to a zarr array with ``store=PATH`` (resumable, and reused
by every later process and by ``whybox.score_to_store``); otherwise each query recomputes them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from whybox.attribution.base import Attributor, Index
from whybox.curvature.base import Curvature, NotPositiveDefiniteError
from whybox.curvature.kfac import (
    FISHER,
    LIKELIHOOD_LOSSES,
    ChunkGrads,
    KroneckerLayer,
    chunk_grads,
    find_layers,
    left_index,
    rows_per_chunk,
)
from whybox.objective import Objective
from whybox.utils import digest

_BLOCK_BYTES = 32 * 2**20  # one block of the dense projection's columns
_KEEP_BYTES = 64 * 2**20  # keep the whole dense projection in memory up to this size


# ---------------------------------------------------------------------------- the projections
def _gaussian(rows: int, cols: int, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A seeded ``[rows, cols]`` matrix with N(0, 1/rows) entries (drawn in float64 on the CPU, so
    the same seed gives the same matrix on every device)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=gen, dtype=torch.float64) / math.sqrt(rows)).to(dtype=dtype, device=device)


class DenseProjection:
    """A seeded Gaussian ``[k, p]`` projection, generated in column blocks of at most 32 MiB from
    ``(seed, block)``; kept whole when it fits in 64 MiB, else regenerated on each use.
    ``k=None`` or ``k >= p``: the identity (no projection)."""

    def __init__(self, p: int, k: int | None, seed: int, dtype: torch.dtype, device: torch.device) -> None:
        self.p, self.seed, self.dtype, self.device = p, seed, dtype, device
        self.identity = k is None or k >= p
        self.k = p if self.identity else int(k)
        size = torch.finfo(dtype).bits // 8
        self.block = max(1, _BLOCK_BYTES // (self.k * 8))
        self._kept = None
        if not self.identity and self.k * p * size <= _KEEP_BYTES:
            self._kept = torch.cat([b for _, b in self._blocks()], 1)

    def _blocks(self):
        for j, start in enumerate(range(0, self.p, self.block)):
            stop = min(start + self.block, self.p)
            # N(0, 1/k): each block is its own seeded draw, scaled like one k-row Gaussian
            yield slice(start, stop), _gaussian(self.k, stop - start, self.seed * 1_000_003 + j, self.dtype, self.device)

    def matrix(self) -> torch.Tensor:
        """The whole ``[k, p]`` matrix (small p only)."""
        if self.identity:
            return torch.eye(self.p, dtype=self.dtype, device=self.device)
        return self._kept if self._kept is not None else torch.cat([b for _, b in self._blocks()], 1)

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        """P applied to rows ``V [..., p]`` -> ``[..., k]``."""
        if self.identity:
            return V
        if self._kept is not None:
            return V @ self._kept.T
        out = V.new_zeros(*V.shape[:-1], self.k)
        for cols, P in self._blocks():
            out += V[..., cols] @ P.T
        return out

    def gram(self, d: torch.Tensor) -> torch.Tensor:
        """P diag(d) Pᵀ ``[k, k]`` in float64."""
        if self.identity:
            return torch.diag(d.double())
        if self._kept is not None:
            P = self._kept.double()
            return (P * d.double()) @ P.T
        out = torch.zeros(self.k, self.k, dtype=torch.float64, device=self.device)
        for cols, P in self._blocks():
            P = P.double()
            out += (P * d[cols].double()) @ P.T
        return out


@dataclass
class ProjectedLayer:
    """A factored layer and its Kronecker projection P_out ⊗ P_in (``None`` = identity on that side).
    Its projected gradient is the ``[k_out, k_in]`` matrix P_out (∇_M L) P_inᵀ, flattened row-major
    into positions ``offset : offset + k_out·k_in`` of the projected vector."""

    layer: KroneckerLayer
    P_out: torch.Tensor | None  # [k_out, d_out]
    P_in: torch.Tensor | None  # [k_in, d_in]
    offset: int

    @property
    def k_out(self) -> int:
        return self.layer.d_out if self.P_out is None else len(self.P_out)

    @property
    def k_in(self) -> int:
        return self.layer.d_in if self.P_in is None else len(self.P_in)

    @property
    def k(self) -> int:
        return self.k_out * self.k_in

    def project_rows(self, a: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        """Projected per-example gradients ``[K, B, k]`` from inputs ``a [B, T, d_in]`` and output
        gradients ``D [K, B, T, d_out]``: Σ_t (P_out δ_t)(P_in ā_t)ᵀ."""
        a = a if self.P_in is None else a @ self.P_in.T
        D = D if self.P_out is None else D @ self.P_out.T
        if a.shape[1] == 1:
            out = D[:, :, 0, :, None] * a[None, :, 0, None, :]
        else:
            out = torch.einsum("kbto,bti->kboi", D, a)
        return out.reshape(len(D), D.shape[1], -1)

    def project_matrices(self, M: torch.Tensor) -> torch.Tensor:
        """P_out M P_inᵀ for layer matrices ``M [B, d_out, d_in]`` -> ``[B, k]``."""
        if self.P_out is not None:
            M = self.P_out @ M
        if self.P_in is not None:
            M = M @ self.P_in.T
        return M.reshape(len(M), -1)

    def gram(self, decay: torch.Tensor) -> torch.Tensor:
        """(P_out ⊗ P_in) diag(decay) (P_out ⊗ P_in)ᵀ in float64, for a decay ``[d_out, d_in]`` that is
        constant down each column (weight columns and the bias column): (P_out P_outᵀ) ⊗ (P_in diag(c) P_inᵀ)."""
        c = decay[0].double()
        if not torch.equal(decay, decay[:1].expand_as(decay)):
            raise RuntimeError(f"layer {self.layer.module!r}: weight decay varies along a column")  # pragma: no cover
        left = torch.eye(self.k_out, dtype=torch.float64, device=c.device) if self.P_out is None else (
            self.P_out.double() @ self.P_out.double().T)
        right = torch.diag(c) if self.P_in is None else (self.P_in.double() * c) @ self.P_in.double().T
        return torch.kron(left, right)


# ---------------------------------------------------------------------------- the projected curvature
class ProjectedCurvature(Curvature):
    """The dense projected curvature G̃ ``[k, k]``, Cholesky-factorised in float64. ``solve`` takes
    projected vectors ``[m, k]`` and checks every answer's relative residual ‖G̃x − v‖/‖v‖ against G̃
    (``diagnostics``; warn, or ``strict=True``: raise), as every whybox solver does."""

    def __init__(self, residual_tolerance: float | None = None, strict: bool = False) -> None:
        super().__init__(0.0, residual_tolerance, strict)

    def factorise(self, objective: Objective, matrix: torch.Tensor, shift: float) -> ProjectedCurvature:
        """Take G̃ (float64, damping and decay included) and Cholesky-factorise it."""
        super().fit(objective)
        self.matrix = 0.5 * (matrix + matrix.T)
        chol, info = torch.linalg.cholesky_ex(self.matrix)
        pivots = torch.diagonal(chol) ** 2 if info.item() == 0 else None
        scale = self.matrix.diagonal().max().clamp_min(torch.finfo(torch.float64).tiny)
        if pivots is None or not pivots.min() > 1e3 * torch.finfo(torch.float64).eps * scale:
            low = torch.linalg.eigvalsh(self.matrix)[0].item()
            mean = self.matrix.diagonal().mean().item()
            raise NotPositiveDefiniteError(
                f"the projected curvature is singular (smallest eigenvalue {low:.3g}; weight decay + damping = "
                f"{shift:g}, and fewer training points than projected dimensions, or dead units); add damping, "
                f"e.g. ProjectedInfluence(damping={1e-3 * max(mean, 1e-12):.2g}), or lower dim_in/dim_out/dim_left"
            )
        self._chol = chol
        self.diagnostics.update(dim=len(matrix), pivot_ratio=(pivots.max() / pivots.min()).item())
        return self

    @property
    def k(self) -> int:
        return len(self.matrix)

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        return V.reshape(-1, self.k).double() @ self.matrix

    def dense(self) -> torch.Tensor:
        return self.matrix

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """G̃⁻¹V for projected vectors ``V [m, k]`` (float64), residual checked."""
        B = V.reshape(-1, self.k).double()
        if len(B) == 0:
            return B.clone()
        X = torch.cholesky_solve(B.T, self._chol).T
        self._prove(B, X)
        return X

    def _accuracy_fix(self) -> str:
        return "add damping (ProjectedInfluence(damping=...)) or lower the projection dimensions (dim_in, dim_out, dim_left)"


# ---------------------------------------------------------------------------- the attributor
class ProjectedInfluence(Attributor):
    """Influence in a Kronecker-factored random projection of the gradients (LoGra); see the module text.

    Args:
        objective: the trained model, loss, weight decay and training data.
        dim_in, dim_out: the projected size of each factored layer's inputs (ā, bias included) and
            outputs (δ); the layer's projected gradient has dim_out·dim_in entries. ``None``, or a
            size at least the layer's, leaves that side unprojected.
        dim_left: the projected size of the parameters outside factorable layers (``None`` = all).
        layer_dims: per-layer ``{module name: (dim_in, dim_out)}`` overriding the two above.
        fisher: the curvature, ``"empirical"`` (default, free), ``"ggn"`` or ``"sampled"`` (see the module text).
        damping: λ, added to the weight decay before projecting.
        seed: of the projections and of the sampled targets.
        store: a zarr directory for the ``[n, k]`` projected training gradients (and the curvature):
            written once, resumed after a stop, reused by later fits on the same problem.
        max_dim: refuse a total projected dimension above this (G̃ is dense, k²·8 bytes).
        residual_tolerance, strict: of the solves in the projected space (see ``whybox.Curvature``).

    ``scores``, ``test_factors`` (the solved projected test gradients ``[m, k]``), ``score_chunk``
    (projected training gradients @ factors) and ``self_scores`` follow ``InfluenceFunction``: positive
    = supports, loss units, ``self_scores`` = g̃ᵢᵀG̃⁻¹g̃ᵢ.
    """

    units = "loss"

    def __init__(
        self,
        objective: Objective,
        dim_in: int | None = 32,
        dim_out: int | None = 32,
        dim_left: int | None = 1024,
        layer_dims: dict[str, tuple[int | None, int | None]] | None = None,
        fisher: str = "empirical",
        damping: float = 0.0,
        seed: int = 0,
        store: str | Path | None = None,
        max_dim: int = 8192,
        residual_tolerance: float | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(objective)
        for name, value in (("dim_in", dim_in), ("dim_out", dim_out), ("dim_left", dim_left), ("max_dim", max_dim)):
            _check_dim(name, value)
        for module, dims in (layer_dims or {}).items():
            if not (isinstance(dims, (tuple, list)) and len(dims) == 2):
                raise ValueError(f"layer_dims[{module!r}] must be a pair (dim_in, dim_out), got {dims!r}")
            _check_dim(f"layer_dims[{module!r}][0]", dims[0])
            _check_dim(f"layer_dims[{module!r}][1]", dims[1])
        if fisher not in FISHER:
            raise ValueError(f"fisher must be one of {FISHER}, got {fisher!r}")
        if fisher == "sampled" and objective.loss_name not in LIKELIHOOD_LOSSES:
            raise ValueError(
                f"fisher='sampled' draws targets from the model's likelihood, and loss {objective.loss_name!r} has "
                f"none (sampling is defined for {', '.join(LIKELIHOOD_LOSSES)}); use fisher='ggn' or 'empirical'"
            )
        if not (damping >= 0 and damping < float("inf")):
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        self.dim_in, self.dim_out, self.dim_left = dim_in, dim_out, dim_left
        self.layer_dims = {k: tuple(v) for k, v in (layer_dims or {}).items()}
        self.fisher, self.damping, self.seed = fisher, float(damping), int(seed)
        self.store = None if store is None else str(store)
        self.max_dim = max_dim
        self.curvature = ProjectedCurvature(residual_tolerance, strict)
        self._fitted = False

    # ------------------------------------------------------------------ description
    def settings(self) -> dict[str, Any]:
        return {"method": self.name, "dim_in": self.dim_in, "dim_out": self.dim_out, "dim_left": self.dim_left,
                "layer_dims": self.layer_dims, "fisher": self.fisher, "damping": self.damping, "seed": self.seed}

    @property
    def diagnostics(self) -> dict[str, Any]:
        return dict(self.curvature.diagnostics, **getattr(self, "_info", {}))

    @property
    def dim(self) -> int:
        """k, the total projected dimension."""
        self._check_fitted()
        return self._k

    @property
    def projections(self) -> list[ProjectedLayer]:
        """The factored layers with their Kronecker projections."""
        self._check_fitted()
        return self._layers

    @property
    def left_projection(self) -> DenseProjection | None:
        """The dense projection of the parameters outside factorable layers (None when there are none)."""
        self._check_fitted()
        return self._left_proj

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("call .fit() before computing projected influence")

    # ------------------------------------------------------------------ fitting
    def fit(self) -> ProjectedInfluence:
        """Draw the projections, project every training gradient once, form and factorise G̃."""
        obj = self.objective
        layers, left = find_layers(obj)
        known = {l.module for l in layers}
        unknown = sorted(set(self.layer_dims) - known)
        if unknown:
            raise ValueError(f"layer_dims names {unknown}, which are not factored layers; factored layers: {sorted(known)}")
        if left:
            warnings.warn(
                f"ProjectedInfluence factors only Linear and Conv2d layers; parameters {left} get a dense Gaussian "
                "projection of their per-example gradients (per-example Jacobians: slower); to leave them out, "
                "explain the factored layers only: Objective(model, ..., params=whybox.factorable_params(model))",
                RuntimeWarning, stacklevel=2,
            )
        self._left_names, self._left_idx = left, left_index(obj, left)
        offset, self._layers = 0, []
        for i, layer in enumerate(layers):
            d_in, d_out = self.layer_dims.get(layer.module, (self.dim_in, self.dim_out))
            P_out = None if d_out is None or d_out >= layer.d_out else _gaussian(d_out, layer.d_out, self.seed * 7919 + 2 * i, obj.dtype, obj.device)
            P_in = None if d_in is None or d_in >= layer.d_in else _gaussian(d_in, layer.d_in, self.seed * 7919 + 2 * i + 1, obj.dtype, obj.device)
            self._layers.append(ProjectedLayer(layer, P_out, P_in, offset))
            offset += self._layers[-1].k
        self._left_proj = DenseProjection(len(self._left_idx), self.dim_left, self.seed + 104_729, obj.dtype, obj.device) if left else None
        self._k = offset + (self._left_proj.k if left else 0)
        if self._k > self.max_dim:
            sizes = ", ".join(f"{p.layer.module}: {p.k_out}x{p.k_in}" for p in self._layers)
            raise ValueError(
                f"the projected dimension would be {self._k} ({sizes}{'' if not left else f', other parameters: {self._left_proj.k}'}), "
                f"above max_dim={self.max_dim} (the projected curvature is dense, k² floats); lower dim_in/dim_out/dim_left "
                "or raise max_dim"
            )
        K = max(1, math.prod(obj.output_shape)) if self.fisher == "ggn" else 1
        self._rows = rows_per_chunk(obj, layers, K, len(self._left_idx))
        self._fitted = True  # projections ready: project() works from here on
        self._cache: torch.Tensor | None = None
        self._zarr = None
        F = self._fit_store() if self.store is not None else self._fit_memory()
        decay = obj.decay + self.damping
        gram = torch.zeros(self._k, self._k, dtype=torch.float64, device=obj.device)
        for pl in self._layers:
            s = slice(pl.offset, pl.offset + pl.k)
            gram[s, s] = pl.gram(decay[pl.layer.index].reshape(pl.layer.d_out, pl.layer.d_in))
        if left:
            gram[offset:, offset:] = self._left_proj.gram(decay[self._left_idx])
        shift = obj.weight_decay if isinstance(obj.weight_decay, (int, float)) else "per-parameter"
        self.curvature.factorise(obj, F + gram, self.damping if shift == "per-parameter" else shift + self.damping)
        self._info = {
            "method": f"projected influence (LoGra), fisher={self.fisher}", "fisher": self.fisher, "projected_dim": self._k,
            "layers": {p.layer.module: {"d_out": p.layer.d_out, "d_in": p.layer.d_in, "k_out": p.k_out, "k_in": p.k_in}
                       for p in self._layers},
            "fallback_params": list(left), "projected_grads": "memory" if self._cache is not None else (
                "store" if self._zarr is not None else "recomputed per query"),
        }
        return self

    def _passes(self, X: torch.Tensor, y: torch.Tensor, fisher: str = "empirical", generator=None):
        for s in self.objective.chunks(len(X), self._rows):
            yield s, chunk_grads(self.objective, [p.layer for p in self._layers], self._left_names, X[s], y[s],
                                 fisher, generator)

    def _project(self, cg: ChunkGrads) -> torch.Tensor:
        """Projected per-example gradients ``[K, B, k]`` of one captured chunk."""
        parts = [pl.project_rows(a, D) for pl, (a, D) in zip(self._layers, cg.layers)]
        if cg.left is not None:
            parts.append(self._left_proj.apply(cg.left))
        return torch.cat(parts, 2)

    def _fisher_sum(self) -> torch.Tensor:
        """Σᵢ Σ_k g̃ᵢᵏ g̃ᵢᵏᵀ over the training data for ``fisher`` 'ggn'/'sampled' (a second pass)."""
        obj = self.objective
        gen = torch.Generator(device=obj.device).manual_seed(self.seed)
        F = torch.zeros(self._k, self._k, dtype=torch.float64, device=obj.device)
        for _, cg in self._passes(obj.X, obj.y, self.fisher, gen):
            G = self._project(cg)
            G = G.reshape(-1, self._k)
            F += (G.T @ G).double()
        return F

    def _fit_memory(self) -> torch.Tensor:
        obj = self.objective
        keep = obj.n * self._k * obj.theta.element_size() <= obj.cache_bytes
        F = torch.zeros(self._k, self._k, dtype=torch.float64, device=obj.device)
        cache = torch.empty(obj.n, self._k, dtype=obj.dtype, device=obj.device) if keep else None
        for s, cg in self._passes(obj.X, obj.y):
            G = self._project(cg)[0]
            if self.fisher == "empirical":
                F += (G.T @ G).double()
            if keep:
                cache[s] = G
        self._cache = cache
        if self.fisher != "empirical":
            F = self._fisher_sum()
        return F / obj.n

    def _fingerprint(self) -> str:
        """Identifies the projected gradients: model, data, loss and projection (not damping or fisher)."""
        obj = self.objective
        return digest(obj.theta, obj.X, obj.y, (obj.loss_name, obj.param_names, self.dim_in, self.dim_out, self.dim_left,
                                                 sorted(self.layer_dims.items()), self.seed, self._k, str(obj.dtype)))

    def _fit_store(self) -> torch.Tensor:
        """Projected training gradients into ``store``, chunk by chunk (write, then mark done), and
        the curvature sum next to them; a rerun computes only what is missing."""
        import numpy as np
        import zarr  # imported here: zarr costs ~0.5 s, which `import whybox` should not pay

        obj = self.objective
        key = self._fingerprint()
        root = zarr.open_group(self.store, mode="a")
        if "projected_grads" in root:
            if root.attrs.get("fingerprint") != key:
                raise ValueError(
                    f"{self.store} holds projected gradients of a different problem (data, model or projection "
                    "changed); choose a new store path or delete it to start over"
                )
            grads, done = root["projected_grads"], root["done"]
        else:
            dtype = "f8" if obj.dtype == torch.float64 else "f4"
            grads = root.create_array("projected_grads", shape=(obj.n, self._k), chunks=(self._rows, self._k),
                                      dtype=dtype, fill_value=np.nan)
            done = root.create_array("done", shape=(-(-obj.n // self._rows),), dtype=bool, fill_value=False)
            root.attrs.update(fingerprint=key, n=obj.n, k=self._k, rows_per_chunk=self._rows,
                              settings={k: v for k, v in self.settings().items() if k != "layer_dims"})
        rows = grads.chunks[0]
        name = f"curvature_{self.fisher}"
        stored_F = name in root and root.attrs.get(name + "_done", False)
        todo = ~done[:]
        F = torch.zeros(self._k, self._k, dtype=torch.float64, device=obj.device)
        for c, s in enumerate(obj.chunks(obj.n, rows)):
            if todo[c]:
                G = torch.cat([self._project(cg)[0] for _, cg in self._passes(obj.X[s], obj.y[s])])
                grads[s] = G.detach().cpu().numpy()
                done[c] = True  # write, then mark: never a done flag without data
            elif self.fisher == "empirical" and not stored_F:
                G = torch.from_numpy(grads[s]).to(obj.device)
            else:
                continue
            if self.fisher == "empirical" and not stored_F:
                F += (G.T @ G).double()
        if stored_F:
            F = torch.from_numpy(root[name][:]).to(obj.device)
        else:
            if self.fisher != "empirical":
                F = self._fisher_sum()
            root.create_array(name, shape=F.shape, dtype="f8", overwrite=True)[:] = F.cpu().numpy()
            root.attrs[name + "_done"] = True
        if obj.n * self._k * obj.theta.element_size() <= obj.cache_bytes:
            self._cache = torch.from_numpy(grads[:]).to(obj.device)
        else:
            self._zarr = grads
        return F / obj.n

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state.get("_zarr") is not None:  # reopened by path in a worker process
            state["_zarr"] = "reopen"
        return state

    # ------------------------------------------------------------------ projected gradients
    def project(self, X, y) -> torch.Tensor:
        """Projected per-example gradients of the loss at ``(X, y)``, ``[N, k]`` (observed labels)."""
        self._check_fitted()
        X, y = self.objective.check_data(X, y, "projected")
        return torch.cat([self._project(cg)[0] for _, cg in self._passes(X, y)])

    def project_flat(self, V: torch.Tensor) -> torch.Tensor:
        """The projection P applied to flat parameter vectors ``V [B, p]`` (e.g. explicit per-example
        gradients from ``objective.grads``), ``[B, k]``: the slow way, for checking."""
        self._check_fitted()
        V = V.reshape(-1, self.objective.p)
        parts = [pl.project_matrices(pl.layer.take(V)) for pl in self._layers]
        if self._left_proj is not None:
            parts.append(self._left_proj.apply(V[:, self._left_idx]))
        return torch.cat(parts, 1)

    def projected_grads(self, train_idx: Index = None) -> torch.Tensor:
        """Projected training gradients of the rows ``train_idx``, ``[k_rows, k]``: from memory, from
        the store, or recomputed (when n·k does not fit in ``objective.cache_bytes`` and no store)."""
        self._check_fitted()
        rows = self.rows(train_idx)
        span = _as_slice(rows)
        if self._cache is not None:
            return self._cache[span] if span is not None else self._cache[rows]
        if self._zarr is not None:
            if isinstance(self._zarr, str):
                import zarr

                self._zarr = zarr.open_group(self.store, mode="r")["projected_grads"]
            if span is not None:
                block = self._zarr[span]
            else:
                block = self._zarr.get_orthogonal_selection((rows.cpu().numpy(), slice(None)))
            return torch.from_numpy(block).to(self.objective.device)
        obj, sel = self.objective, rows if span is None else span
        return torch.cat([self._project(cg)[0] for _, cg in self._passes(obj.X[sel], obj.y[sel])])

    # ------------------------------------------------------------------ the Attributor interface
    def test_factors(self, X_test, y_test) -> torch.Tensor:
        """G̃⁻¹g̃ₜ for each test point, ``[m, k]`` (the projected s_test)."""
        G = self.project(X_test, y_test)
        return self.curvature.solve(G).to(self.objective.dtype)

    def score_chunk(self, factors: torch.Tensor, train_idx: Index) -> torch.Tensor:
        rows = self.rows(train_idx)
        obj = self.objective
        step = max(self._rows, 4096)
        return torch.cat([factors @ self.projected_grads(rows[s]).T for s in obj.chunks(len(rows), step)], 1) / self.n

    def scores(self, X_test, y_test, train_idx: Index = None) -> torch.Tensor:
        """``[m, k]`` projected order-1 removal effects: g̃ₜᵀG̃⁻¹g̃ᵢ/n; positive = the point supports the prediction."""
        return self.score_chunk(self.test_factors(X_test, y_test), train_idx)

    def self_scores(self, train_idx: Index = None) -> torch.Tensor:
        """``[k]`` g̃ᵢᵀG̃⁻¹g̃ᵢ ≥ 0 (as ``InfluenceFunction.self_scores``); high = check this label first."""
        self._check_fitted()
        rows = self.rows(train_idx)
        out = []
        for s in self.objective.chunks(len(rows), max(self._rows, 4096)):
            G = self.projected_grads(rows[s])
            out.append((G.double() * self.curvature.solve(G)).sum(1).to(self.objective.dtype))
        return torch.cat(out)


def _as_slice(rows: torch.Tensor) -> slice | None:
    """``rows`` as a slice when they are one increasing run (views instead of copies), else None."""
    if len(rows) == 0:
        return None
    start, stop = int(rows[0]), int(rows[-1]) + 1
    if stop - start != len(rows) or (len(rows) > 1 and not bool((rows[1:] - rows[:-1] == 1).all())):
        return None
    return slice(start, stop)


def _check_dim(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None (no projection), got {value!r}")
