"""Inverse-Hessian-vector-product solvers, all with one interface.

``solver.fit(objective)`` prepares whatever the method needs, then ``solver.solve(V)`` returns
(H + damping·I)⁻¹ V for a batch ``V [k, p]``. Every solve measures the true relative residual
‖(H + damping·I)x − v‖/‖v‖ of its answer with full-data HVPs and records the worst in
``solver.diagnostics``; above the solver's tolerance it warns (``strict=True``: raises
``InaccurateSolveError``), so results carry their own proof or their own caveat.
"""

from whybox.curvature.arnoldi import Arnoldi
from whybox.curvature.base import Curvature, InaccurateSolveError, NotPositiveDefiniteError
from whybox.curvature.cg import CG
from whybox.curvature.datainf import DataInf
from whybox.curvature.ekfac import EKFAC
from whybox.curvature.exact import Exact
from whybox.curvature.identity import Identity
from whybox.curvature.kfac import KFAC, factorable_params
from whybox.curvature.lissa import LiSSA, LiSSADivergenceError
from whybox.curvature.registry import SOLVERS, default_solver_name, make_solver

__all__ = ["Curvature", "Exact", "CG", "LiSSA", "Identity", "NotPositiveDefiniteError", "LiSSADivergenceError",
           "InaccurateSolveError",
           "SOLVERS", "default_solver_name", "make_solver"]
__all__ += ["KFAC", "EKFAC", "Arnoldi", "DataInf", "factorable_params"]
