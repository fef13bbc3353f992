"""The one wiring point: data → model → Objective → attributor, for the CLI and Python alike.

    from whybox.study import load_study, DataSettings, ModelSettings, MethodSettings
    study = load_study(DataSettings(dataset="digits"))              # embedded data, L2 logistic regression
    study = load_study(DataSettings(train="train.csv"), ModelSettings(sklearn="logistic", C=1.0))
    study = load_study(DataSettings(train="d.npz"), ModelSettings(model="m.ts", weight_decay=0.01),
                       MethodSettings(method="my_methods.py:Nearest"))

Settings are typed dataclasses whose field help is the CLI's option help (``help_of``), and
``Study.settings`` (written next to every result) is their ``to_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from whybox.attribution import Attributor
from whybox.curvature import make_solver
from whybox.explain import Explanation, explain_points
from whybox.influence import InfluenceFunction
from whybox.objective import Objective
from whybox.settings import Settings, setting
from whybox.zoo.data import DATASETS


@dataclass
class DataSettings(Settings):
    """Where the training and test points come from."""

    dataset: str = setting(f"Embedded data set when no training file is given: {', '.join(DATASETS)} (mnist: pip install whybox[mnist]).", "digits")
    train: Path | None = setting("Training data: .npz (X, y[, X_test, y_test]), .csv (header + label column) or a folder root/<class>/<images>.")
    test: Path | None = setting("Test data, same format as the training data.")
    label_column: str = setting("CSV column with the labels.", "label")
    test_fraction: float = setting("With a scikit-learn model and no test data: the fraction held out as test points.", 0.2)
    standardize: bool = setting("Standardise features on the training part (scikit-learn models).", False)
    seed: int = setting("Seed of the train/test split and of the reference model.", 0)


@dataclass
class ModelSettings(Settings):
    """The model to explain: a reference model whybox trains, a scikit-learn model it fits, or the user's."""

    model: Path | None = setting("Your trained model: a TorchScript file, or a state-dict checkpoint with a model-code file.")
    model_code: Path | None = setting("Python file that builds the model for a state-dict checkpoint (loaded with weights_only=True).")
    model_name: str | None = setting("Class or function in the model-code file that builds the model (default: build_model, or the only nn.Module class).")
    sklearn: str | None = setting("Instead of your model: fit this scikit-learn model on the training data (logistic, svm or ridge).")
    C: float = setting("Inverse regularisation of the scikit-learn model (weight_decay = 1/(C·n)).", 1.0)
    loss: str | None = setting("Per-example loss of your model: cross_entropy, logistic, squared_error, hinge, smooth_hinge (default: from the labels and outputs).")
    weight_decay: float | None = setting("L2 weight decay w in R(θ) = mean loss + (w/2)‖θ‖² (default 0.01 for the reference model, 0 for yours).")
    params: list[str] | None = setting("Explain only these parameters (names or prefixes, e.g. 'fc.').")
    class_order: list[str] | None = setting("Class names in the order of your model's outputs (default: integer labels as they are, other labels sorted).")
    device: str = setting("cpu or cuda.", "cpu")
    float64: bool = setting("Run your model in float64 (accurate influence); False keeps float32.", True)


@dataclass
class MethodSettings(Settings):
    """How training points are scored."""

    method: str = setting("Attributor: influence, projected, fastif, gradient_dot, gradient_cosine, euclidean, representer, tracin, or FILE.py:CLASS for your own whybox.Attributor subclass.", "influence")
    solver: str = setting("Inverse-HVP solver of influence: auto (exact up to 5,000 parameters, else cg), exact, cg, lissa, identity, kfac, ekfac, arnoldi (top-100 eigenpairs), datainf (layer-wise closed form, Kwon et al. 2023).", "auto")
    damping: float = setting("Added to the Hessian's diagonal (needed for non-convex or non-converged models).", 0.0)
    curvature: str = setting("What the solver inverts: hessian (the paper's H) or ggn (Gauss-Newton: positive semi-definite at any θ, for networks not at a minimum; = H for linear models). kfac/ekfac are always Gauss-Newton.", "hessian")
    projection_dim: int = setting("Method projected: each factored layer's gradient is projected to projection_dim × projection_dim (inputs × outputs).", 32)
    ekfac_rank_tolerance: float = setting("Solver ekfac: score through a low-rank approximation of each layer's EK-FAC inverse, its rank the smallest whose estimated relative score error is at most this (measured on 16 training rows); 0 scores exactly (dense solved test gradients).", 1e-2)
    checkpoints: Path | None = setting("Method tracin with your own model: the checkpoints of its training run — a file saved by whybox.attribution.CheckpointRecorder (with learning rates), or a state-dict file, folder or glob such as 'ckpt/epoch_*.pt' (learning rate 1 each). Models whybox trains record their own.")


def _influence(objective: Objective, method: MethodSettings) -> Attributor:
    """Influence with the named solver; Kronecker-factored curvatures score without per-example gradients."""
    from whybox.attribution.kfac import KFACInfluence
    from whybox.curvature import EKFAC, KFAC

    curvature = make_solver(method.solver, method.damping, objective.p, method.curvature)
    if isinstance(curvature, EKFAC):
        if method.ekfac_rank_tolerance == 0:
            return KFACInfluence(objective, curvature, scoring="dense")
        return KFACInfluence(objective, curvature, rank_tolerance=method.ekfac_rank_tolerance)
    if isinstance(curvature, KFAC):
        return KFACInfluence(objective, curvature)
    return InfluenceFunction(objective, curvature)


def _projected(objective: Objective, method: MethodSettings) -> Attributor:
    """Influence in a random Kronecker projection of the gradients (empirical Fisher, exact there)."""
    from whybox.attribution.projection import ProjectedInfluence

    return ProjectedInfluence(objective, dim_in=method.projection_dim, dim_out=method.projection_dim,
                              damping=method.damping)


FASTIF_CANDIDATES = 100  # method fastif: influence on this many nearest training points


def _fastif(objective: Objective, method: MethodSettings) -> Attributor:
    """Influence on the 100 nearest training points (input space) of each test point."""
    from whybox.attribution import FastIF

    return FastIF(_influence(objective, method).fit(), k=min(FASTIF_CANDIDATES, objective.n))


def _tracin(objective: Objective, method: MethodSettings, checkpoints: Sequence | None = None) -> Attributor:
    """TracIn over the checkpoints in ``method.checkpoints`` (files), or over ``checkpoints`` that
    whybox recorded while training the model itself (θ at each L-BFGS round, learning rate 1)."""
    from whybox.attribution import TracIn

    if method.checkpoints is not None:
        from whybox.io import load_checkpoints

        saved, rates = load_checkpoints(method.checkpoints)
        return TracIn(objective, saved, rates)
    if not checkpoints:
        raise ValueError("method tracin needs the checkpoints of the model's training run: give checkpoints=PATH "
                         "(a file saved by whybox.attribution.CheckpointRecorder, or a state-dict file, folder or "
                         "glob saved during training); whybox records them itself only for the models it trains")
    return TracIn(objective, list(checkpoints), learning_rates=1.0)


def _builtin_methods() -> dict[str, Callable[..., Attributor]]:
    from whybox.attribution import EuclideanSimilarity, GradientSimilarity, Representer

    return {
        "influence": _influence,
        "projected": _projected,
        "fastif": _fastif,
        "gradient_dot": lambda objective, _: GradientSimilarity(objective, "dot"),
        "gradient_cosine": lambda objective, _: GradientSimilarity(objective, "cosine"),
        "euclidean": lambda objective, _: EuclideanSimilarity(objective, "input"),
        "representer": lambda objective, _: Representer(objective),
        "tracin": _tracin,
    }


METHODS: dict[str, Callable[..., Attributor]] = _builtin_methods()
"""Built-in attributors by the name ``--method`` takes; each builds an unfitted attributor from
``(objective, method_settings)``; ``tracin`` also takes the ``checkpoints`` whybox recorded."""


def make_attributor(objective: Objective, method: MethodSettings, checkpoints: Sequence | None = None) -> Attributor:
    """A fitted attributor for ``objective`` from its settings (a ``METHODS`` name or ``FILE.py:CLASS``).

    ``checkpoints``: θ saved while whybox trained the model itself (``zoo.train(checkpoints=[])``),
    for ``tracin`` when ``method.checkpoints`` names no files."""
    if method.checkpoints is not None and method.method != "tracin":
        raise ValueError(f"checkpoints= is read by method tracin only, not {method.method!r}")
    if method.method == "tracin":
        attributor = _tracin(objective, method, checkpoints)
    elif method.method in METHODS:
        attributor = METHODS[method.method](objective, method)
    elif ":" in method.method and method.method.split(":", 1)[0].endswith(".py"):
        from whybox.io import load_attributor_class

        path, name = method.method.split(":", 1)
        attributor = load_attributor_class(path, name)(objective)
    else:
        raise ValueError(f"unknown method {method.method!r}; use one of {sorted(METHODS)}, or FILE.py:CLASS "
                         "naming a whybox.Attributor subclass")
    return attributor.fit()


@dataclass
class Study:
    """A trained model with its fitted attributor and test data: what explain, the report and the
    CLI work on. ``show_train``/``show_test`` are the inputs as the user should see them (e.g.
    unscaled pixels; default: the model inputs). ``image_shape`` (C, H, W) makes the report draw
    rows as images."""

    attributor: Attributor
    X_test: torch.Tensor
    y_test: torch.Tensor
    name: str = ""
    image_shape: tuple[int, ...] | None = None
    feature_names: list[str] = field(default_factory=list)
    class_names: list[str] | None = None
    show_train: np.ndarray | None = None
    show_test: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def objective(self) -> Objective:
        return self.attributor.objective

    def default_test_indices(self, count: int = 1) -> list[int]:
        """Misclassified test points first (by index), then correctly classified ones; for regression
        the largest errors first."""
        obj = self.objective
        pred = obj.predict(self.X_test)[0]
        if obj.is_regression:
            err = (pred - self.y_test.reshape(len(self.y_test), -1)[:, 0].to(pred.dtype)).abs()
            return torch.argsort(err, descending=True)[:count].tolist()
        wrong = (pred != self.y_test.to(pred.device)).reshape(-1)
        order = torch.nonzero(wrong).reshape(-1).tolist() + torch.nonzero(~wrong).reshape(-1).tolist()
        return order[:count]

    def explain(self, test_indices: Sequence[int], top_k: int = 5, progress: bool = False) -> list[Explanation]:
        """The most supporting and most opposing training points of each test point."""
        return explain_points(self.attributor, self.X_test, self.y_test, test_indices, top_k, progress,
                              settings=self.settings)


def load_study(
    data: DataSettings | None = None,
    model: ModelSettings | None = None,
    method: MethodSettings | None = None,
) -> Study:
    """Data → model → Objective → fitted attributor, as a ``Study``.

    With no training file: the embedded ``data.dataset`` and L2 logistic regression trained by
    whybox. With a training file: ``model.model`` (TorchScript, or a state dict with
    ``model.model_code``) — a model already trained on exactly those rows — or ``model.sklearn``
    (whybox fits that scikit-learn model itself and explains it through the adapter).
    """
    from whybox import io

    data, model, method = data or DataSettings(), model or ModelSettings(), method or MethodSettings()
    if model.device != "cpu" and not (model.device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"device {model.device!r} is not available here; use device 'cpu'")
    if data.train is None:
        if any(v is not None for v in (data.test, model.model, model.model_code, model.sklearn)):
            raise ValueError("a test file, your model or a scikit-learn model need your training data: give train=FILE")
        prepared = _reference_model(data, model)
    else:
        prepared = io.prepare_user_model(data, model)
    objective = prepared.pop("objective")
    if model.device != "cpu":
        objective = objective.to(model.device)
        prepared["X_test"], prepared["y_test"] = prepared["X_test"].to(model.device), prepared["y_test"].to(model.device)
    settings = {**data.to_dict(), **model.to_dict(), **method.to_dict(), **prepared.pop("settings")}
    settings["train_grad_norm"] = float(objective.risk_grad().norm())
    attributor = make_attributor(objective, method, prepared.pop("checkpoints", None))
    settings.update(attributor.settings())
    return Study(attributor, settings=settings, **prepared)


def default_study(dataset: str = "digits", weight_decay: float = 0.01, solver: str = "auto", damping: float = 0.0,
                  seed: int = 0) -> Study:
    """L2 logistic regression trained on an embedded data set, with influence fitted."""
    return load_study(DataSettings(dataset=dataset, seed=seed), ModelSettings(weight_decay=weight_decay),
                      MethodSettings(solver=solver, damping=damping))


def _reference_model(data: DataSettings, model: ModelSettings) -> dict[str, Any]:
    """The embedded data set and L2 logistic regression trained on it to a verified optimum."""
    from whybox import zoo

    split = zoo.load(data.dataset, seed=data.seed)
    net = zoo.logistic_regression(split.n_features, split.n_classes)
    loss = "logistic" if split.n_classes == 2 else "cross_entropy"
    weight_decay = 0.01 if model.weight_decay is None else model.weight_decay
    checkpoints: list = []  # θ at each L-BFGS round (for method tracin)
    objective, _ = zoo.train(net, loss, split.X_train, split.y_train, weight_decay=weight_decay, checkpoints=checkpoints)
    return dict(
        objective=objective, checkpoints=checkpoints, X_test=split.X_test, y_test=split.y_test, name=split.name,
        image_shape=split.image_shape, feature_names=split.feature_names, class_names=split.class_names,
        show_train=split.raw_train, show_test=split.raw_test,
        settings={"model_kind": "logistic regression (reference)", "loss": loss, "weight_decay": weight_decay},
    )
