"""Small shared helpers: machine/version stamps and memory readings for benchmark tables, markdown
tables, content digests."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Sequence
from typing import Any


def versions() -> dict[str, str]:
    """Versions of the software (and the platform) that produced a result."""
    import numpy
    import scipy
    import sklearn
    import torch

    import whybox

    return {
        "whybox": whybox.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }


def machine_info() -> str:
    """One line naming the machine and library versions, printed above every benchmark table."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    v = versions()
    libs = ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "numpy", "scipy", "scikit-learn", "whybox"))
    return f"machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; {libs}"


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        return None


def reset_peak_rss() -> bool:
    """Start a new peak-memory phase: Linux resets the process's high-water mark (VmHWM) to its
    current resident memory. False where that is not possible (then ``peak_rss_mib`` is the
    process's peak since it started)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory in MiB since the process started or the last ``reset_peak_rss``."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Resident memory now, MiB (the peak so far where /proc is missing)."""
    now = _status_mib("VmRSS")
    return peak_rss_mib() if now is None else now


def markdown_table(rows: Sequence[dict[str, Any]], floatfmt: str = ".4g") -> str:
    """Render a list of dicts (same keys) as a GitHub markdown table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    fmt = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def digest(*parts: Any, length: int = 16) -> str:
    """A short SHA-256 hex digest of tensors and arrays (their bytes), strings (UTF-8) and anything
    else (its ``repr``): the one way stores, caches and solves recognise the same problem."""
    import numpy as np
    import torch

    h = hashlib.sha256()
    for part in parts:
        if torch.is_tensor(part):
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update((part if isinstance(part, str) else repr(part)).encode())
    return h.hexdigest()[:length]
