r"""Debugging domain mismatch (Koh & Liang 2017, §5.3): a training set missing part of the test population.

The paper's case: hospital readmission, 20K diabetic patients, 127 features; 3 of the 24 children
were readmitted; removing 20 non-readmitted children from training leaves 3 of 4 readmitted, so the
model learns "child ⇒ readmitted" and gets test children wrong. Influence on one wrong test child
singles out the 4 training children (30–40× the next point), while the coefficients alone do not
single out the child indicator (14/127 features had a larger coefficient), and I_pert,loss over
the 4 children names the child indicator.

``make_readmission`` generates such a data set in code (every parameter is printed and saved, so a
run can be repeated); ``debug_mismatch`` trains L2 logistic regression, picks a wrong test child
and returns the diagnosis. Any ``Attributor`` factory can rank the training points; I_pert,loss
needs an ``InfluenceFunction`` (one is built when the attributor has no ``pert_loss``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from whybox import zoo
from whybox.attribution import Attributor
from whybox.curvature import Exact
from whybox.influence import InfluenceFunction
from whybox.objective import Objective

AttributorFactory = Callable[[Objective], Attributor]


@dataclass
class ReadmissionConfig:
    """Parameters of the synthetic readmission population (all visible, for reruns)."""

    seed: int = 0
    n_train: int = 20_000  # training patients before the children are removed
    n_test: int = 4_000  # test adults
    n_children_train: int = 24  # children (age < 10) in the training population
    n_children_test: int = 40
    child_readmit_rate: float = 0.125  # paper: 3 of 24
    children_removed: int = 20  # non-readmitted children dropped from training (paper: 20)
    n_diagnoses: int = 30  # binary diagnosis-group flags
    n_medications: int = 16  # binary medication flags
    n_labs: int = 20  # continuous lab values
    n_hospitals: int = 12  # one-hot admitting-hospital group
    signal: float = 1.5  # std of the true adult coefficients
    categorical_signal: float = 0.3  # scale of the true coefficients of one-hot categories (race, admission, ...)
    child_comorbidity: float = 0.02  # children's diagnosis/medication prevalence, relative to adults'
    child_spread: float = 0.05  # children's count/lab features ~ N(0, child_spread²) (adults: N(0, 1))
    child_typical: float = 0.95  # probability that a child has its group's pediatric category (race excepted)
    adult_readmit_rate: float = 0.5  # balanced, as in the paper's data

    def __post_init__(self) -> None:
        if self.children_removed > self.n_children_train:
            raise ValueError("children_removed cannot exceed n_children_train")
        if not 0 <= self.child_readmit_rate <= 1 or not 0 < self.adult_readmit_rate < 1:
            raise ValueError("readmission rates must lie in [0, 1]")
        if min(self.n_train, self.n_test, self.n_children_train, self.n_children_test) < 1:
            raise ValueError("sizes must be >= 1")
        n_readmitted = round(self.child_readmit_rate * self.n_children_train)
        if self.children_removed > self.n_children_train - n_readmitted:
            raise ValueError(
                f"only {self.n_children_train - n_readmitted} training children are not readmitted; "
                f"cannot remove {self.children_removed}"
            )


AGE_BINS = ["age_child(<10)"] + [f"age_{10 * i}-{10 * i + 10}" for i in range(1, 10)]
CATEGORICAL = {
    "race": ["Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other"],
    "admission_type": ["emergency", "urgent", "elective", "newborn", "trauma", "unknown"],
    "discharge": ["home", "home_health", "transfer_SNF", "transfer_hospital", "rehab", "hospice", "AMA", "other"],
    "admission_source": ["referral", "ER", "transfer", "clinic", "court", "other"],
    "payer": ["medicare", "medicaid", "private", "self_pay", "other"],
}
COUNTS = ["time_in_hospital", "num_lab_procedures", "num_procedures", "num_medications",
          "number_outpatient", "number_emergency", "number_inpatient", "number_diagnoses"]


def feature_names(cfg: ReadmissionConfig) -> list[str]:
    """Names of the generated features, grouped demographic / administrative / medical."""
    names = list(AGE_BINS) + ["gender_male"]
    names += [f"race_{c}" for c in CATEGORICAL["race"]]
    names += COUNTS
    for group in ("admission_type", "discharge", "admission_source", "payer"):
        names += [f"{group}_{c}" for c in CATEGORICAL[group]]
    names += [f"hospital_{i}" for i in range(cfg.n_hospitals)]
    names += [f"diag_group_{i}" for i in range(cfg.n_diagnoses)]
    names += [f"med_{i}" for i in range(cfg.n_medications)]
    names += [f"lab_{i}" for i in range(cfg.n_labs)]
    return names


def _patients(rng: np.random.Generator, cfg: ReadmissionConfig, n: int, child: bool, probs: dict) -> np.ndarray:
    """Feature rows for n patients (children: the child age bin; adults: another age bin).

    Children are more alike than adults: few diagnoses and medications (``child_comorbidity``),
    counts and labs near the mean (``child_spread``), and mostly one pediatric category per
    administrative group (``child_typical``).
    """
    def categories(group: str, k: int) -> np.ndarray:
        p = probs[group]
        if child:
            p = (1 - cfg.child_typical) * p + cfg.child_typical * np.eye(k)[probs[group + "_child"]]
        return np.eye(k)[rng.choice(k, n, p=p)]

    cols = []
    age = np.zeros((n, len(AGE_BINS)))
    age[np.arange(n), 0 if child else rng.integers(1, len(AGE_BINS), n)] = 1
    cols += [age, (rng.random((n, 1)) < 0.47).astype(float)]
    cols.append(np.eye(len(CATEGORICAL["race"]))[rng.choice(len(CATEGORICAL["race"]), n, p=probs["race"])])
    spread = cfg.child_spread if child else 1.0
    cols.append(spread * rng.standard_normal((n, len(COUNTS))))  # standardised counts
    for group in ("admission_type", "discharge", "admission_source", "payer"):
        cols.append(categories(group, len(CATEGORICAL[group])))
    cols.append(categories("hospital", cfg.n_hospitals))
    rate = cfg.child_comorbidity if child else 1.0
    cols.append((rng.random((n, cfg.n_diagnoses)) < rate * probs["diag"]).astype(float))
    cols.append((rng.random((n, cfg.n_medications)) < rate * probs["med"]).astype(float))
    cols.append(spread * rng.standard_normal((n, cfg.n_labs)))
    return np.concatenate(cols, axis=1)


@dataclass
class Readmission:
    """The generated data: full training population, the mismatched training set and the test set."""

    config: ReadmissionConfig
    feature_names: list[str]
    X_full: np.ndarray  # training population with all children
    y_full: np.ndarray
    X_train: np.ndarray  # after removing ``children_removed`` non-readmitted children
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    true_coef: np.ndarray

    @property
    def child_column(self) -> int:
        return 0


def make_readmission(config: Optional[ReadmissionConfig] = None) -> Readmission:
    """Generate the readmission population and remove most non-readmitted training children.

    Adults are readmitted with probability σ(b + xᵀw), w ~ N(0, signal²) on every feature except
    the age bins, b set for ``adult_readmit_rate``; exactly round(rate·count) children (whose other
    features are drawn like adults') are readmitted.
    """
    cfg = config or ReadmissionConfig()
    rng = np.random.default_rng(cfg.seed)
    dirichlet = lambda k: rng.dirichlet(np.full(k, 2.0))  # noqa: E731
    probs = {g: dirichlet(len(c)) for g, c in CATEGORICAL.items()}
    probs["hospital"] = dirichlet(cfg.n_hospitals)
    for g in ("admission_type", "discharge", "admission_source", "payer", "hospital"):
        probs[g + "_child"] = int(rng.integers(len(probs[g])))
    probs["diag"] = rng.uniform(0.02, 0.4, cfg.n_diagnoses)
    probs["med"] = rng.uniform(0.02, 0.4, cfg.n_medications)
    names = feature_names(cfg)
    w = rng.normal(0.0, cfg.signal, len(names)) / np.sqrt(len(names) / 25)
    w[: len(AGE_BINS)] = 0.0
    onehot = np.array([any(n.startswith(g + "_") for g in (*CATEGORICAL, "hospital")) for n in names])
    w[onehot] *= cfg.categorical_signal

    def adults(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = _patients(rng, cfg, n, False, probs)
        logit = X @ w
        b = np.log(cfg.adult_readmit_rate / (1 - cfg.adult_readmit_rate)) - np.median(logit)
        return X, (rng.random(n) < 1 / (1 + np.exp(-(logit + b)))).astype(np.int64)

    def children(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = _patients(rng, cfg, n, True, probs)
        y = np.zeros(n, np.int64)
        y[rng.choice(n, round(cfg.child_readmit_rate * n), replace=False)] = 1
        return X, y

    Xa, ya = adults(cfg.n_train - cfg.n_children_train)
    Xc, yc = children(cfg.n_children_train)
    Xt, yt = adults(cfg.n_test)
    Xtc, ytc = children(cfg.n_children_test)
    X_full, y_full = np.concatenate([Xa, Xc]), np.concatenate([ya, yc])
    perm = rng.permutation(len(y_full))
    X_full, y_full = X_full[perm], y_full[perm]
    kids_not = np.flatnonzero((X_full[:, 0] == 1) & (y_full == 0))
    drop = rng.choice(kids_not, cfg.children_removed, replace=False)
    keep = np.setdiff1d(np.arange(len(y_full)), drop)
    return Readmission(cfg, names, X_full, y_full, X_full[keep], y_full[keep],
                       np.concatenate([Xt, Xtc]), np.concatenate([yt, ytc]), w)


@dataclass
class MismatchDiagnosis:
    """What ``debug_mismatch`` found. Influence is −I_up,loss(zᵢ, z_test)·(1/n) via the attributor's
    ``scores`` (positive = helpful to the test point, i.e. removing it raises the test loss)."""

    config: dict[str, Any]
    weight_decay: float
    test_index: int
    test_label: int
    test_prob_readmit: float
    accuracy_adults: float
    accuracy_children: float
    accuracy_children_no_mismatch: float  # same model trained on the full population
    train_children: list[int]
    train_children_labels: list[int]
    top_influence: list[dict[str, Any]]  # top training points by |influence|
    children_ranks: list[int]  # 1-based ranks of the training children by |influence|
    factor: float  # smallest |influence| among training children / largest among the others
    coef_child: float
    coef_rank: int  # 1-based rank of |θ_child| among the feature coefficients
    coef_top: list[tuple[str, float]]
    pert_top: list[tuple[str, float]]  # features by mean |I_pert,loss·x| over the training children
    pert_child_rank: int  # 1-based rank of the child indicator by mean |I_pert,loss·x| (contribution)
    pert_child_rank_raw: int  # ... by mean |I_pert,loss| alone (sensitivity, ignores that x_j = 0)
    grad_norm: float
    attributor: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A one-screen diagnosis."""
        c = self.config
        k = len(self.train_children)
        lines = [
            f"Domain mismatch: {c['n_train']} training patients, {len(c['feature_names'])} features; "
            f"{c['children_removed']} of {c['n_children_train']} training children (non-readmitted) removed "
            f"-> {k} left, labels {self.train_children_labels} (1 = readmitted). seed={c['seed']}",
            f"L2 logistic regression (weight decay {self.weight_decay:g}, ‖∇R‖ = {self.grad_norm:.1e}): "
            f"test accuracy adults {self.accuracy_adults:.3f}, children {self.accuracy_children:.3f} "
            f"(trained with all children: {self.accuracy_children_no_mismatch:.3f})",
            f"Test child #{self.test_index}: label {self.test_label}, P(readmitted) = {self.test_prob_readmit:.3f} -> wrong.",
            f"1. Influence ({self.attributor}): the {k} training children rank {self.children_ranks} by |influence|; "
            f"the weakest of them is {self.factor:.1f}x the strongest other training point.",
        ]
        for row in self.top_influence[: k + 2]:
            lines.append(f"     #{row['index']:>6}  child={row['child']}  label={row['label']}  "
                         f"influence={row['influence']:+.3e}")
        lines.append(f"2. Coefficients alone: |θ_child| = {abs(self.coef_child):.3f} ranks {self.coef_rank} of "
                     f"{len(c['feature_names'])} (top: " + ", ".join(f"{n} {v:+.2f}" for n, v in self.coef_top[:4]) + ")")
        lines.append(f"3. I_pert,loss·x over the {k} training children (each feature's contribution to their influence): "
                     f"child indicator ranks {self.pert_child_rank} (by |I_pert,loss| alone: {self.pert_child_rank_raw}); "
                     "top: " + ", ".join(f"{n} ({v:.2g})" for n, v in self.pert_top[:4]))
        verdict = ("-> the training set lacks non-readmitted children: the model learned 'child => readmitted' "
                   "from a handful of points" if self.pert_child_rank == 1 and self.children_ranks == list(range(1, k + 1))
                   else "-> see the ranks above")
        lines.append(verdict)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fit_lr(X: np.ndarray, y: np.ndarray, weight_decay: float) -> tuple[Objective, float]:
    """L2 logistic regression to ‖∇R‖ ≤ 1e-8: scikit-learn's L-BFGS (C = 1/(w·n), bias penalised
    like the weights via a constant column) for a warm start, then whybox's full-batch L-BFGS."""
    from sklearn.linear_model import LogisticRegression

    n, d = X.shape
    model = zoo.logistic_regression(d, 2)
    if weight_decay > 0:
        ones = np.ones((n, 1))
        sk = LogisticRegression(C=1.0 / (weight_decay * n), fit_intercept=False, max_iter=2000, tol=1e-8)
        sk.fit(np.hstack([X, ones]), y)
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(sk.coef_[:, :d]))
            model.bias.copy_(torch.as_tensor(sk.coef_[:, d]))
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        obj, res = zoo.train(model, "logistic", t(X), t(y), weight_decay, tol=1e-8)
    return obj, res.grad_norm


def _prob(obj: Objective, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(obj.outputs(torch.as_tensor(X, dtype=obj.dtype)).reshape(-1)).numpy()


def debug_mismatch(
    data: Optional[Readmission] = None,
    weight_decay: float = 1e-5,
    attributor: Optional[AttributorFactory] = None,
    test_index: Optional[int] = None,
    top: int = 10,
    seed: int = 0,
) -> MismatchDiagnosis:
    """Train L2 logistic regression on the mismatched training set, pick a wrongly predicted test
    child (``test_index`` into ``data.X_test``, default: a random wrong one) and diagnose it.

    ``weight_decay`` is w in mean loss + (w/2)‖θ‖²; it must be small enough (≲ 1/n) for 4 children to
    move the child coefficient, or the mismatch shows no symptom.
    """
    data = data or make_readmission()
    factory = attributor or (lambda obj: InfluenceFunction(obj, Exact()).fit())
    obj, gnorm = _fit_lr(data.X_train, data.y_train, weight_decay)
    full, _ = _fit_lr(data.X_full, data.y_full, weight_decay)
    c = data.child_column
    kids_test = data.X_test[:, c] == 1
    pred = (_prob(obj, data.X_test) > 0.5).astype(int)
    wrong = np.flatnonzero(kids_test & (pred != data.y_test))
    acc_children = float((pred[kids_test] == data.y_test[kids_test]).mean())
    acc_full = float((((_prob(full, data.X_test) > 0.5).astype(int) == data.y_test)[kids_test]).mean())
    notes: list[str] = []
    if test_index is None:
        if len(wrong) == 0:
            raise ValueError("the model gets every test child right: no symptom to debug (lower weight_decay, or "
                             "raise children_removed)")
        # the symptom of the mismatch: non-readmitted children predicted readmitted; prefer those
        symptomatic = wrong[data.y_test[wrong] == 0]
        test_index = int(np.random.default_rng(seed).choice(symptomatic if len(symptomatic) else wrong))
    if not 0 <= test_index < len(data.y_test):
        raise ValueError(f"test_index must be in [0, {len(data.y_test)}), got {test_index}")
    if test_index not in set(wrong.tolist()):
        notes.append(f"test point {test_index} is not a wrongly predicted child")
    xt = torch.as_tensor(data.X_test[test_index : test_index + 1])
    yt = torch.as_tensor(data.y_test[test_index : test_index + 1])
    att = factory(obj)
    infl = att.scores(xt, yt)[0].detach().numpy()
    order = np.argsort(-np.abs(infl), kind="stable")
    rank = np.empty(len(order), int)
    rank[order] = np.arange(1, len(order) + 1)
    kids = np.flatnonzero(data.X_train[:, c] == 1)
    others = np.setdiff1d(np.arange(len(infl)), kids)
    factor = float(np.abs(infl[kids]).min() / np.abs(infl[others]).max())
    top_rows = [dict(index=int(i), child=int(data.X_train[i, c]), label=int(data.y_train[i]), influence=float(infl[i]))
                for i in order[:top]]
    d = data.X_train.shape[1]
    coef = obj.theta[:d].numpy()  # nn.Linear(d, 1): weight first, then bias
    coef_order = np.argsort(-np.abs(coef), kind="stable")
    coef_rank = int(np.flatnonzero(coef_order == c)[0]) + 1
    inf_fn = att if hasattr(att, "pert_loss") else InfluenceFunction(obj, Exact()).fit()
    if inf_fn is not att:
        notes.append("the attributor has no pert_loss: I_pert,loss used InfluenceFunction(Exact())")
    raw = inf_fn.pert_loss(xt, yt, kids.tolist())[0].numpy()  # [k, d]
    # contribution of feature j to child i's influence: I_pert,loss[j]·x_ij (gradient × input: the
    # first-order change of the influence if the feature were set to 0)
    pert = np.abs(raw * data.X_train[kids]).mean(0)
    pert_order = np.argsort(-pert, kind="stable")
    raw_order = np.argsort(-np.abs(raw).mean(0), kind="stable")
    names = data.feature_names
    return MismatchDiagnosis(
        config={**asdict(data.config), "feature_names": names}, weight_decay=weight_decay, test_index=test_index,
        test_label=int(yt.item()), test_prob_readmit=float(_prob(obj, xt.numpy())[0]),
        accuracy_adults=float((pred[~kids_test] == data.y_test[~kids_test]).mean()), accuracy_children=acc_children,
        accuracy_children_no_mismatch=acc_full, train_children=kids.tolist(),
        train_children_labels=data.y_train[kids].tolist(), top_influence=top_rows,
        children_ranks=sorted(rank[kids].tolist()), factor=factor, coef_child=float(coef[c]), coef_rank=coef_rank,
        coef_top=[(names[i], float(coef[i])) for i in coef_order[:top]],
        pert_top=[(names[i], float(pert[i])) for i in pert_order[:top]],
        pert_child_rank=int(np.flatnonzero(pert_order == c)[0]) + 1,
        pert_child_rank_raw=int(np.flatnonzero(raw_order == c)[0]) + 1, grad_norm=gnorm,
        attributor=getattr(factory, "description", "InfluenceFunction(Exact)" if attributor is None else type(att).__name__),
        notes=notes,
    )


def plot_mismatch(diag: MismatchDiagnosis, path: str | Path) -> Path:
    """Bar charts: top training points by |influence| (children highlighted), and features by
    mean |I_pert,loss| over the training children."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = diag.top_influence
    vals = [abs(r["influence"]) for r in rows]
    colors = ["tab:red" if r["child"] else "tab:gray" for r in rows]
    axes[0].bar(range(len(rows)), vals, color=colors)
    axes[0].set_yscale("log")
    axes[0].set_xticks(range(len(rows)), [f"#{r['index']}\n{'child' if r['child'] else ''}" for r in rows], fontsize=6)
    axes[0].set(ylabel="|influence| on the test child", title=f"children (red) are {diag.factor:.0f}x the next point")
    names = [n for n, _ in diag.pert_top]
    axes[1].barh(range(len(names))[::-1], [v for _, v in diag.pert_top],
                 color=["tab:red" if n.startswith("age_child") else "tab:gray" for n in names])
    axes[1].set_yticks(range(len(names))[::-1], names, fontsize=7)
    axes[1].set(xlabel="mean |I_pert,loss · x| over the training children", title="which feature drives it")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def save_mismatch(diag: MismatchDiagnosis, out_dir: str | Path) -> dict[str, Path]:
    """Write ``mismatch.json`` (diagnosis + generator parameters), ``mismatch.png`` and ``mismatch.txt``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "mismatch.json", "png": out / "mismatch.png", "txt": out / "mismatch.txt"}
    paths["json"].write_text(json.dumps(diag.to_dict(), indent=1))
    paths["txt"].write_text(diag.summary() + "\n")
    plot_mismatch(diag, paths["png"])
    return paths
