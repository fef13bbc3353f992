"""Second-order removal effects: one Newton step on the objective without a group of training
points, from θ̂, with the Hessian minus the group's own terms; the test loss is then evaluated
exactly at the moved parameters.

    Δθ_U = (H − (1/n) Σ_{i∈U} ∇²L(z_i))⁻¹ (1/n) Σ_{i∈U} ∇L(z_i)

(with a Gauss-Newton curvature, ``curvature="ggn"``, G and the examples' JᵢᵀAᵢJᵢ take the place of
H and ∇²L(zᵢ)).

Models whose output is linear in θ (linear/logistic regression, a trainable last layer) use a
rank-C Woodbury update through the fitted solver; other models start from the curvature's dense
form (small p only).

On a non-convex model the Hessian without a point can be indefinite even when H is positive
definite; the Newton step is then not a step towards a minimum (it can predict a change of many
nats for an actual one of 0.01). Such groups are detected (their Cholesky factorisation fails),
warned about by index, and fall back to the step with the full curvature H⁻¹g — the order-1
parameter step, with the test loss still evaluated exactly. ``newton_steps`` returns which fell back.
"""

from __future__ import annotations

import warnings

import torch
from torch.func import vmap

from whybox.curvature import Curvature
from whybox.objective import Objective


def removal_effects(objective: Objective, curvature: Curvature, X: torch.Tensor, y: torch.Tensor,
                    groups: list[torch.Tensor]) -> torch.Tensor:
    """Exact test-loss change after one Newton step without each group, ``[m, len(groups)]``."""
    chunk = max(1, objective.batch_size // 8)
    parts = [newton_steps(objective, curvature, groups[i : i + chunk]) for i in range(0, len(groups), chunk)]
    steps = torch.cat([step for step, _ in parts])
    fell_back = [i + start for start, (_, bad) in zip(range(0, len(groups), chunk), parts) for i in bad]
    if fell_back:
        shown = [groups[i].tolist() if len(groups[i]) > 1 else int(groups[i]) for i in fell_back[:10]]
        warnings.warn(
            f"order 2: the Hessian without {len(fell_back)} of {len(groups)} point(s)/group(s) is not positive "
            f"definite (first: {shown}); their Newton step is no minimiser's step, so they fell back to the "
            "full-curvature step H⁻¹g (order 1 in θ, test loss exact). Add damping to keep order 2 for them.",
            RuntimeWarning, stacklevel=3,
        )
    base = objective.losses(X, y)
    moved = vmap(lambda th: objective._batch_losses(th, X, y))(objective.theta + steps)
    return (moved - base).T.detach()


def newton_steps(objective: Objective, curvature: Curvature, groups: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, list[int]]:
    """(Δθ_U for each group U of training rows ``[len(groups), p]``, positions of the groups whose
    Hessian without them is indefinite and that fell back to H⁻¹g)."""
    obj, n = objective, objective.n
    G = torch.stack([obj.train_grads(g).sum(0) for g in groups]) / n
    if obj.is_linear_in_params():  # H − (1/n)Σ∇²L_i keeps the PSD terms of the others + w·I: positive definite
        return _woodbury_steps(obj, curvature, groups, G), []
    H = curvature.dense()
    steps, fell_back = [], []
    for k, (g, gvec) in enumerate(zip(groups, G)):
        chol, info = torch.linalg.cholesky_ex(H - _group_curvature(obj, g, curvature.curvature) / n)
        if info.item() != 0:
            fell_back.append(k)
            steps.append(torch.linalg.solve(H, gvec))
        else:
            steps.append(torch.cholesky_solve(gvec[:, None], chol)[:, 0])
    return torch.stack(steps), fell_back


def _group_curvature(obj: Objective, rows: torch.Tensor, curvature: str) -> torch.Tensor:
    """Σ_{i∈U} of the examples' own curvature terms: ∇²L(zᵢ), or JᵢᵀAᵢJᵢ with ``curvature="ggn"``."""
    if curvature == "ggn":
        U = obj.gauss_newton_factors(rows)  # [k, p, C]
        return torch.einsum("kpc,kqc->pq", U, U)
    return obj.example_hessians(rows.tolist()).sum(0)


def _woodbury_steps(obj: Objective, curvature: Curvature, groups: list[torch.Tensor], G: torch.Tensor) -> torch.Tensor:
    """(H − U Uᵀ)⁻¹g = H⁻¹g + H⁻¹U (I − UᵀH⁻¹U)⁻¹ UᵀH⁻¹g, with ∇²L_i/n = U_i U_iᵀ of rank ≤ C."""
    U = obj.gauss_newton_factors(torch.cat(groups)) / obj.n**0.5  # [K, p, C]
    K, p, C = U.shape
    HiU = curvature.solve(U.transpose(1, 2).reshape(K * C, p)).reshape(K, C, p)
    HiG = curvature.solve(G)
    steps, start = [], 0
    for g, hig, gvec in zip(groups, HiG, G):
        Ug = U[start : start + len(g)].transpose(0, 1).reshape(p, -1)  # [p, |U|·C]
        HiUg = HiU[start : start + len(g)].reshape(-1, p)  # (H⁻¹U)ᵀ, [|U|·C, p]
        start += len(g)
        small = torch.eye(Ug.shape[1], dtype=U.dtype, device=U.device) - HiUg @ Ug  # I − UᵀH⁻¹U
        steps.append(hig + HiUg.T @ torch.linalg.solve(small, HiUg @ gvec))
    return torch.stack(steps)
