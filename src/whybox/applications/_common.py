"""What the applications share: how they are handed an ``Attributor``, and their settings' form.

An application that trains its own models (mislabeled retrains for every repeat, mismatch trains
on the generated data) needs a *recipe* for an attributor: an ``Attributor`` subclass (built as
``cls(objective).fit()``) or a factory ``objective -> fitted Attributor`` (one that also takes
``checkpoints`` receives θ at each round of the model's training, for TracIn). An application handed
a trained model (attack) also takes an attributor already fitted on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Union

from whybox.attribution import Attributor
from whybox.curvature import make_solver
from whybox.objective import Objective
from whybox.study import MethodSettings, make_attributor

AttributorFactory = Callable[[Objective], Attributor]
AttributorSpec = Union[Attributor, type, AttributorFactory]


def method_factory(solver: str = "auto", damping: float = 0.0, method: str = "influence") -> AttributorFactory:
    """A factory of fitted attributors by ``--method`` name (default influence, with the solver
    ``make_solver(solver, damping, p)``: ``auto`` = exact up to 5,000 parameters, else CG), wired by
    ``whybox.study.make_attributor``."""
    from whybox.study import METHODS

    make_solver(solver, damping, p=1)  # refuse an unknown name now, not at the first model
    if method not in METHODS and ":" not in method:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(METHODS)} or FILE.py:CLASS")
    settings = MethodSettings(method=method, solver=solver, damping=damping)

    def build(objective: Objective, checkpoints: list | None = None) -> Attributor:
        return make_attributor(objective, settings, checkpoints)

    return build


def build_for_run(factory: AttributorFactory, objective: Objective, checkpoints: list | None) -> Attributor:
    """``factory(objective)``, also handing it the ``checkpoints`` of the training run that made the
    model (θ at each L-BFGS round, for TracIn) when its signature takes ``checkpoints``."""
    try:
        takes = "checkpoints" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without an inspectable signature
        takes = False
    return factory(objective, checkpoints=checkpoints) if takes else factory(objective)


def as_factory(attributor: AttributorSpec, argument: str = "attributor") -> AttributorFactory:
    """A factory building a fitted attributor for each model the experiment trains.

    Accepts an ``Attributor`` subclass or a callable ``objective -> Attributor``; refuses anything
    else, and an instance (it is fitted on one model only), with a TypeError naming ``argument``.
    """
    if isinstance(attributor, Attributor):
        raise TypeError(f"{argument} must build an attributor for every model this experiment trains: pass the "
                        f"class ({type(attributor).__name__}) or a factory `lambda objective: ...fit()`, not an instance")
    if isinstance(attributor, type):
        if not issubclass(attributor, Attributor):
            raise TypeError(f"{argument} must be a whybox.Attributor subclass or a factory; got class {attributor.__name__}")
        return lambda objective: attributor(objective).fit()
    if not callable(attributor):
        raise TypeError(f"{argument} must be a whybox.Attributor subclass or a factory objective -> Attributor; "
                        f"got {type(attributor).__name__}")

    def build(objective: Objective, checkpoints: list | None = None) -> Attributor:
        made = build_for_run(attributor, objective, checkpoints)
        if not isinstance(made, Attributor):
            raise TypeError(f"{argument} returned {type(made).__name__}, not a whybox.Attributor")
        return made

    return build


def bind(attributor: AttributorSpec, objective: Objective, argument: str = "attributor") -> Attributor:
    """The attributor for a model the caller trained: an instance as given, a subclass or a factory
    applied to ``objective``."""
    if isinstance(attributor, Attributor):
        return attributor
    return as_factory(attributor, argument)(objective)
