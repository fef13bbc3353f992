r"""Koh & Liang (2017) influence quantities, built from an Objective and an inverse-HVP solver.

``InfluenceFunction`` is a ``whybox.Attributor``: ``scores`` follows the package's one sign
convention (positive = the training point supports the test prediction) in loss units, and equals
``removal_effect(order=1)``. The raw paper quantities keep the paper's sign and say so:

* ``up_loss[j, i]`` = I_up,loss(z_i, z_test_j) = −∇L(z_test_j)ᵀ H⁻¹ ∇L(z_i): the derivative of the
  test loss with respect to up-weighting z_i. **Positive = harmful** (more weight on z_i raises the
  test loss). ``scores = removal_effect(order=1) = −up_loss / n``.
* ``up_params`` = I_up,params(z) = −H⁻¹∇L(z): parameter change per unit up-weight (removal ≈ −1/n of it).
* ``pert_loss`` = I_pert,loss(z, z_test) = −∇L(z_test)ᵀ H⁻¹ ∇ₓ∇θL(z): shaped like the training input;
  moving x by δ changes the test loss by ≈ (1/n)·pert_loss·δ.
* ``self_influence`` = I_up,loss(z_i, z_i) = −∇L(z_i)ᵀH⁻¹∇L(z_i) ≤ 0 for a PD Hessian;
  ``self_scores = −self_influence ≥ 0``: high = check this label first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from whybox.attribution.base import Attributor, Index
from whybox.curvature import Curvature, make_solver
from whybox.influence import second_order
from whybox.objective import Objective
from whybox.utils import digest


class InfluenceFunction(Attributor):
    """Influence of training points on test predictions: ``InfluenceFunction(objective, solver).fit()``.

    Args:
        objective: the trained model, loss, weight decay and training data.
        curvature: an inverse-HVP solver (``Exact``, ``CG``, ``LiSSA``, ``Identity``). Default:
            ``make_solver("auto")`` (Exact up to 5,000 parameters, else CG).
    """

    units = "loss"

    def __init__(self, objective: Objective, curvature: Curvature | None = None) -> None:
        super().__init__(objective)
        if curvature is not None and not isinstance(curvature, Curvature):
            raise TypeError(f"curvature must be a whybox solver (Exact, CG, LiSSA, ...), got {type(curvature).__name__}")
        self.curvature = curvature or make_solver("auto", p=objective.p)
        self._fitted = False
        self._stest: dict = {}

    def fit(self) -> InfluenceFunction:
        """Prepare the solver (factorise H, estimate LiSSA's scale, ...). Returns ``self``."""
        self.curvature.fit(self.objective)
        self._fitted = True
        self._stest.clear()
        return self

    def settings(self) -> dict[str, Any]:
        return {"method": self.name, "solver": repr(self.curvature)}

    @property
    def diagnostics(self) -> dict[str, Any]:
        return dict(self.curvature.diagnostics)

    def _solve(self, V: torch.Tensor) -> torch.Tensor:
        if not self._fitted:
            raise RuntimeError("call .fit() before computing influence")
        return self.curvature.solve(V)

    # ------------------------------------------------------------------ test side
    def s_test(self, X_test, y_test) -> torch.Tensor:
        """s_test = H⁻¹∇L(z_test) for each test point, ``[m, p]``; cached for the last test batch."""
        X, y = self.objective.check_data(X_test, y_test, "test")
        key = digest(X, y, X.shape, y.shape)  # by content: the engine's slices of the same rows reuse the solve
        if key not in self._stest:
            self._stest = {key: (self._solve(self.objective.grads(X, y)), X, y)}  # keep one batch
        return self._stest[key][0]

    def _checked_test(self, X_test, y_test) -> tuple[torch.Tensor, torch.Tensor]:
        self.s_test(X_test, y_test)
        _, X, y = next(iter(self._stest.values()))
        return X, y

    # ------------------------------------------------------------------ the Attributor interface
    def scores(self, X_test, y_test, train_idx: Index = None) -> torch.Tensor:
        """``[m, k]`` = ``removal_effect(order=1)``: predicted rise of each test loss if each training
        point were removed and the model retrained. Positive = the point supports the prediction."""
        return self.score_chunk(self.s_test(X_test, y_test), train_idx)

    def test_factors(self, X_test, y_test) -> torch.Tensor:
        """s_test, ``[m, p]``."""
        return self.s_test(X_test, y_test)

    def score_chunk(self, factors: torch.Tensor, train_idx: Index) -> torch.Tensor:
        rows = self.rows(train_idx)
        obj = self.objective
        return torch.cat([factors @ obj.train_grads(rows[s]).T for s in obj.chunks(len(rows))], dim=1) / self.n

    def self_scores(self, train_idx: Index = None) -> torch.Tensor:
        """``[k]`` = −self_influence = ∇L(zᵢ)ᵀH⁻¹∇L(zᵢ) ≥ 0 (positive-definite H); high = check this label first."""
        return -self.self_influence(train_idx)

    # ------------------------------------------------------------------ Koh & Liang quantities
    def up_loss(self, X_test, y_test, train_idx: Index = None) -> torch.Tensor:
        """I_up,loss(z_i, z_test), ``[m, k]``. Paper sign: positive = harmful; equals −n·scores."""
        return -self.n * self.scores(X_test, y_test, train_idx)

    def up_params(self, train_idx: Index) -> torch.Tensor:
        """I_up,params(z_i) = −H⁻¹∇L(z_i), ``[k, p]``; removing z_i moves θ by ≈ −(1/n)·this."""
        return -self._solve(self.objective.train_grads(self.rows(train_idx)))

    def pert_loss(self, X_test, y_test, train_idx: Index) -> torch.Tensor:
        """I_pert,loss(z_i, z_test) = −∇ₓ(s_test·∇θL(z_i)), ``[m, k, *x.shape]``."""
        S = self.s_test(X_test, y_test)
        rows = self.rows(train_idx)
        obj = self.objective
        return -obj.mixed_grad(S, obj.X[rows], obj.y[rows])

    def self_influence(self, train_idx: Index = None) -> torch.Tensor:
        """I_up,loss(z_i, z_i) = −∇L(z_i)ᵀH⁻¹∇L(z_i) for each training point, ``[k]`` (≤ 0 when H is PD)."""
        rows = self.rows(train_idx)
        out = []
        for s in self.objective.chunks(len(rows)):
            G = self.objective.train_grads(rows[s])
            out.append(-(G * self._solve(G)).sum(1))
        return torch.cat(out)

    def replacement_params(self, train_idx: Index, X_new, y_new) -> torch.Tensor:
        """I_up,params(z_δ) − I_up,params(z): replacing z_i by z_δ = (X_new, y_new), any size of change.

        The parameters move by ≈ (1/n)·this. Use it for label changes (same x, new y) or input edits.
        """
        rows = self.rows(train_idx)
        return -self._solve(self._new_grads(rows, X_new, y_new) - self.objective.train_grads(rows))

    def replacement_effect(self, X_test, y_test, train_idx: Index, X_new, y_new) -> torch.Tensor:
        """First-order change of each test loss when z_i is replaced by z_δ, ``[m, k]`` (loss units;
        positive = the test loss rises)."""
        rows = self.rows(train_idx)
        S = self.s_test(X_test, y_test)
        G_new = self._new_grads(rows, X_new, y_new)
        return -(S @ (G_new - self.objective.train_grads(rows)).T) / self.n

    def _new_grads(self, rows: torch.Tensor, X_new, y_new) -> torch.Tensor:
        X, y = self.objective.check_data(X_new, y_new, "replacement")
        if len(X) != len(rows):
            raise ValueError(f"{len(rows)} training indices but {len(X)} replacement rows")
        return self.objective.grads(X, y)

    # ------------------------------------------------------------------ removal effects
    def removal_effect(self, X_test, y_test, train_idx: Index, order: int = 1) -> torch.Tensor:
        """Change of each test loss if z_i were removed and the model retrained, ``[m, k]``.

        Positive = the test loss rises without z_i (z_i supported the prediction).

        * ``order=1``: the influence-function answer, ``scores`` = −(1/n)·up_loss.
        * ``order=2``: one Newton step on the objective without z_i (``whybox.influence.second_order``).
        """
        if order == 1:
            return self.scores(X_test, y_test, train_idx)
        _check_order(order)
        rows = self.rows(train_idx)
        return self._second_order(X_test, y_test, [rows[i : i + 1] for i in range(len(rows))])

    def group_removal_effect(self, X_test, y_test, groups: Sequence[Index], order: int = 1) -> torch.Tensor:
        """Change of each test loss if a whole group U of training points were removed, ``[m, len(groups)]``.

        * ``order=1``: the sum of the members' first-order effects (Koh et al. 2019).
        * ``order=2``: one Newton step without the whole group, H − (1/n)Σ_{i∈U}∇²L(z_i), test
          loss evaluated exactly; it captures the interactions between members that the sum misses.
        Positive = the test loss rises without the group.
        """
        rows = [self.rows(g) for g in groups]
        if order == 1:
            per_point = self.scores(X_test, y_test, torch.cat(rows))
            return torch.stack([part.sum(1) for part in per_point.split([len(r) for r in rows], dim=1)], dim=1)
        _check_order(order)
        return self._second_order(X_test, y_test, rows)

    def _second_order(self, X_test, y_test, groups: list[torch.Tensor]) -> torch.Tensor:
        if not self._fitted:
            raise RuntimeError("call .fit() before computing influence")
        X, y = self._checked_test(X_test, y_test)
        return second_order.removal_effects(self.objective, self.curvature, X, y, groups)


def _check_order(order: int) -> None:
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")

