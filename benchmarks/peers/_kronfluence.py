"""The Kronfluence ``Task`` both peer benchmarks use: cross-entropy, true-Fisher sampling for the factors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classify_task(modules: list[str] | None = None):
    """A ``kronfluence.task.Task`` for classifiers fed ``(x, t)`` batches; summed losses, as Kronfluence expects.
    ``modules``: the names of the modules it tracks (None: every ``nn.Linear`` / ``nn.Conv2d``, its default)."""
    from kronfluence.task import Task

    class Classify(Task):
        def get_influence_tracked_modules(self):
            return modules

        def compute_train_loss(self, batch, model, sample=False):
            x, t = batch
            logits = model(x)
            if sample:  # the true Fisher: labels drawn from the model
                with torch.no_grad():
                    t = torch.multinomial(F.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, t, reduction="sum")

        def compute_measurement(self, batch, model):
            x, t = batch
            return F.cross_entropy(model(x), t, reduction="sum")

    return Classify()
