"""One test point explained by its most helpful and most harmful training points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from whybox.curvature import CG, Exact, LiSSA
from whybox.influence import InfluenceFunction

SOLVERS = {"exact": Exact, "cg": CG, "lissa": LiSSA}


def make_solver(name: str, damping: float = 0.0):
    """A solver from its CLI name."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name](damping=damping)


@dataclass
class Ranked:
    """One training point in an explanation."""

    index: int
    removal_effect: float  # test-loss change if removed and retrained (first order); > 0 = helpful
    up_loss: float  # I_up,loss; > 0 = harmful
    label: int
    prediction: int


@dataclass
class SelfRanked:
    """One training point ranked by self-influence (check its label first when the score is high)."""

    index: int
    score: float  # −I_up,loss(z_i, z_i) = ∇L(z_i)ᵀH⁻¹∇L(z_i) ≥ 0
    train_loss: float
    label: int
    prediction: int


@dataclass
class Validation:
    """Predicted vs actual (retrained) test-loss change for one test point's most influential training points."""

    test_index: int
    train_indices: list[int]
    predicted: list[float]  # removal_effect (order 1), loss units
    actual: list[float]  # L(z_test, θ̂ without z_i) − L(z_test, θ̂)
    pearson: float
    spearman: float


@dataclass
class Explanation:
    """Why the model predicted what it did for one test point."""

    test_index: int
    label: int
    prediction: int
    confidence: float
    helpful: list[Ranked]
    harmful: list[Ranked]
    settings: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)


def predict(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, confidence) from model outputs: softmax for C outputs, sigmoid for one.

    For a regression model (``squared_error``) use the outputs themselves."""
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        p1 = torch.sigmoid(outputs.reshape(-1))
        pred = (p1 > 0.5).long()
        return pred, torch.where(pred == 1, p1, 1 - p1)
    probs = torch.softmax(outputs, dim=-1)
    conf, pred = probs.max(dim=-1)
    return pred, conf


def explain_points(
    influence: InfluenceFunction,
    X_test,
    y_test,
    test_indices: Sequence[int],
    top_k: int = 5,
    progress: bool = False,
    batch: int = 64,
) -> list[Explanation]:
    """Rank all training points for each test point in ``test_indices`` (one batched solve per ``batch``)."""
    obj = influence.objective
    X, y = obj.check_data(X_test, y_test, "test")
    idx = [int(i) for i in test_indices]
    bad = [i for i in idx if not 0 <= i < len(X)]
    if bad:
        raise ValueError(f"test indices must be in [0, {len(X)}), got {bad[:5]}")
    regression = obj.loss_name == "squared_error"
    with torch.no_grad():
        train_out = obj.outputs(obj.X)
    train_pred = train_out.reshape(obj.n, -1)[:, 0] if regression else predict(train_out)[0]
    k = min(top_k, obj.n)
    settings = {"solver": repr(influence.curvature), "loss": obj.loss_name, "weight_decay": obj.weight_decay,
                "n": obj.n, "p": obj.p}
    results: list[Explanation] = []
    chunks = [idx[s : s + batch] for s in range(0, len(idx), batch)]
    for chunk in tqdm(chunks, desc="explaining test points", disable=not progress or len(chunks) < 2, leave=False):
        xb, tb = X[chunk], y[chunk]
        up = influence.up_loss(xb, tb)
        effect = -up / obj.n
        with torch.no_grad():
            out = obj.outputs(xb)
        if regression:
            pred, conf = out.reshape(len(chunk), -1)[:, 0], torch.full((len(chunk),), float("nan"))
        else:
            pred, conf = predict(out)
        for j, ti in enumerate(chunk):

            def rows(order: torch.Tensor) -> list[Ranked]:
                return [
                    Ranked(int(i), float(effect[j, i]), float(up[j, i]), _num(obj.y[i]), _num(train_pred[i]))
                    for i in order[:k].tolist()
                ]

            results.append(Explanation(
                test_index=ti, label=_num(tb[j]), prediction=_num(pred[j]), confidence=float(conf[j]),
                helpful=rows(torch.argsort(effect[j], descending=True)), harmful=rows(torch.argsort(effect[j])),
                settings=dict(settings), diagnostics=dict(influence.curvature.diagnostics),
            ))
    return results


def _num(t: torch.Tensor):
    """A label or prediction as a plain int (classes) or float (regression)."""
    v = t.reshape(-1)[0].item() if torch.is_tensor(t) else t
    return int(v) if float(v) == int(v) else float(v)


def explain_point(influence: InfluenceFunction, X_test, y_test, test_index: int, top_k: int = 5) -> Explanation:
    """Rank all training points for test point ``test_index`` of ``(X_test, y_test)``."""
    obj = influence.objective
    X, _ = obj.check_data(X_test, y_test, "test")
    if not 0 <= test_index < len(X):
        raise ValueError(f"test_index must be in [0, {len(X)}), got {test_index}")
    return explain_points(influence, X_test, y_test, [test_index], top_k)[0]


def self_influence_ranking(influence: InfluenceFunction, top_k: int = 10) -> list[SelfRanked]:
    """The ``top_k`` training points with the largest self-influence magnitude (possible label errors)."""
    obj = influence.objective
    scores = influence.self_scores()
    with torch.no_grad():
        out = obj.outputs(obj.X)
    pred = out.reshape(obj.n, -1)[:, 0] if obj.loss_name == "squared_error" else predict(out)[0]
    order = torch.argsort(scores, descending=True)[: min(top_k, obj.n)]
    losses = obj.losses()
    return [SelfRanked(int(i), float(scores[i]), float(losses[i]), _num(obj.y[i]), _num(pred[i])) for i in order.tolist()]


def validate_point(
    influence: InfluenceFunction,
    X_test,
    y_test,
    test_index: int,
    k: int = 10,
    progress: bool = False,
    tol: float = 1e-10,
) -> Validation:
    """Retrain without each of the ``k`` most influential training points (by |removal effect|) and
    compare the predicted test-loss change with the actual one (``zoo.retrain``, warm-started)."""
    from scipy import stats

    from whybox.zoo import retrain

    obj = influence.objective
    X, y = obj.check_data(X_test, y_test, "test")
    x, t = X[test_index : test_index + 1], y[test_index : test_index + 1]
    predicted = influence.removal_effect(x, t, None, order=1)[0]
    chosen = torch.argsort(predicted.abs(), descending=True)[: min(k, obj.n)].tolist()
    base = obj.losses(x, t)[0]
    actual = []
    for i in tqdm(chosen, desc="retraining without each point", disable=not progress, leave=False):
        theta = retrain(obj, remove=[i], tol=tol).theta
        actual.append(float(obj.losses(x, t, theta=theta)[0] - base))
    pred = [float(predicted[i]) for i in chosen]
    if len(chosen) >= 3 and np.std(pred) > 0 and np.std(actual) > 0:
        pearson, spearman = float(stats.pearsonr(pred, actual)[0]), float(stats.spearmanr(pred, actual)[0])
    else:
        pearson = spearman = float("nan")
    return Validation(test_index, chosen, pred, actual, pearson, spearman)


@dataclass
class Study:
    """A trained model with its fitted influence solver and test data: what ``explain`` and the
    HTML report work on.

    ``show_train``/``show_test`` are the inputs as the user should see them (e.g. unscaled pixels);
    default: the model inputs. ``image_shape`` (C, H, W) makes the report draw rows as images.
    """

    influence: InfluenceFunction
    X_test: torch.Tensor
    y_test: torch.Tensor
    name: str = ""
    image_shape: Optional[tuple[int, ...]] = None
    feature_names: list[str] = field(default_factory=list)
    class_names: Optional[list[str]] = None
    show_train: Optional[np.ndarray] = None
    show_test: Optional[np.ndarray] = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def objective(self):
        return self.influence.objective

    def predictions(self) -> torch.Tensor:
        """Predicted classes (or values, for regression) of the test points."""
        with torch.no_grad():
            out = self.objective.outputs(self.X_test)
        if self.objective.loss_name == "squared_error":
            return out.reshape(len(out), -1)[:, 0]
        return predict(out)[0]

    def default_test_indices(self, count: int = 1) -> list[int]:
        """Misclassified test points first (by index), then correctly classified ones."""
        if self.objective.loss_name == "squared_error":
            err = (self.predictions() - self.y_test.reshape(len(self.y_test), -1)[:, 0].to(self.objective.dtype)).abs()
            return torch.argsort(err, descending=True)[:count].tolist()
        wrong = (self.predictions() != self.y_test.to(self.predictions().device)).reshape(-1)
        order = torch.nonzero(wrong).reshape(-1).tolist() + torch.nonzero(~wrong).reshape(-1).tolist()
        return order[:count]

    def explain(self, test_indices: Sequence[int], top_k: int = 5, progress: bool = False) -> list[Explanation]:
        """``explain_points`` on this study's test data, with the study's settings attached."""
        results = explain_points(self.influence, self.X_test, self.y_test, test_indices, top_k, progress)
        for r in results:
            r.settings.update(self.settings)
        return results


def default_study(
    dataset: str = "digits",
    weight_decay: float = 0.01,
    solver: str = "exact",
    damping: float = 0.0,
    seed: int = 0,
) -> Study:
    """L2 logistic regression trained on an embedded data set, with its influence solver fitted."""
    from whybox import zoo

    data = zoo.load(dataset, seed=seed)
    model = zoo.logistic_regression(data.n_features, data.n_classes)
    loss = "logistic" if data.n_classes == 2 else "cross_entropy"
    objective, trained = zoo.train(model, loss, data.X_train, data.y_train, weight_decay=weight_decay)
    influence = InfluenceFunction(objective, make_solver(solver, damping)).fit()
    return Study(
        influence, data.X_test, data.y_test, name=data.name, image_shape=data.image_shape,
        feature_names=data.feature_names, class_names=data.class_names,
        show_train=data.raw_train, show_test=data.raw_test,
        settings=dict(dataset=dataset, seed=seed, model="logistic regression", loss=loss,
                      train_grad_norm=trained.grad_norm),
    )


def explain_default(
    dataset: str = "digits",
    weight_decay: float = 0.01,
    solver: str = "exact",
    damping: float = 0.0,
    test_index: Optional[int] = None,
    top_k: int = 5,
    seed: int = 0,
) -> Explanation:
    """Train L2 logistic regression on an embedded data set and explain a misclassified test point."""
    study = default_study(dataset, weight_decay, solver, damping, seed)
    if test_index is None:
        test_index = study.default_test_indices(1)[0]
    return study.explain([test_index], top_k)[0]


def print_explanation(result: Explanation) -> None:
    """A one-screen summary on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    status = "correct" if result.label == result.prediction else "WRONG"
    console.print(
        f"[bold]Test point {result.test_index}[/]: label {result.label}, predicted "
        f"{result.prediction} ({result.confidence:.1%} confidence) — {status}"
    )
    console.print(
        "removal effect = change of this test point's loss if the training point were removed and "
        "the model retrained (first order, −up_loss/n); > 0: the point helped, < 0: it hurt."
    )
    for title, rows in (("most helpful", result.helpful), ("most harmful", result.harmful)):
        table = Table(title=f"{title} training points")
        for col in ("train index", "label", "model predicts", "removal effect", "up_loss"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(str(r.index), str(r.label), str(r.prediction), f"{r.removal_effect:+.3e}", f"{r.up_loss:+.3e}")
        console.print(table)
    console.print(f"settings: {result.settings}")
    console.print(f"solver diagnostics: {result.diagnostics}")


SIGN_CONVENTION = (
    "removal_effect = predicted change of the test loss if the training point were removed and the model "
    "retrained (first order, -up_loss/n), in loss units; > 0 = the point helped, < 0 = it hurt. "
    "up_loss = I_up,loss = d(test loss)/d(weight of the training point); > 0 = harmful."
)


def _plain(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return None  # NaN is not JSON
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def explanation_dict(result: Explanation) -> dict[str, Any]:
    """An explanation as plain JSON-ready data, with its sign convention."""
    from dataclasses import asdict

    d = _plain(asdict(result))
    d["sign_convention"] = SIGN_CONVENTION
    return d


def write_outputs(folder, explanations: Sequence[Explanation], study: "Study", report=None):
    """Write ``explanations.json``, ``influence.csv`` (one row per listed training point) and
    ``self_influence.csv`` (every training point, highest score first) into ``folder``."""
    import csv
    import json
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "sign_convention": SIGN_CONVENTION,
        "settings": _plain(study.settings | (explanations[0].settings if explanations else {})),
        "diagnostics": _plain(dict(study.influence.curvature.diagnostics)),
        "test_points": [explanation_dict(e) for e in explanations],
    }
    if report is not None and report.validation is not None:
        v = report.validation
        doc["validation"] = _plain({k: v[k] for k in ("test_index", "k", "pearson", "spearman", "rows")})
    (out / "explanations.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    with open(out / "influence.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["test_index", "test_label", "test_prediction", "kind", "rank", "train_index",
                    "removal_effect", "up_loss", "train_label", "train_prediction"])
        for e in explanations:
            for kind, rows in (("helpful", e.helpful), ("harmful", e.harmful)):
                for rank, r in enumerate(rows, 1):
                    w.writerow([e.test_index, e.label, e.prediction, kind, rank, r.index,
                                f"{r.removal_effect:.10g}", f"{r.up_loss:.10g}", r.label, r.prediction])
    ranking = self_influence_ranking(study.influence, study.objective.n)
    with open(out / "self_influence.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "train_index", "self_influence_score", "train_loss", "label", "prediction"])
        for rank, s in enumerate(ranking, 1):
            w.writerow([rank, s.index, f"{s.score:.10g}", f"{s.train_loss:.10g}", s.label, s.prediction])
    return out
