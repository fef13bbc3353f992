r"""TracIn (Pruthi et al. 2020): gradient agreement summed over checkpoints saved during training.

    TracInCP(z_i, z_t) = Σ_c η_c ∇L(z_t, θ_c)ᵀ ∇L(z_i, θ_c)

where θ_c are checkpoints and η_c the learning rate in use when each was taken. Sign: a step on z_i at θ_c
lowers the test loss by ≈ η_c ∇L(z_t, θ_c)ᵀ∇L(z_i, θ_c), so a positive score means training on
z_i lowered the test loss over the run: z_i supports the test prediction (whybox's convention;
the paper calls these proponents). Unitless (loss change per unit step, summed).

Checkpoints come from the user's loop (``CheckpointRecorder``), from files (state dicts), or from
``whybox.zoo.train(..., checkpoints=[])``. With one checkpoint at θ̂ and η = 1, TracIn is
``GradientSimilarity(kind="dot")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from whybox.attribution.base import Attributor, Index
from whybox.objective import Objective

Checkpoint = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class TracIn(Attributor):
    """Σ over checkpoints of η_c · (test gradient · training gradient) at θ_c.

    Args:
        objective: the trained model, loss and training data (θ̂ itself is not used).
        checkpoints: parameters saved during training: flat θ vectors of length ``objective.p``
            or state dicts / ``named_parameters`` dicts of the model.
        learning_rates: η_c for each checkpoint, or one number for all.
    """

    units = "unitless"

    def __init__(self, objective: Objective, checkpoints: Sequence[Checkpoint],
                 learning_rates: float | Sequence[float] = 1.0) -> None:
        super().__init__(objective)
        if isinstance(checkpoints, (torch.Tensor, Mapping)) or len(checkpoints) == 0:
            raise ValueError("checkpoints must be a non-empty list of flat θ vectors or state dicts")
        lrs = [float(learning_rates)] * len(checkpoints) if isinstance(learning_rates, (int, float)) else [float(v) for v in learning_rates]
        if len(lrs) != len(checkpoints):
            raise ValueError(f"{len(checkpoints)} checkpoints but {len(lrs)} learning_rates; give one per checkpoint or one number")
        if not all(v > 0 and v < float("inf") for v in lrs):
            raise ValueError(f"learning_rates must be positive and finite, got {lrs}")
        self.learning_rates = lrs
        self.thetas = [flat_theta(objective, ck, f"checkpoint {c}") for c, ck in enumerate(checkpoints)]
        # one objective per checkpoint; the gradient cache budget is shared between them
        self._objectives = [objective.with_theta(th) for th in self.thetas]
        for o in self._objectives:
            o.cache_bytes = objective.cache_bytes // len(self.thetas)

    def settings(self) -> dict[str, Any]:
        return {"method": self.name, "checkpoints": len(self.thetas), "learning_rates": self.learning_rates}

    def scores(self, X_test, y_test, train_idx: Index = None) -> torch.Tensor:
        return self.score_chunk(self.test_factors(X_test, y_test), train_idx)

    def test_factors(self, X_test, y_test) -> torch.Tensor:
        """η_c ∇L(z_t, θ_c) for every checkpoint c, ``[C, m, p]``."""
        X, y = self.objective.check_data(X_test, y_test, "test")
        return torch.stack([lr * o.grads(X, y) for lr, o in zip(self.learning_rates, self._objectives)])

    def score_chunk(self, factors: torch.Tensor, train_idx: Index) -> torch.Tensor:
        rows = self.rows(train_idx)
        out = []
        for s in self.objective.chunks(len(rows)):
            out.append(sum(F @ o.train_grads(rows[s]).T for F, o in zip(factors, self._objectives)))
        return torch.cat(out, dim=1)

    def self_scores(self, train_idx: Index = None) -> torch.Tensor:
        """``[k]`` Σ_c η_c ‖∇L(zᵢ, θ_c)‖² ≥ 0 (Pruthi et al.'s self-influence: high = check the label)."""
        rows = self.rows(train_idx)
        return torch.cat([
            sum(lr * o.train_grads(rows[s]).square().sum(1) for lr, o in zip(self.learning_rates, self._objectives))
            for s in self.objective.chunks(len(rows))
        ])


def flat_theta(objective: Objective, checkpoint: Checkpoint, what: str = "checkpoint") -> torch.Tensor:
    """θ as a flat vector in ``objective``'s parameter order, from a flat tensor or a state dict
    (``what`` names it in errors)."""
    if isinstance(checkpoint, Mapping):
        def key(name: str) -> str:  # a TorchScript model's parameters ("0__weight") by their dotted names too
            return name if name in checkpoint or name.replace("__", ".") not in checkpoint else name.replace("__", ".")

        missing = [n for n in objective.param_names if key(n) not in checkpoint]
        if missing:
            raise ValueError(
                f"{what} lacks parameters {missing[:3]}{'...' if len(missing) > 3 else ''}; "
                f"save model.state_dict() (or dict(model.named_parameters())) of the explained model"
            )
        parts = []
        for name, shape in zip(objective.param_names, objective.shapes):
            t = torch.as_tensor(checkpoint[key(name)])
            if t.shape != shape:
                raise ValueError(f"{what}: parameter {name} has shape {tuple(t.shape)}, the model {tuple(shape)}")
            parts.append(t.reshape(-1))
        theta = torch.cat(parts)
    else:
        theta = torch.as_tensor(checkpoint).reshape(-1)
        if theta.numel() != objective.p:
            raise ValueError(f"{what} has {theta.numel()} values but the objective has p = {objective.p} parameters")
    theta = theta.detach().to(device=objective.device, dtype=objective.dtype)
    if not torch.isfinite(theta).all():
        raise ValueError(f"{what} contains NaN or inf: drop it (training had diverged there)")
    return theta


class CheckpointRecorder:
    """Collects checkpoints and learning rates from a training loop, for ``TracIn``::

        rec = CheckpointRecorder()
        for epoch in range(epochs):
            ...  # one epoch of SGD
            rec.record(model, lr=optimizer.param_groups[0]["lr"])
        rec.save("ckpts.pt")                      # optional; CheckpointRecorder.load("ckpts.pt")
        tracin = TracIn(objective, rec.checkpoints, rec.learning_rates)
    """

    def __init__(self) -> None:
        self.checkpoints: list[dict[str, torch.Tensor]] = []
        self.learning_rates: list[float] = []

    def record(self, model: nn.Module, lr: float) -> None:
        """Save a copy of the model's parameters with the learning rate in use at this point of training."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"record needs the nn.Module being trained, got {type(model).__name__}")
        if not (lr > 0 and lr < float("inf")):
            raise ValueError(f"lr must be positive and finite, got {lr}")
        self.checkpoints.append({n: p.detach().clone() for n, p in model.named_parameters()})
        self.learning_rates.append(float(lr))

    def __len__(self) -> int:
        return len(self.checkpoints)

    def save(self, path: str | Path) -> None:
        """Write the checkpoints and learning rates to one file (``torch.save``)."""
        torch.save({"checkpoints": self.checkpoints, "learning_rates": self.learning_rates}, path)

    @classmethod
    def load(cls, path: str | Path) -> CheckpointRecorder:
        """Read a file written by ``save`` (tensors only: ``weights_only=True``)."""
        data = torch.load(path, weights_only=True)
        rec = cls()
        rec.checkpoints, rec.learning_rates = list(data["checkpoints"]), [float(v) for v in data["learning_rates"]]
        return rec
