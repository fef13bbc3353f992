"""Reference model setups for the paper's §5.1/§5.2 settings, scaled down to the embedded digits or MNIST.

* ``frozen_network``: the stand-in for "Inception v3 with all but the top layer frozen": a small CNN
  trained once on *other* digit classes (so it has never seen the task's images), frozen, with a
  logistic top layer trained on the task. Only the top layer is in θ, but the model takes pixels, so
  ``pert_loss`` differentiates through the frozen extractor down to the pixels.
* ``rbf_svm``: an RBF-kernel SVM through scikit-learn's ``RBFSampler`` (random Fourier features,
  k(x, x') = exp(−γ‖x − x'‖²) ≈ φ(x)·φ(x')), with a linear smooth-hinge top layer; influence is
  computed on the linear layer over the fixed feature map φ.
* ``pixel_logistic``: plain L2 logistic regression on the pixels.

Every builder returns ``(objective, info)`` with the model trained to a minimum of its top layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from whybox.losses import SmoothHinge
from whybox.objective import Objective
from whybox.zoo.data import Split, load
from whybox.zoo.models import cnn, logistic_regression, mnist_cnn
from whybox.zoo.train import train


class Affine(nn.Module):
    """A fixed elementwise map x ↦ x·scale + shift (buffers, never trained)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class RandomFourierFeatures(nn.Module):
    """φ(x) = √(2/D)·cos(xW + b) with W, b from a fitted ``sklearn.kernel_approximation.RBFSampler``."""

    def __init__(self, sampler: Any, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(sampler.random_weights_, dtype=dtype))
        self.register_buffer("offset", torch.as_tensor(sampler.random_offset_, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.reshape(len(x), -1) @ self.weights + self.offset
        return (2.0 / self.weights.shape[1]) ** 0.5 * torch.cos(z)


class NystroemFeatures(nn.Module):
    """φ(x) = k(x, C)·N with the centres C and normaliser N = K(C, C)^(-1/2) of a fitted
    ``sklearn.kernel_approximation.Nystroem`` (RBF kernel). With every training point as a centre,
    φ(x)·φ(x') equals the exact kernel whenever x' is a training point, and by the representer theorem
    the SVM's solution lies in their span: this is the kernel's exact feature map for the SVM."""

    def __init__(self, nystroem: Any, gamma: float, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("centres", torch.as_tensor(nystroem.components_, dtype=dtype))
        self.register_buffer("norm", torch.as_tensor(nystroem.normalization_.T, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1)
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ self.centres.T + (self.centres * self.centres).sum(1)
        return torch.exp(-self.gamma * d2.clamp_min(0)) @ self.norm


def _check_binary(split: Split) -> None:
    if split.n_classes != 2:
        raise ValueError(f"these use cases need a binary task; {split.name} has {split.n_classes} classes "
                         "(load it with zoo.load('digits', classes=(a, b)) or zoo.load('mnist', classes=(a, b)))")


def pretrained_extractor(
    split: Split, pair: Sequence[int], seed: int = 0, max_iter: int = 100, weight_decay: float = 1e-3,
    dataset: str = "digits",
) -> tuple[nn.Module, float]:
    """A small tanh CNN trained on the digit classes *not* in ``pair`` of ``dataset`` (``digits``:
    ``zoo.cnn``, 8×8; ``mnist``: ``zoo.mnist_cnn``, 28×28, on that set's training split, so it never saw
    the task's images), cut before its top layer and frozen. It takes ``split``'s flat model inputs.
    Returns ``(extractor, pretraining test accuracy)``."""
    if dataset not in ("digits", "mnist"):
        raise ValueError(f"dataset must be 'digits' or 'mnist', got {dataset!r}")
    others = [c for c in range(10) if c not in set(pair)]
    pre = load(dataset, classes=others, seed=seed, images=True)
    net = (cnn if dataset == "digits" else mnist_cnn)(len(others), seed=seed)
    with warnings.catch_warnings():  # a feature extractor need not be at a minimum: exactly max_iter iterations
        warnings.simplefilter("ignore", RuntimeWarning)
        obj, _ = train(net, "cross_entropy", pre.X_train, pre.y_train, weight_decay=weight_decay, tol=1e-7,
                       max_iter=max_iter)
    acc = float((obj.predict(pre.X_test)[0] == pre.y_test).double().mean())
    # split's standardised pixels -> raw -> the pretraining standardisation, then the conv layers
    to_raw = (torch.as_tensor(split.std), torch.as_tensor(split.mean))
    scale = to_raw[0] / torch.as_tensor(pre.std)
    shift = (to_raw[1] - torch.as_tensor(pre.mean)) / torch.as_tensor(pre.std)
    extractor = nn.Sequential(Affine(scale, shift), nn.Unflatten(1, tuple(pre.image_shape)), *list(net.children())[:-1])
    for prm in extractor.parameters():
        prm.requires_grad_(False)
    return extractor.eval(), acc


def frozen_network(split: Split, extractor: nn.Module, weight_decay: float = 1e-3) -> tuple[Objective, dict]:
    """Frozen extractor + logistic top layer (θ = the top layer only), trained on ``split``."""
    _check_binary(split)
    with torch.no_grad():
        width = extractor(split.X_train[:1]).shape[1]
    model = nn.Sequential(extractor, nn.Linear(width, 1, dtype=split.X_train.dtype))
    obj, _ = train(model, "logistic", split.X_train, split.y_train, weight_decay=weight_decay, params="1.")
    return obj, {"model": "frozen CNN features + logistic top layer", "p": obj.p, "weight_decay": weight_decay}


def pixel_logistic(split: Split, weight_decay: float = 1e-2) -> tuple[Objective, dict]:
    """L2 logistic regression on the (standardised) pixels."""
    _check_binary(split)
    model = logistic_regression(split.n_features, 2)
    obj, _ = train(model, "logistic", split.X_train, split.y_train, weight_decay=weight_decay)
    return obj, {"model": "logistic regression on pixels", "p": obj.p, "weight_decay": weight_decay}


def rbf_svm(
    split: Split, gamma: float | None = None, features: str = "exact", n_components: int = 500,
    temperature: float = 1.0, weight_decay: float = 1e-3, seed: int = 0,
) -> tuple[Objective, dict]:
    """RBF-kernel SVM k(x, x') = exp(−γ‖x − x'‖²): a fixed feature map φ and a linear top layer trained
    on SmoothHinge(temperature) (θ = the top layer), so influence is computed in φ's space.

    Args:
        gamma: defaults to scikit-learn's ``"scale"`` rule, 1 / (d · Var(X)).
        features: ``"exact"`` — the kernel's own feature map on the span of the training points
            (``Nystroem`` with every training point as a centre; p = n + 1); ``"rff"`` — random Fourier
            features (``RBFSampler``, ``n_components`` of them), an approximation whose noise
            (~1/√n_components) blurs the kernel's locality.
        temperature: t of SmoothHinge; small t is close to the hinge, but then every point beyond
            the margin (most test points) has a loss gradient of ≈ exp(−margin/t) ≈ 0.
    """
    from sklearn.kernel_approximation import Nystroem, RBFSampler

    _check_binary(split)
    X = split.X_train.reshape(len(split.X_train), -1).numpy()
    if gamma is None:
        gamma = 1.0 / (X.shape[1] * X.var())
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    dtype = split.X_train.dtype
    if features == "exact":
        phi: nn.Module = NystroemFeatures(Nystroem(gamma=gamma, n_components=len(X), random_state=seed).fit(X), gamma, dtype)
        width, what = len(X), "exact feature map"
    elif features == "rff":
        phi = RandomFourierFeatures(RBFSampler(gamma=gamma, n_components=n_components, random_state=seed).fit(X), dtype)
        width, what = n_components, f"{n_components} random Fourier features"
    else:
        raise ValueError(f"features must be 'exact' or 'rff', got {features!r}")
    model = nn.Sequential(phi, nn.Linear(width, 1, dtype=dtype))
    obj, _ = train(model, SmoothHinge(temperature), split.X_train, split.y_train, weight_decay=weight_decay,
                   params="1.")
    return obj, {"model": f"RBF SVM (γ={gamma:.3g}, {what}, SmoothHinge t={temperature})",
                 "p": obj.p, "weight_decay": weight_decay, "gamma": float(gamma)}
