r"""DataInf (Kwon et al. 2023): a closed-form, layer-wise inverse of the damped empirical Fisher.

Per layer l (the parameters of one module), with g_il = ∇_l L(z_i) and the empirical Fisher
G_l = (1/n) Σ_i g_il g_ilᵀ, DataInf swaps the inverse and the mean:

    (G_l + λ_l I)⁻¹  ≈  (1/n) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹  =  (1/(n λ_l)) Σ_i (I − g_il g_ilᵀ / (λ_l + ‖g_il‖²))

(Sherman-Morrison), so a solve costs one pass over the training gradients and no matrix is formed.
λ_l = ``scale`` · (1/(n d_l)) Σ_i ‖g_il‖² (the paper's rule, scale 0.1), plus the layer's mean
weight decay and ``damping``. It is an **approximation** of a block-diagonal damped Fisher, not a
solve of (H + damping·I)x = v: the swap is exact only when the per-example rank-one terms commute
(n = 1, or orthogonal gradients), and the error grows with ‖g_il‖²/λ_l. So it makes no residual
claim (``diagnostics["relative_residual"]`` is None, ``residual_note`` says why), like ``Identity``.
"""

from __future__ import annotations

import torch

from whybox.curvature.base import Curvature
from whybox.objective import Objective


class DataInf(Curvature):
    """Layer-wise DataInf inverse (see the module docstring).

    Args:
        damping: added to every layer's λ_l.
        scale: λ_l = scale · mean squared layer gradient (Kwon et al.'s 0.1), before damping and decay.

    Layers are the modules owning the explained parameters (``"fc.weight"`` and ``"fc.bias"`` form
    layer ``"fc"``). Uses per-example loss gradients (cached by the objective when they fit).
    """

    default_tolerance = None

    def __init__(self, damping: float = 0.0, scale: float = 0.1) -> None:
        super().__init__(damping=damping)
        if not (scale > 0 and scale < float("inf")):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.scale = float(scale)

    def fit(self, objective: Objective) -> DataInf:
        super().fit(objective)
        names = [n.rsplit(".", 1)[0] if "." in n else "" for n in objective.param_names]
        owners = list(dict.fromkeys(names))
        offsets, start = [], 0
        for size in objective.sizes:
            offsets.append((start, start + size))
            start += size
        self._blocks = [torch.cat([torch.arange(*offsets[j]) for j, n in enumerate(names) if n == owner]).to(objective.device)
                        for owner in owners]
        sq = torch.zeros(objective.n, len(self._blocks), dtype=objective.dtype, device=objective.device)
        for s in objective.chunks(objective.n):
            G = objective.train_grads(s)
            sq[s] = torch.stack([G[:, idx].square().sum(1) for idx in self._blocks], dim=1)
        self._sq = sq  # ‖g_il‖², [n, layers]
        self.lambdas = torch.stack([
            self.scale * sq[:, b].mean() / len(idx) + objective.decay[idx].mean() + self.damping
            for b, idx in enumerate(self._blocks)
        ])
        self.diagnostics.update(
            method="DataInf (layer-wise, inverse and mean swapped)", layers=owners,
            lambdas=[float(v) for v in self.lambdas], relative_residual=None, residual_tolerance=None,
            residual_note="DataInf approximates each layer's damped empirical Fisher inverse in closed form; "
            "it does not solve (H + damping·I)x = v, so no residual is claimed",
        )
        return self

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        obj = self._fitted()
        X = B.clone()
        for b, idx in enumerate(self._blocks):
            lam, V = self.lambdas[b], B[:, idx]
            correction = torch.zeros_like(V)
            for s in obj.chunks(obj.n):
                G = obj.train_grads(s)[:, idx]  # [c, d_l]
                correction += ((V @ G.T) / (lam + self._sq[s, b])) @ G
            X[:, idx] = (V - correction / obj.n) / lam
        return X

    def _prove(self, B: torch.Tensor, X: torch.Tensor) -> None:
        """Nothing to prove: see the module docstring."""

    def dense(self) -> torch.Tensor:
        """The inverse of DataInf's block-diagonal approximation is not formed: refuse."""
        raise ValueError("DataInf has no dense matrix to offer (second-order removal needs Exact or CG)")
