"""Ground truth by retraining (returned as tensors), and metrics on score matrices. Works with any
``whybox.Attributor``."""

from whybox.evaluation.lds import LDSResult, lds, lds_from_scores, random_subsets, subset_ground_truth
from whybox.evaluation.loo import (
    Validation,
    ValidationRow,
    group_ground_truth,
    loo_ground_truth,
    perturbation_check,
    predicted_removal,
    select_points,
    validate,
    validate_point,
)
from whybox.evaluation.metrics import correlations, fraction_found, mislabel_auc, rowwise_correlations

__all__ = ["LDSResult", "Validation", "ValidationRow", "correlations", "fraction_found", "group_ground_truth", "lds", "lds_from_scores",
           "loo_ground_truth", "mislabel_auc", "perturbation_check", "predicted_removal", "random_subsets",
           "rowwise_correlations", "select_points", "subset_ground_truth", "validate", "validate_point"]
