"""A ground-truth test-bed for saliency: digits on clutter, and a small CNN trained on it.

No pretrained ImageNet model can be downloaded here, so we make our own "objects on clutter":
scikit-learn's 8×8 digits, upscaled, alpha-blended in a bright tint at a random position of a
larger RGB canvas of smooth coloured noise plus random clutter strokes. The object's bounding box
is known exactly, so the pointing game and mask-vs-object IoU can be scored.

    tb = make_testbed(n=200, size=32, split="test", seed=1)   # Testbed: images [n,3,32,32], labels, boxes
    model, info = load_or_train()                              # the weights shipped with whybox (no training)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, zoom
from torch import nn

__all__ = ["Testbed", "make_testbed", "testbed_cnn", "train_testbed_model", "testbed_accuracy", "load_or_train",
           "default_cache_dir", "DEFAULTS", "SHIPPED"]

_VERSION = 3


@dataclass
class Testbed:
    """Generated images with known object boxes.

    images: [n, 3, size, size] float32 in [0, 1]; labels: [n] int64 (digit 0–9);
    boxes: [n, 4] int64 (row0, col0, row1, col1), half-open, the tight box of the digit's strokes;
    masks: [n, size, size] bool, the digit's own pixels (alpha > 0.25).
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def box_masks(self) -> torch.Tensor:
        """[n, H, W] bool: True inside each image's object box."""
        n, _, h, w = self.images.shape
        rows = torch.arange(h)[None, :, None]
        cols = torch.arange(w)[None, None, :]
        b = self.boxes
        return ((rows >= b[:, 0, None, None]) & (rows < b[:, 2, None, None])
                & (cols >= b[:, 1, None, None]) & (cols < b[:, 3, None, None]))


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = d.images.astype(np.float64) / 16.0
    # Disjoint digit instances for train and test, so test objects were never seen in training.
    if split == "train":
        return imgs[:1200], d.target[:1200]
    if split == "test":
        return imgs[1200:], d.target[1200:]
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def make_testbed(n: int = 200, size: int = 32, split: str = "test", seed: int = 0,
                 object_scale: float | None = None, clutter: int = 3) -> Testbed:
    """Generate ``n`` RGB images of ``size``×``size``: one digit (``object_scale``× its 8×8 size,
    default size/16, i.e. half the canvas side) on smooth coloured noise with ``clutter`` random
    strokes. Deterministic given ``seed``."""
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed + (0 if split == "train" else 10_000))
    digits, targets = _digits(split)
    scale = size / 16.0 if object_scale is None else float(object_scale)
    side = int(round(8 * scale))
    if side > size:
        raise ValueError(f"object ({side}px) does not fit on a {size}px canvas")
    images = np.empty((n, 3, size, size), np.float32)
    labels = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.int64)
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        k = rng.integers(len(digits))
        # Background: smooth coloured noise + fine grain.
        bg = gaussian_filter(rng.normal(size=(3, size, size)), sigma=(0, size / 12, size / 12))
        bg = bg / (bg.std() + 1e-8) * 0.12 + rng.uniform(0.25, 0.5, size=(3, 1, 1))
        bg += rng.normal(scale=0.04, size=bg.shape)
        # Clutter: short thick strokes in random colours.
        for _ in range(clutter):
            p0 = rng.uniform(0, size, 2)
            ang = rng.uniform(0, np.pi)
            length = rng.uniform(size / 8, size / 3)
            p1 = p0 + length * np.array([np.sin(ang), np.cos(ang)])
            u = (p1 - p0) / length                                 # unit direction
            d = (yy - p0[0]) * u[1] - (xx - p0[1]) * u[0]          # signed distance to the line
            t = (yy - p0[0]) * u[0] + (xx - p0[1]) * u[1]          # position along it
            stroke = (np.abs(d) < size / 32 + 0.5) & (t >= 0) & (t <= length)
            colour = rng.uniform(0.0, 1.0, size=(3, 1, 1))
            bg = np.where(stroke[None], 0.4 * bg + 0.6 * colour, bg)
        # Object: the digit as alpha, in a bright tint, at a random position.
        alpha = np.clip(zoom(digits[k], side / 8, order=1), 0, 1)
        r0, c0 = rng.integers(0, size - side + 1, 2)
        tint = rng.uniform(0.8, 1.0, size=(3, 1, 1))
        a = np.zeros((size, size))
        a[r0:r0 + side, c0:c0 + side] = alpha
        img = bg * (1 - a) + tint * a
        images[i] = np.clip(img, 0, 1)
        labels[i] = targets[k]
        on = a > 0.25
        masks[i] = on
        rows, cols = np.nonzero(on)
        boxes[i] = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    return Testbed(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(boxes), torch.from_numpy(masks))


def testbed_cnn(n_classes: int = 10, width: int = 16, seed: int = 0) -> nn.Module:
    """A small fully convolutional ReLU CNN (any input size ≥ 8): four 3×3 convolutions (receptive
    field 26 px) with batch norm, then global max pooling — "is there a digit c anywhere?"."""
    torch.manual_seed(seed)
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
        nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * w, n_classes),
    )


#: The demo model's training settings. ``load_or_train()`` with these loads the weights shipped in the
#: package (``SHIPPED``), written by ``scripts/train_saliency_testbed.py`` with exactly these settings.
DEFAULTS = {"n_train": 4000, "size": 32, "epochs": 8, "width": 16, "seed": 0}
SHIPPED = Path(__file__).with_name("testbed_cnn.pt")


def train_testbed_model(n_train: int = 4000, size: int = 32, epochs: int = 8, width: int = 16,
                        seed: int = 0, batch_size: int = 64, lr: float = 3e-3, n_test: int = 1000,
                        progress: bool = True) -> tuple[nn.Module, dict]:
    """Train :func:`testbed_cnn` on a fresh training test-bed with Adam + one-cycle schedule.
    Returns the model (eval mode) and a dict with the accuracy on ``n_test`` held-out test images
    (``make_testbed(n_test, size, "test", seed + 1)``). ``progress`` shows one bar over all steps."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    train = make_testbed(n_train, size, "train", seed)
    model = testbed_cnn(width=width, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = (n_train + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with tqdm(total=epochs * per_epoch, desc="training the test-bed CNN", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            perm = torch.randperm(n_train, generator=gen)
            for s in range(0, n_train, batch_size):
                idx = perm[s:s + batch_size]
                loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}")
    model.eval()
    acc = testbed_accuracy(model, size, seed, n_test)
    info = {"test_accuracy": acc, "n_test": n_test, "n_train": n_train, "size": size, "epochs": epochs,
            "width": width, "seed": seed, "batch_size": batch_size, "lr": lr,
            "train_seconds": time.perf_counter() - t0, "version": _VERSION}
    return model, info


def testbed_accuracy(model: nn.Module, size: int = 32, seed: int = 0, n_test: int = 1000) -> float:
    """Accuracy on the held-out images ``make_testbed(n_test, size, "test", seed + 1)``."""
    test = make_testbed(n_test, size, "test", seed + 1)
    with torch.no_grad():
        return float((model(test.images).argmax(1) == test.labels).float().mean())


def default_cache_dir() -> Path:
    """``$WHYBOX_CACHE`` if set, else ``~/.cache/whybox``."""
    return Path(os.environ.get("WHYBOX_CACHE", Path.home() / ".cache" / "whybox"))


def _load(path: Path, width: int, seed: int) -> tuple[nn.Module, dict]:
    blob = torch.load(path, weights_only=True)
    model = testbed_cnn(width=width, seed=seed)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), dict(blob["info"])


def load_or_train(cache_dir: os.PathLike | None = None, retrain: bool = False, progress: bool = True,
                  **train_kwargs) -> tuple[nn.Module, dict]:
    """The demo model. With the default settings (``DEFAULTS``) it loads the weights shipped in the
    package (no training); otherwise it loads the cached state dict, or trains (with a progress bar)
    and caches it. Files are read with ``weights_only=True``. ``info["source"]`` says which:
    ``"shipped"``, ``"cache"`` or ``"trained"``."""
    kw = DEFAULTS | train_kwargs
    if kw == DEFAULTS and not retrain and SHIPPED.exists():
        model, info = _load(SHIPPED, kw["width"], kw["seed"])
        return model, info | {"cache": str(SHIPPED), "cached": True, "source": "shipped"}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"saliency_testbed_v{_VERSION}_n{kw['n_train']}_s{kw['size']}_e{kw['epochs']}_w{kw['width']}_seed{kw['seed']}.pt"
    path = cache / name
    if path.exists() and not retrain:
        model, info = _load(path, kw["width"], kw["seed"])
        return model, info | {"cache": str(path), "cached": True, "source": "cache"}
    model, info = train_testbed_model(progress=progress, **kw)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "info": info}, path)
    return model, info | {"cache": str(path), "cached": False, "source": "trained"}
