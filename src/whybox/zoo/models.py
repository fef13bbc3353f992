"""Small reference models. Smooth activations (tanh), so Hessians exist everywhere.

Every model is initialised from its own ``seed`` (the global random state is left untouched), so
the same call always builds the same model: a rerun trains the same θ and a store resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def logistic_regression(n_features: int, n_classes: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """L2 logistic regression: C logits (use loss ``cross_entropy``), or one score if binary (``logistic``)."""
    out = 1 if n_classes == 2 else n_classes
    return _seeded(seed, lambda: nn.Linear(n_features, out, dtype=dtype))


def linear_svm(n_features: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A linear score w·x + b for hinge / smooth-hinge losses (labels ±1 or 0/1)."""
    return _seeded(seed, lambda: nn.Linear(n_features, 1, dtype=dtype))


def mlp(n_features: int, n_classes: int, hidden: Sequence[int] = (32,), dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A tanh multilayer perceptron (64-32-10 on digits: 2,410 parameters)."""
    return _seeded(seed, lambda: _mlp(n_features, n_classes, hidden, dtype))


def _mlp(n_features: int, n_classes: int, hidden: Sequence[int], dtype: torch.dtype) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h, dtype=dtype), nn.Tanh()]
        width = h
    layers.append(nn.Linear(width, 1 if n_classes == 2 else n_classes, dtype=dtype))
    return nn.Sequential(*layers)


def cnn(n_classes: int, in_channels: int = 1, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A small tanh CNN for 8×8 images (1,898 parameters with 10 classes)."""
    return _seeded(seed, lambda: nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, dtype=dtype), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, dtype=dtype), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, n_classes, dtype=dtype),
    ))


def mnist_cnn(n_classes: int = 10, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A small tanh CNN for 28×28 images, cheap enough to retrain on a CPU (p = 2,410 with 10 classes):
    conv 5×5 stride 2 (4 maps, 12×12) → conv 3×3 stride 2 (8 maps, 5×5) → linear."""
    return _seeded(seed, lambda: nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=2, dtype=dtype), nn.Tanh(),
        nn.Conv2d(4, 8, 3, stride=2, dtype=dtype), nn.Tanh(),
        nn.Flatten(), nn.Linear(8 * 5 * 5, n_classes, dtype=dtype),
    ))


class TransformerClassifier(nn.Module):
    """Token + position embeddings → ``nn.TransformerEncoder`` (batch first, post-norm, ReLU, no
    dropout) → mean over positions → Linear head. Input: token ids ``[n, length]`` (int64).

    Its Linear layers (each encoder layer's ``linear1``/``linear2`` and ``head``) are the ones K-FAC
    factors; the attention projections are called through ``F.multi_head_attention_forward``, not
    as modules, so they and the embeddings and LayerNorms are not (``whybox.factorable_params``).
    """

    def __init__(self, vocab: int, n_classes: int, length: int, d_model: int, heads: int, layers: int,
                 ff: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.length = length
        self.tokens = nn.Embedding(vocab, d_model, dtype=dtype)
        self.positions = nn.Embedding(length, d_model, dtype=dtype)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True, dtype=dtype)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[-1], device=x.device)
        h = self.encoder(self.tokens(x) + self.positions(pos))
        return self.head(h.mean(-2))


def transformer_classifier(
    vocab: int = 1000, n_classes: int = 4, length: int = 32, d_model: int = 128, heads: int = 4, layers: int = 4,
    ff: int = 512, dtype: torch.dtype = torch.float32, seed: int = 0,
) -> TransformerClassifier:
    """A small transformer text classifier (defaults: 925,700 parameters, 527,364 of them in Linear
    layers), for ``zoo.make_token_sequences`` data; train it with ``zoo.train_adam``."""
    return _seeded(seed, lambda: TransformerClassifier(vocab, n_classes, length, d_model, heads, layers, ff, dtype))
