r"""Synthetic populations built in code (nothing is downloaded; every parameter is kept for reruns).

* ``make_readmission``: a hospital-readmission population missing most non-readmitted children, the
  shape of Koh & Liang's §5.3 domain-mismatch case (127 features, 3 of 4 training children readmitted).
* ``make_spam_corpus``: a two-class bag-of-words corpus shaped like Enron1 spam (paper §5.4).
* ``make_token_sequences``: token sequences whose class is the marker bigram they contain (for
  ``zoo.transformer_classifier``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from whybox.zoo.data import Split


@dataclass
class ReadmissionConfig:
    """Parameters of the synthetic readmission population (all visible, for reruns)."""

    seed: int = field(default=0, metadata={"help": "Seed of the generated population."})
    n_train: int = field(default=20_000, metadata={"help": "Training patients before the children are removed."})
    n_test: int = field(default=4_000, metadata={"help": "Test adults."})
    n_children_train: int = field(default=24, metadata={"help": "Children (age < 10) in the training population."})
    n_children_test: int = field(default=40, metadata={"help": "Children in the test set."})
    child_readmit_rate: float = field(default=0.125, metadata={"help": "Children's readmission rate (paper: 3 of 24)."})
    children_removed: int = field(default=20, metadata={"help": "Non-readmitted training children removed (paper: 20)."})
    n_diagnoses: int = field(default=30, metadata={"help": "Binary diagnosis-group flags."})
    n_medications: int = field(default=16, metadata={"help": "Binary medication flags."})
    n_labs: int = field(default=20, metadata={"help": "Continuous lab values."})
    n_hospitals: int = field(default=12, metadata={"help": "One-hot admitting-hospital groups."})
    signal: float = field(default=1.5, metadata={"help": "Std of the true adult coefficients."})
    categorical_signal: float = field(default=0.3, metadata={"help": "Scale of the true coefficients of one-hot categories (race, admission, ...)."})
    child_comorbidity: float = field(default=0.02, metadata={"help": "Children's diagnosis/medication prevalence, relative to adults'."})
    child_spread: float = field(default=0.05, metadata={"help": "Children's count/lab features ~ N(0, child_spread²) (adults: N(0, 1))."})
    child_typical: float = field(default=0.95, metadata={"help": "Probability that a child has its group's pediatric category (race excepted)."})
    adult_readmit_rate: float = field(default=0.5, metadata={"help": "Adults' readmission rate (balanced, as in the paper's data)."})

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


def make_readmission(config: ReadmissionConfig | None = None) -> Readmission:
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


def make_spam_corpus(
    n_train: int = 2000,
    n_test: int = 1000,
    vocab: int = 2000,
    doc_length: float = 60.0,
    spam_rate: float = 0.3,
    separation: float = 0.5,
    seed: int = 0,
) -> Split:
    """A synthetic two-class bag-of-words corpus shaped like Enron1 spam (no download).

    Words follow a shared Zipf background; each class tilts it by exp(sᶜ_w) with sᶜ_w ~
    N(0, ``separation``²) drawn independently per class and word, so every word is weak evidence
    and the signal is spread over thousands of sparse features. Document lengths ~ 1 + Poisson.
    Features are log(1 + count) (about 97 % zeros at the defaults); label 1 = spam.
    """
    for name, v in (("n_train", n_train), ("n_test", n_test), ("vocab", vocab)):
        if v < 2:
            raise ValueError(f"{name} must be >= 2, got {v}")
    if not 0 < spam_rate < 1:
        raise ValueError(f"spam_rate must be in (0, 1), got {spam_rate}")
    rng = np.random.default_rng(seed)
    background = 1.0 / np.arange(1, vocab + 1) ** 1.0
    rng.shuffle(background)
    probs = []
    for _ in range(2):
        w = background * np.exp(rng.normal(0.0, separation, vocab))
        probs.append(w / w.sum())
    n = n_train + n_test
    y = (rng.random(n) < spam_rate).astype(np.int64)
    lengths = 1 + rng.poisson(doc_length, n)
    counts = np.stack([rng.multinomial(lengths[i], probs[y[i]]) for i in range(n)])
    X = torch.as_tensor(np.log1p(counts))
    return Split(
        name="spam", X_train=X[:n_train], y_train=torch.as_tensor(y[:n_train]), X_test=X[n_train:],
        y_test=torch.as_tensor(y[n_train:]), n_classes=2,
        feature_names=[f"word_{w}" for w in range(vocab)], class_names=["ham", "spam"],
    )


def make_token_sequences(
    n_train: int = 10_000,
    n_test: int = 1000,
    vocab: int = 1000,
    length: int = 32,
    n_classes: int = 4,
    bigrams_per_class: int = 3,
    distractors: int = 2,
    seed: int = 0,
) -> Split:
    """Synthetic token-sequence classification (no download) that a small transformer learns.

    Each class owns ``bigrams_per_class`` marker bigrams (u, v) over reserved marker tokens; the
    other ``vocab`` tokens are Zipf-distributed noise. A sequence of class c is noise with one of
    c's bigrams planted at a random position, plus ``distractors`` single marker tokens of other
    classes' bigrams (never next to their partner): the class is the one whose two tokens occur
    *next to each other*, so single-token counts alone are ambiguous. Inputs are int64 token ids
    ``[n, length]``; labels are noise-free.
    """
    n_markers = 2 * n_classes * bigrams_per_class
    if n_classes < 2 or bigrams_per_class < 1:
        raise ValueError("need n_classes >= 2 and bigrams_per_class >= 1")
    if vocab < n_markers + 2:
        raise ValueError(f"vocab must exceed the {n_markers} marker tokens, got {vocab}")
    if length < 2 + 2 * distractors:
        raise ValueError(f"length must be >= {2 + 2 * distractors} for a bigram and {distractors} distractors")
    if min(n_train, n_test) < 1:
        raise ValueError("n_train and n_test must be >= 1")
    rng = np.random.default_rng(seed)
    markers = rng.permutation(vocab)[:n_markers].reshape(n_classes, bigrams_per_class, 2)
    noise_tokens = np.setdiff1d(np.arange(vocab), markers.ravel())
    zipf = 1.0 / np.arange(1, len(noise_tokens) + 1)
    n = n_train + n_test
    y = rng.integers(0, n_classes, n)
    X = rng.choice(noise_tokens, size=(n, length), p=zipf / zipf.sum())
    k = 1 + distractors  # items: one bigram (2 positions) and the distractors (1 each), a gap between items
    slack = length - (2 + distractors) - (k - 1)
    for i in range(n):
        widths = np.ones(k, dtype=np.int64)
        bigram = rng.integers(k)
        widths[bigram] = 2
        offsets = np.sort(rng.choice(slack + k, k, replace=False)) - np.arange(k)
        starts = offsets + np.concatenate([[0], np.cumsum(widths[:-1] + 1)])
        for j, start in enumerate(starts):
            if j == bigram:
                X[i, start : start + 2] = markers[y[i], rng.integers(bigrams_per_class)]
            else:
                other = (y[i] + rng.integers(1, n_classes)) % n_classes
                X[i, start] = markers[other, rng.integers(bigrams_per_class), rng.integers(2)]
    X_t, y_t = torch.as_tensor(X, dtype=torch.int64), torch.as_tensor(y, dtype=torch.int64)
    return Split(
        name="tokens", X_train=X_t[:n_train], y_train=y_t[:n_train], X_test=X_t[n_train:], y_test=y_t[n_train:],
        n_classes=n_classes, feature_names=[f"position_{t}" for t in range(length)],
        class_names=[f"class_{c}" for c in range(n_classes)],
    )
