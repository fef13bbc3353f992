"""No curvature at all: H⁻¹ replaced by I (the paper's Fig 1 ablation, gradient dot products)."""

from __future__ import annotations

import torch

from whybox.curvature.base import Curvature


class Identity(Curvature):
    """Returns V unchanged: influence becomes −∇L(test)·∇L(train), TracIn-style similarity."""

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        self.diagnostics = {"method": "identity (no Hessian)"}
        return V.reshape(-1, self._fitted().p).clone()
