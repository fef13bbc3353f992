"""Explaining a prediction through the input: meaningful-perturbation masks (Fong & Vedaldi 2017),
baselines behind the same call shape, and the metrics that judge them.

    from whybox.saliency import MeaningfulPerturbation, deletion_curve
    res = MeaningfulPerturbation(model, perturbation="blur").explain(images)   # [N, C, H, W]
    res.mask, res.heatmap, res.perturbed, res.prob_before, res.prob_after, res.loss_curve
    deletion_curve(model, res.images, res.heatmap, res.targets).auc

Models saved to files are read by ``whybox.io.load_model`` (TorchScript, ``.pt2``, Python code + weights).
"""

from whybox.saliency._common import SaliencyResult, gaussian_blur, overlay, prepare
from whybox.saliency.baselines import METHODS, GradientSaliency, GradientXInput, Occlusion, RandomSaliency, make_method
from whybox.saliency.io import load_image, result_figures, save_result
from whybox.saliency.metrics import (
    Curve,
    box_distance,
    deletion_curve,
    insertion_curve,
    iou_top_area,
    mask_iou,
    max_point,
    pointing_game,
)
from whybox.saliency.perturbation import (
    MeaningfulPerturbation,
    PerturbationResult,
    perturbation_reference,
    shift_images,
)

__all__ = [
    "MeaningfulPerturbation", "PerturbationResult", "SaliencyResult", "GradientSaliency", "GradientXInput",
    "Occlusion", "RandomSaliency", "make_method", "METHODS", "deletion_curve", "insertion_curve", "Curve",
    "pointing_game", "max_point", "box_distance", "iou_top_area", "mask_iou", "perturbation_reference",
    "shift_images", "gaussian_blur", "overlay", "prepare", "load_image", "result_figures", "save_result",
]
