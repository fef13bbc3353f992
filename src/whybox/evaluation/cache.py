"""Retraining results cached on disk, keyed by everything they depend on, so tables regenerate in
seconds and an interrupted run keeps the retrainings it finished."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from whybox.objective import Objective
from whybox.utils import digest


def problem_key(objective: Objective, *parts) -> str:
    """A short hash of the trained problem (θ̂, data, loss, weight decay) and any extra arrays/values."""
    return digest(objective.theta, objective.X, objective.y, f"{objective.weight_decay}|{objective.loss_name}",
                  *[p if torch.is_tensor(p) or isinstance(p, np.ndarray) else repr(p) for p in parts], length=20)


def cached_rows(
    folder: str | Path | None,
    name: str,
    count: int,
    width: int,
    compute: Callable[[int], np.ndarray],
    desc: str = "retraining",
    progress: bool = True,
) -> np.ndarray:
    """``[count, width]`` rows ``compute(j)``; with ``folder``, each finished row is saved at once
    (``<name>.partial.npz``) and the whole array as ``<name>.npy`` when done."""
    base = Path(folder) if folder is not None else None
    final = base / f"{name}.npy" if base else None
    partial = base / f"{name}.partial.npz" if base else None
    if final is not None and final.exists():
        return np.load(final)
    rows = np.full((count, width), np.nan)
    if partial is not None and partial.exists():
        rows = np.load(partial)["rows"]
    for j in tqdm(range(count), desc=desc, disable=not progress, leave=False):
        if np.isfinite(rows[j]).all():
            continue
        rows[j] = compute(j)
        if partial is not None:
            base.mkdir(parents=True, exist_ok=True)
            np.savez(partial, rows=rows)
    if final is not None:
        base.mkdir(parents=True, exist_ok=True)
        np.save(final, rows)
        partial.unlink(missing_ok=True)
    return rows
