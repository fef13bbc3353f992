"""Solvers by name, and the one rule that picks a default: the single place the CLI, the study
loader and the applications turn ``"auto"``/``"exact"``/``"cg"``/... into a solver."""

from __future__ import annotations

import inspect

from whybox.curvature.arnoldi import Arnoldi
from whybox.curvature.base import Curvature
from whybox.curvature.cg import CG
from whybox.curvature.datainf import DataInf
from whybox.curvature.ekfac import EKFAC
from whybox.curvature.exact import Exact
from whybox.curvature.identity import Identity
from whybox.curvature.kfac import KFAC
from whybox.curvature.lissa import LiSSA

SOLVERS: dict[str, type[Curvature]] = {"exact": Exact, "cg": CG, "lissa": LiSSA, "identity": Identity,
                                       "kfac": KFAC, "ekfac": EKFAC, "arnoldi": Arnoldi, "datainf": DataInf}
EXACT_MAX_PARAMS = 5000  # above this many parameters the default is CG: forming H costs O(p²·n)


def default_solver_name(p: int) -> str:
    """``"exact"`` for up to ``EXACT_MAX_PARAMS`` parameters, else ``"cg"``."""
    return "exact" if p <= EXACT_MAX_PARAMS else "cg"


def make_solver(name: str = "auto", damping: float = 0.0, p: int | None = None, curvature: str = "hessian") -> Curvature:
    """A solver from its name (``auto``, ``exact``, ``cg``, ``lissa``, ``identity``, ``kfac``, ``ekfac``, ``arnoldi``,
    ``datainf``).

    ``auto`` needs ``p`` (the number of parameters) and applies ``default_solver_name``.
    ``curvature`` (``"hessian"`` or ``"ggn"``) goes to the solvers that invert either (exact, cg,
    lissa, arnoldi); ``kfac`` and ``ekfac`` are Gauss-Newton by construction, ``identity`` uses none.
    """
    if name == "auto":
        if p is None:
            raise ValueError("solver 'auto' needs the number of parameters p to choose between exact and cg")
        name = default_solver_name(p)
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {['auto', *SOLVERS]}")
    cls = SOLVERS[name]
    if "curvature" in inspect.signature(cls).parameters:
        return cls(damping=damping, curvature=curvature)
    return cls(damping=damping)
