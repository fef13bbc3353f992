r"""EK-FAC: K-FAC's Kronecker eigenbasis with a refitted diagonal (George et al. 2018; Grosse et al. 2023).

With A = Q_A diag(λ_A) Q_Aᵀ and G = Q_G diag(λ_G) Q_Gᵀ, K-FAC's G ⊗ A has eigenvalues λ_G λ_Aᵀ in
the basis Q_G ⊗ Q_A. EK-FAC keeps that basis and replaces the eigenvalues by the exact second
moments of the per-example gradients projected into it:

    Λ[o, j] = (1/n) Σᵢ Σ_k ((Q_Gᵀ ∇_M L_i^k Q_A)[o, j])²,     ∇_M L_i^k = Σ_t δ_t^k ā_tᵀ,

which is the diagonal of the layer's Gauss-Newton block in that basis (so EK-FAC is at least as
close to it as K-FAC in Frobenius norm). The inverse adds λ = weight_decay + damping exactly:
(Q_G ⊗ Q_A) diag(1/(Λ + λ)) (Q_G ⊗ Q_A)ᵀ. Fitting costs a second pass over the data (same
gradients, same sampled targets as the first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from whybox.curvature.base import NotPositiveDefiniteError
from whybox.curvature.kfac import KFAC, KroneckerLayer, aligned_mm, suggest_damping


class EKFAC(KFAC):
    """Eigenvalue-corrected K-FAC. Same arguments as ``KFAC``; ``layers[l].extra["eigen_diagonal"]``
    holds Λ ``[d_out, d_in]`` after ``fit``."""

    def _prepare(self) -> None:
        """Eigendecompose A and G, then refit the diagonal in their Kronecker eigenbasis (second pass)."""
        for layer in self._layers:
            layer.eig_A, layer.eig_G = _eigh(layer.A), _eigh(layer.G)
        acc = [torch.zeros(l.d_out, l.d_in, dtype=torch.float64, device=l.index.device) for l in self._layers]
        for cg in self._passes([]):
            for i, (layer, (a, D)) in enumerate(zip(self._layers, cg.layers)):
                at, Dt = _rotate(a, layer.eig_A[1]), _rotate(D, layer.eig_G[1])  # rows in the eigenbasis
                if a.shape[1] == 1:
                    acc[i] += aligned_mm((Dt[:, :, 0] ** 2).sum(0).T, at[:, 0] ** 2).double()
                else:
                    acc[i] += (torch.einsum("kbto,bti->kboi", Dt, at) ** 2).sum((0, 1)).double()
        lam = self.shift
        info = {}
        for layer, Lam in zip(self._layers, acc):
            Lam = (Lam / self._fitted().n).to(layer.eig_A[0].dtype)
            if not (Lam + lam).min() > 0:
                raise NotPositiveDefiniteError(
                    f"layer {layer.module!r}: the EK-FAC diagonal has zero entries (dead units or unused "
                    f"inputs) and damping + weight decay = {lam:g}; add damping, e.g. "
                    f"{type(self).__name__}(damping={suggest_damping(Lam.mean().item()):.2g})"
                )
            layer.extra = {"eigen_diagonal": Lam, "inverse_diagonal": 1.0 / (Lam + lam)}
            (ea, _), (eg, _) = layer.eig_A, layer.eig_G
            info[layer.module] = {"d_out": layer.d_out, "d_in": layer.d_in, "A_eigenvalues": (ea[0].item(), ea[-1].item()),
                                  "G_eigenvalues": (eg[0].item(), eg[-1].item()),
                                  "eigen_diagonal": (Lam.min().item(), Lam.max().item())}
        self.diagnostics = {"fisher": self.fisher, "shift": lam, "layers": info, "fallback_params": list(self._left)}

    def _rotated(self, layer: KroneckerLayer, M: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        qa, qg = layer.eig_A[1], layer.eig_G[1]
        return qg @ ((qg.T @ M @ qa) * scale) @ qa.T

    def layer_solve(self, layer: KroneckerLayer, M: torch.Tensor) -> torch.Tensor:
        return self._rotated(layer, M, layer.extra["inverse_diagonal"])

    def layer_apply(self, layer: KroneckerLayer, M: torch.Tensor) -> torch.Tensor:
        return self._rotated(layer, M, layer.extra["eigen_diagonal"] + self.shift)

    def solve_rank_one(self, layer: KroneckerLayer, d: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Dense ``(S [m, d_out, d_in],)``: dₜaₜᵀ rotated as two vectors, scaled, rotated back."""
        qa, qg = layer.eig_A[1], layer.eig_G[1]
        W = (d @ qg)[:, :, None] * (a @ qa)[:, None, :] * layer.extra["inverse_diagonal"]
        return (qg @ W @ qa.T,)

    def rank_one_quadratic(self, layer: KroneckerLayer, d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        dt, at = d @ layer.eig_G[1], a @ layer.eig_A[1]
        return ((dt**2 @ layer.extra["inverse_diagonal"]) * at**2).sum(1)


def _rotate(rows: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``rows [..., d] @ Q`` as one 2-D product at BLAS-friendly widths."""
    return aligned_mm(rows.reshape(-1, rows.shape[-1]), Q).reshape(rows.shape)


def _eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of a symmetric factor, computed in float64."""
    evals, evecs = torch.linalg.eigh(M.double())
    return evals.to(M.dtype), evecs.to(M.dtype)


@dataclass
class LowRankInverse:
    """A rank-R approximation ``left @ right`` of a layer's inverse eigen-diagonal W = 1/(Λ + λ).

    ``estimated_error`` = ‖D_G (W − W_R) D_A‖_F / ‖D_G W D_A‖_F with D_G, D_A the factors'
    eigenvalues: the relative RMS error of the layer's scores when training and test rows have the
    factors' second moments (what R is chosen from). ``spectral_error`` = ‖W − W_R‖₂ / ‖W‖₂, the
    constant of the a-priori bound |error(i, t)| ≤ ‖W − W_R‖₂ ‖δ̃ᵢ ⊙ δ̃ₜ‖ ‖ãᵢ ⊙ ãₜ‖.
    """

    left: torch.Tensor  # [d_out, R]
    right: torch.Tensor  # [R, d_in]
    estimated_error: float
    spectral_error: float

    @property
    def rank(self) -> int:
        return self.right.shape[0]


def low_rank_inverse(layer: KroneckerLayer, tolerance: float) -> LowRankInverse:
    """The smallest-rank approximation of the layer's 1/(Λ + λ) whose ``estimated_error`` is at
    most ``tolerance`` (0: full rank), from the SVD of D_G W D_A (computed in float64).

    With W̃ = D_G W D_A = Ũ Σ Ṽᵀ, W_R = D_G⁻¹ Ũ_R Σ_R Ṽ_Rᵀ D_A⁻¹ is written without dividing by
    weights (zero eigenvalues are floored at eps × the largest): left = W D_A Ṽ_R Σ_R⁻¹ = D_G⁻¹ Ũ_R and
    right = Ũ_Rᵀ D_G W = Σ_R Ṽ_Rᵀ D_A⁻¹. When no stable rank below full meets the tolerance,
    returns W's own full SVD (exact)."""
    W = layer.extra["inverse_diagonal"].double()
    weights = []
    for evals in (layer.eig_G[0], layer.eig_A[0]):
        e = evals.double().clamp_min(0)
        weights.append(e.clamp_min(torch.finfo(e.dtype).eps * e.max().clamp_min(torch.finfo(e.dtype).tiny)))
    wg, wa = weights
    U, s, Vh = torch.linalg.svd(wg[:, None] * W * wa[None, :], full_matrices=False)
    tail = (s**2).flip(0).cumsum(0).flip(0).sqrt() / s.norm()  # tail[R] = error of rank R
    tail = torch.cat([tail, tail.new_zeros(1)])
    usable = int((s > s[0] * torch.finfo(s.dtype).eps * max(W.shape)).sum())  # ranks whose Σ_R⁻¹ is stable
    R = next((r for r in range(1, usable + 1) if tail[r] <= tolerance), None)
    if R is None:  # the tolerance needs directions the SVD cannot resolve: the exact W, at full rank
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        left, right, est = U * s, Vh, 0.0
    else:
        left = W @ (wa[:, None] * Vh[:R].T) / s[:R]  # = D_G⁻¹ Ũ_R
        right = (U[:, :R].T * wg) @ W  # = Σ_R Ṽ_Rᵀ D_A⁻¹
        est = tail[R].item()
    spectral = (torch.linalg.matrix_norm(W - left @ right, ord=2) / torch.linalg.matrix_norm(W, ord=2)).item()
    dtype = layer.extra["inverse_diagonal"].dtype
    return LowRankInverse(left.to(dtype), right.to(dtype), est, spectral)
