"""Ground truth by retraining, and the metrics that compare influence with it."""

from whybox.evaluation.loo import (
    ValidationRow,
    correlations,
    loo_ground_truth,
    perturbation_check,
    select_points,
    validate,
)

__all__ = ["ValidationRow", "correlations", "loo_ground_truth", "perturbation_check", "select_points", "validate"]
