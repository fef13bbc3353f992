"""The interface shared by every training-data attributor, so evaluation and applications
(mislabel detection, attacks, comparisons) treat influence functions, gradient similarity,
representer points, ... alike."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Attributor(Protocol):
    """Scores training points for test points.

    Convention for every attributor: **higher score = more helpful** to the test point (for
    influence functions: the predicted rise of the test loss if that training point were removed,
    in loss units), and for ``self_scores`` **higher = more suspicious** (more self-influence,
    worth checking first).
    """

    def scores(self, X_test, y_test) -> torch.Tensor:
        """``[m, n]`` scores of every training point for every test point; higher = more helpful."""
        ...

    def self_scores(self) -> torch.Tensor:
        """``[n]`` scores of every training point on itself; higher = check first."""
        ...
