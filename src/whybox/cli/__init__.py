"""The ``whybox`` command. Each verb lives in its own module and registers on ``app``."""

from __future__ import annotations

import sys

from whybox.cli._app import BadInput, app
from whybox.cli import explain, saliency, usecases_data, usecases_model, validate  # noqa: F401  (registers verbs)

__all__ = ["app", "main", "BadInput"]


def main() -> None:
    """Entry point: bad input (``BadInput``, ``ValueError``, ``TypeError``, a missing file) is
    printed as one line on stderr with exit code 2; usage errors are click's (also exit 2)."""
    try:
        app()
    except (BadInput, ValueError, TypeError, FileNotFoundError) as err:
        print(f"whybox: error: {err}", file=sys.stderr)
        sys.exit(2)
