"""The one typer application every ``whybox`` verb registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="whybox",
    help="Explain model predictions through the training data and through the input.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class BadInput(Exception):
    """Raised for user mistakes: the CLI prints the message on one line and exits with 2."""


@app.callback()
def _root() -> None:
    """Explain model predictions through the training data and through the input."""
