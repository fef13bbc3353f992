"""The ``whybox`` command. Each verb lives in its own module and registers on ``app``."""

from __future__ import annotations

import re
import sys

from whybox.cli import benchmark, explain, saliency, usecases_data, usecases_model, validate  # noqa: F401  (registers verbs)
from whybox.cli._app import BadInput, app

__all__ = ["app", "main", "BadInput"]


def main() -> None:
    """Entry point: bad input (``BadInput``, ``ValueError``, ``TypeError``, a missing file) is
    printed as one line on stderr with exit code 2, and so is a missing optional extra (``zoo.MissingExtra``,
    which names the ``pip install``); usage errors are click's (also exit 2)."""
    from whybox.zoo.data import MissingExtra

    try:
        app()
    except (BadInput, ValueError, TypeError, FileNotFoundError, MissingExtra) as err:
        print(f"whybox: error: {as_flags(str(err))}", file=sys.stderr)
        sys.exit(2)


def as_flags(message: str) -> str:
    """A library message in command-line terms: ``Exact(damping=0.002)`` → ``--solver exact --damping 0.002``,
    ``train=FILE`` → ``--train FILE`` (for every settings field of ``whybox.study``)."""
    from dataclasses import fields

    from whybox.curvature import SOLVERS
    from whybox.study import DataSettings, MethodSettings, ModelSettings

    solvers = "|".join(cls.__name__ for cls in SOLVERS.values())
    message = re.sub(rf"\b({solvers})\(damping=([^,)]+)\)",
                     lambda m: f"--solver {m.group(1).lower()} --damping {m.group(2)}", message)
    message = re.sub(rf"\b({solvers})\(curvature=(\w+)\)",
                     lambda m: f"--solver {m.group(1).lower()} --curvature {m.group(2)}", message)
    names = sorted({f.name for cls in (DataSettings, ModelSettings, MethodSettings) for f in fields(cls)}, key=len, reverse=True)
    return re.sub(rf"\b({'|'.join(names)})=", lambda m: f"--{m.group(1).replace('_', '-')} ", message)
