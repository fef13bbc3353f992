r"""Koh & Liang (2017) influence quantities, built from an Objective and an inverse-HVP solver.

Sign and units (every method below follows them):

* ``up_loss[j, i]`` = I_up,loss(z_i, z_test_j) = −∇L(z_test_j)ᵀ H⁻¹ ∇L(z_i): the derivative of the
  test loss with respect to up-weighting z_i. **Positive = harmful** (more weight on z_i raises the
  test loss); negative = helpful. Units: test loss per unit of example weight.
* ``removal_effect`` = the change of the test loss if z_i is removed and the model retrained, in
  loss units: ≈ −(1/n)·up_loss. **Positive = removing it raises the test loss = it was helpful.**
* ``up_params`` = I_up,params(z) = −H⁻¹∇L(z): parameter change per unit up-weight (removal ≈ −1/n of it).
* ``pert_loss`` = I_pert,loss(z, z_test) = −∇L(z_test)ᵀ H⁻¹ ∇ₓ∇θL(z): shaped like the training input;
  moving x by δ changes the test loss by ≈ (1/n)·pert_loss·δ.
* ``self_influence`` = I_up,loss(z_i, z_i) = −∇L(z_i)ᵀH⁻¹∇L(z_i) ≤ 0 for a PD Hessian; rank points
  for label checking by its magnitude (most negative first).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch.func import jacrev, vmap

from whybox.curvature import CG, Curvature, Exact
from whybox.objective import Objective

Index = Union[Sequence[int], torch.Tensor, slice, None]


class InfluenceFunction:
    """Influence of training points on test predictions: ``InfluenceFunction(objective, solver).fit()``.

    Args:
        objective: the trained model, loss, weight decay and training data.
        curvature: an inverse-HVP solver (``Exact``, ``CG``, ``LiSSA``, ``Identity``). Default:
            ``Exact()`` for up to 5,000 parameters, else ``CG()``.
    """

    def __init__(self, objective: Objective, curvature: Optional[Curvature] = None) -> None:
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a whybox.Objective, got {type(objective).__name__}")
        if curvature is not None and not isinstance(curvature, Curvature):
            raise TypeError(f"curvature must be a whybox solver (Exact, CG, LiSSA, ...), got {type(curvature).__name__}")
        self.objective = objective
        self.curvature = curvature or (Exact() if objective.p <= 5000 else CG())
        self._fitted = False
        self._stest: dict = {}
        self._linear: Optional[bool] = None

    def fit(self) -> "InfluenceFunction":
        """Prepare the solver (factorise H, estimate LiSSA's scale, ...). Returns ``self``."""
        self.curvature.fit(self.objective)
        self._fitted = True
        self._stest.clear()
        return self

    @property
    def n(self) -> int:
        return self.objective.n

    def _rows(self, idx: Index) -> torch.Tensor:
        n = self.n
        if idx is None:
            return torch.arange(n, device=self.objective.device)
        if isinstance(idx, slice):
            return torch.arange(n, device=self.objective.device)[idx]
        t = torch.as_tensor(idx, device=self.objective.device).reshape(-1).long()
        if len(t) == 0:
            raise ValueError("no training indices given")
        if t.min() < -n or t.max() >= n:
            raise ValueError(f"training indices must be in [0, {n}); got range [{t.min().item()}, {t.max().item()}]")
        return t % n

    def _solve(self, V: torch.Tensor) -> torch.Tensor:
        if not self._fitted:
            raise RuntimeError("call .fit() before computing influence")
        return self.curvature.solve(V)

    # ------------------------------------------------------------------ test side
    def s_test(self, X_test, y_test) -> torch.Tensor:
        """s_test = H⁻¹∇L(z_test) for each test point, ``[m, p]``; cached per test batch."""
        key = (id(X_test), getattr(X_test, "_version", None), id(y_test), getattr(X_test, "shape", None))
        if key not in self._stest:
            X, y = self.objective.check_data(X_test, y_test, "test")
            self._stest = {key: (self._solve(self.objective.grads(X, y)), X, y)}  # keep one batch
        return self._stest[key][0]

    def _test(self, X_test, y_test) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        S = self.s_test(X_test, y_test)
        _, X, y = next(iter(self._stest.values()))
        return S, X, y

    def _train_grads(self, rows: torch.Tensor) -> torch.Tensor:
        return self.objective.train_grads(rows)

    # ------------------------------------------------------------------ Koh & Liang quantities
    def up_loss(self, X_test, y_test, train_idx: Index = None) -> torch.Tensor:
        """I_up,loss(z_i, z_test) for every test point and training point, ``[m, k]``. Positive = harmful."""
        S = self.s_test(X_test, y_test)
        rows = self._rows(train_idx)
        return torch.cat([-S @ self._train_grads(rows[s]).T for s in self.objective.chunks(len(rows))], dim=1)

    def up_params(self, train_idx: Index) -> torch.Tensor:
        """I_up,params(z_i) = −H⁻¹∇L(z_i), ``[k, p]``; removing z_i moves θ by ≈ −(1/n)·this."""
        return -self._solve(self._train_grads(self._rows(train_idx)))

    def pert_loss(self, X_test, y_test, train_idx: Index) -> torch.Tensor:
        """I_pert,loss(z_i, z_test) = −∇ₓ(s_test·∇θL(z_i)), ``[m, k, *x.shape]``."""
        S = self.s_test(X_test, y_test)
        rows = self._rows(train_idx)
        obj = self.objective
        return -obj.mixed_grad(S, obj.X[rows], obj.y[rows])

    def self_influence(self, train_idx: Index = None) -> torch.Tensor:
        """I_up,loss(z_i, z_i) = −∇L(z_i)ᵀH⁻¹∇L(z_i) for each training point, ``[k]`` (≤ 0 when H is PD)."""
        rows = self._rows(train_idx)
        out = []
        for s in self.objective.chunks(len(rows)):
            G = self._train_grads(rows[s])
            out.append(-(G * self._solve(G)).sum(1))
        return torch.cat(out)

    def replacement_params(self, train_idx: Index, X_new, y_new) -> torch.Tensor:
        """I_up,params(z_δ) − I_up,params(z): replacing z_i by z_δ = (X_new, y_new), any size of change.

        The parameters move by ≈ (1/n)·this. Use it for label changes (same x, new y) or input edits.
        """
        rows = self._rows(train_idx)
        G_new = self._new_grads(rows, X_new, y_new)
        return -self._solve(G_new - self._train_grads(rows))

    def replacement_effect(self, X_test, y_test, train_idx: Index, X_new, y_new) -> torch.Tensor:
        """First-order change of each test loss when z_i is replaced by z_δ, ``[m, k]`` (loss units)."""
        rows = self._rows(train_idx)
        S = self.s_test(X_test, y_test)
        G_new = self._new_grads(rows, X_new, y_new)
        return -(S @ (G_new - self._train_grads(rows)).T) / self.n

    def _new_grads(self, rows: torch.Tensor, X_new, y_new) -> torch.Tensor:
        X, y = self.objective.check_data(X_new, y_new, "replacement")
        if len(X) != len(rows):
            raise ValueError(f"{len(rows)} training indices but {len(X)} replacement rows")
        return self.objective.grads(X, y)

    def removal_effect(self, X_test, y_test, train_idx: Index, order: int = 1) -> torch.Tensor:
        """Change of each test loss if z_i were removed and the model retrained, ``[m, k]``.

        Positive = the test loss rises without z_i (z_i was helpful).

        * ``order=1``: the influence-function answer, −(1/n)·up_loss.
        * ``order=2``: one Newton step on the objective without z_i, from θ̂, with the Hessian minus
          z_i's own term, H − (1/n)∇²L(z_i); the test loss is then evaluated exactly at the new
          parameters. Linear-in-θ models (linear/logistic regression, a trainable last layer) use a
          rank-C Woodbury update through the solver; other models need a dense Hessian (small p).
        """
        if order == 1:
            return -self.up_loss(X_test, y_test, train_idx) / self.n
        if order != 2:
            raise ValueError(f"order must be 1 or 2, got {order}")
        rows = self._rows(train_idx)
        return self._second_order(X_test, y_test, [rows[i : i + 1] for i in range(len(rows))])

    def group_removal_effect(self, X_test, y_test, groups: Sequence[Index], order: int = 1) -> torch.Tensor:
        """Change of each test loss if a whole group U of training points were removed, ``[m, len(groups)]``.

        * ``order=1``: the sum of the members' first-order effects (Koh et al. 2019).
        * ``order=2``: one Newton step without the whole group, H − (1/n)Σ_{i∈U}∇²L(z_i), test
          loss evaluated exactly; it captures the interactions between members that the sum
          misses (in the spirit of Basu et al. 2020's second-order group influence).
        Positive = the test loss rises without the group.
        """
        rows = [self._rows(g) for g in groups]
        if order == 1:
            per_point = self.removal_effect(X_test, y_test, torch.cat(rows), order=1)
            return torch.stack([part.sum(1) for part in per_point.split([len(r) for r in rows], dim=1)], dim=1)
        if order != 2:
            raise ValueError(f"order must be 1 or 2, got {order}")
        return self._second_order(X_test, y_test, rows)

    def _second_order(self, X_test, y_test, groups: list[torch.Tensor]) -> torch.Tensor:
        _, X, y = self._test(X_test, y_test)  # validates the test data
        obj = self.objective
        chunk = max(1, obj.batch_size // 8)
        steps = torch.cat([self._newton_steps(groups[i : i + chunk]) for i in range(0, len(groups), chunk)])
        base = obj.losses(X, y)
        moved = vmap(lambda th: obj._batch_losses(th, X, y))(obj.theta + steps)
        return (moved - base).T.detach()

    # ------------------------------------------------------------------ the Attributor interface
    def scores(self, X_test, y_test) -> torch.Tensor:
        """``[m, n]``: predicted rise of each test loss if each training point were removed
        (first order, = ``removal_effect(order=1)``); higher = more helpful."""
        return self.removal_effect(X_test, y_test, None, order=1)

    def self_scores(self) -> torch.Tensor:
        """``[n]``: −self_influence = ∇L(zᵢ)ᵀH⁻¹∇L(zᵢ) ≥ 0; higher = check this label first."""
        return -self.self_influence()

    # ------------------------------------------------------------------ second order internals
    def _newton_steps(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """Δθ_U = (H − Σ_{i∈U}∇²L(z_i)/n)⁻¹ Σ_{i∈U}∇L(z_i)/n for each group U of rows, ``[len(groups), p]``."""
        obj, n = self.objective, self.n
        G = torch.stack([self._train_grads(g).sum(0) for g in groups]) / n
        if self._is_linear_in_params():  # Woodbury: ∇²L_i = U_i U_iᵀ has rank ≤ C
            rows = torch.cat(groups)
            U = self._hessian_factors(rows) / n**0.5  # [K, p, C]
            K, p, C = U.shape
            HiU = self._solve(U.transpose(1, 2).reshape(K * C, p)).reshape(K, C, p)
            HiG = self._solve(G)
            steps, start = [], 0
            for g, hig, gvec in zip(groups, HiG, G):
                Ug = U[start : start + len(g)].transpose(0, 1).reshape(p, -1)  # [p, |U|·C]
                HiUg = HiU[start : start + len(g)].reshape(-1, p)  # (H⁻¹U)ᵀ, [|U|·C, p]
                start += len(g)
                small = torch.eye(Ug.shape[1], dtype=U.dtype, device=U.device) - HiUg @ Ug  # I − UᵀH⁻¹U
                steps.append(hig + HiUg.T @ torch.linalg.solve(small, HiUg @ gvec))
            return torch.stack(steps)
        H = getattr(self.curvature, "hessian", None)
        if H is None:
            H = obj.hessian()
            H.diagonal().add_(self.curvature.damping)
        return torch.stack([
            torch.linalg.solve(H - obj.example_hessians(g.tolist()).sum(0) / n, gvec) for g, gvec in zip(groups, G)
        ])

    def _is_linear_in_params(self) -> bool:
        """Whether the model output is linear in θ (its Jacobian does not change with θ)."""
        if self._linear is None:
            obj = self.objective
            x = obj.X[:2]
            jac = lambda th: jacrev(lambda t: obj.outputs(x, t))(th)  # noqa: E731
            gen = torch.Generator(device="cpu").manual_seed(0)
            shift = torch.randn(obj.p, generator=gen, dtype=obj.dtype).to(obj.device)
            J0, J1 = jac(obj.theta), jac(obj.theta + shift * (1 + obj.theta.abs()))
            self._linear = bool(torch.allclose(J0, J1, rtol=1e-6, atol=1e-9))
        return self._linear

    def _hessian_factors(self, rows: torch.Tensor) -> torch.Tensor:
        """U_i with ∇²L(z_i) = U_i U_iᵀ for a linear-in-θ model: Jᵀ A^{1/2}, ``[k, p, C]``."""
        obj = self.objective
        X, y = obj.X[rows], obj.y[rows]
        out_fn = lambda th, x: obj.outputs(x.unsqueeze(0), th).reshape(-1)  # noqa: E731
        J = vmap(jacrev(out_fn), in_dims=(None, 0))(obj.theta, X)  # [k, C, p]
        shape = obj.output_shape
        loss_of_out = lambda o, t: obj.loss_fn(o.reshape(shape), t)  # noqa: E731
        A = vmap(torch.func.hessian(loss_of_out))(obj.outputs(X).reshape(len(X), -1), y)  # [k, C, C]
        evals, evecs = torch.linalg.eigh(0.5 * (A + A.transpose(1, 2)))
        root = evecs * evals.clamp_min(0).sqrt()[:, None, :]  # A = root rootᵀ
        return J.transpose(1, 2) @ root
