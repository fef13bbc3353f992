"""The interface every inverse-HVP solver shares, and the check that proves each answer.

``Curvature.solve(V)`` runs the subclass's ``_solve`` and then measures the true relative residual
‖(H + damping·I)x − v‖/‖v‖ of every returned column with one block ``matvec``. The worst one goes
into ``diagnostics["relative_residual"]``; above ``residual_tolerance`` it warns (``strict=True``:
raises ``InaccurateSolveError``), naming the fix. Solvers never hand back an unchecked number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from whybox.objective import CURVATURES, Objective

DAMPING_DOMINATES = 100.0  # damping above this multiple of λ_max(H) swamps the Hessian


class NotPositiveDefiniteError(ValueError):
    """The (damped) Hessian has a non-positive eigenvalue, so H⁻¹ is not a minimiser's curvature."""


class InaccurateSolveError(ValueError):
    """A solve cannot be shown accurate: its residual exceeds the tolerance (``strict=True``), or a
    solver (LiSSA) would need more work than its budget allows and refuses before starting."""


class Curvature:
    """Base class: holds the damping and the fitted objective; subclasses implement ``_solve``.

    Args:
        damping: λ added to the curvature's diagonal.
        residual_tolerance: largest accepted relative residual ‖(H + λI)x − v‖/‖v‖ of a solve
            (default: the solver's ``default_tolerance``).
        strict: raise ``InaccurateSolveError`` instead of warning when a solve misses the tolerance.
        curvature: the matrix inverted: ``"hessian"`` (H, the paper's) or ``"ggn"`` (the
            Gauss-Newton matrix G = (1/n)ΣJᵢᵀAᵢJᵢ + decay: positive semi-definite for any θ when
            the loss is convex in the outputs, so it suits networks not at a minimum; equal to H
            for models linear in θ). See ``whybox.objective``.
    """

    default_tolerance: ClassVar[float | None] = 1e-6

    def __init__(self, damping: float = 0.0, residual_tolerance: float | None = None, strict: bool = False,
                 curvature: str = "hessian") -> None:
        if not (damping >= 0 and damping < float("inf")):
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        if residual_tolerance is not None and not 0 < residual_tolerance < 1:
            raise ValueError(f"residual_tolerance must be in (0, 1), got {residual_tolerance}")
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        self.curvature = curvature
        self.damping = float(damping)
        self.residual_tolerance = self.default_tolerance if residual_tolerance is None else float(residual_tolerance)
        self.strict = bool(strict)
        self.objective: Objective | None = None
        self.diagnostics: dict[str, Any] = {}
        self._products: Callable[[torch.Tensor], torch.Tensor] | None = None

    def fit(self, objective: Objective) -> Curvature:
        """Prepare the solver for this objective; returns ``self``."""
        self.objective = objective
        self.diagnostics = {}
        return self

    @property
    def matrix_name(self) -> str:
        """What this solver inverts, in words (for messages)."""
        return "the Hessian" if self.curvature == "hessian" else "the Gauss-Newton matrix"

    def undamped(self, V: torch.Tensor) -> torch.Tensor:
        """H·V (or G·V with ``curvature="ggn"``) for ``V [k, p]``, with full-data products."""
        if self._products is not None:
            return self._products(V)
        return self._fitted().curvature_vp(V, self.curvature)

    @contextmanager
    def held_products(self) -> Iterator[None]:
        """Inside this block every product reuses one ``Objective.curvature_operator`` (∇R's graph
        built once, not once per product); it is dropped, and its memory freed, on leaving."""
        if self._products is not None:
            yield
            return
        self._products = self._fitted().curvature_operator(self.curvature)
        try:
            yield
        finally:
            self._products = None

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """(H + damping·I)·V for ``V [k, p]``, with full-data products."""
        return self.undamped(V) + self.damping * V

    def dense(self) -> torch.Tensor:
        """The dense (H + damping·I), ``[p, p]`` (small p only): what second-order removal
        effects start from. Solvers that already hold it return theirs."""
        H = self._fitted().curvature_matrix(self.curvature)
        H.diagonal().add_(self.damping)
        return H

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """(H + damping·I)⁻¹ V for ``V [k, p]``, with its residual checked (see the module docstring)."""
        B = V.reshape(-1, self._fitted().p)
        if len(B) == 0:
            return B.clone()
        with self.held_products():
            X = self._solve(B)
            self._prove(B, X)
        return X

    def _solve(self, B: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The subclass's answer to (H + damping·I) X = B, ``B [k, p]``."""
        raise NotImplementedError

    def residuals(self, B: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """R = B − (H + damping·I)X, ``[k, p]``, and each row's ‖rⱼ‖/‖bⱼ‖, ``[k]`` (0 for b = x = 0)."""
        R = B - self.matvec(X)
        return R, R.norm(dim=1) / B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)

    def _prove(self, B: torch.Tensor, X: torch.Tensor) -> None:
        """Measure this solve's worst residual, keep the worst since ``fit`` in ``diagnostics``,
        and warn (``strict``: raise) when it is above the tolerance or not finite."""
        rel = self.residuals(B, X)[1].max().item()
        worst = self.diagnostics.get("relative_residual")
        self.diagnostics["relative_residual"] = rel if worst is None or not rel <= worst else worst
        self.diagnostics["residual_tolerance"] = self.residual_tolerance
        if rel <= self.residual_tolerance:  # False for NaN
            return
        message = (
            f"{type(self).__name__}: relative residual ‖(H + damping·I)x − v‖/‖v‖ = {rel:.2e} is above "
            f"residual_tolerance={self.residual_tolerance:g} (worst of {len(B)} right-hand sides), so "
            f"scores built on this solve are not accurate; {self._accuracy_fix()}"
        )
        if self.strict:
            raise InaccurateSolveError(message)
        warnings.warn(message + " (strict=True makes this an error)", RuntimeWarning, stacklevel=3)

    def _accuracy_fix(self) -> str:
        """What to change when a solve misses its tolerance, in argument terms (per solver)."""
        return "add damping or use another solver"

    def _judge_damping(self) -> None:
        """``_check_damping`` with λ_max from Lanczos on the undamped products, stopped as soon as its
        Ritz value (≤ λ_max) proves damping ≤ DAMPING_DOMINATES·λ_max: usually after one product.
        ``diagnostics["damping_ratio"]`` is then an upper bound of λ/λ_max."""
        if self.damping == 0:
            return
        obj = self._fitted()
        with self.held_products():
            top = lanczos(self.undamped, obj.p, obj.theta, ends="largest", stop_above=self.damping / DAMPING_DOMINATES)
        self._check_damping(top.largest)

    def _check_damping(self, top_eigenvalue: float) -> None:
        """Warn when damping swamps the curvature (λ > DAMPING_DOMINATES · λ_max(H)): then
        (H + λI)⁻¹ ≈ I/λ and influence is a scaled gradient dot product, not curvature."""
        if self.damping == 0:
            return
        ratio = self.damping / top_eigenvalue if top_eigenvalue > 0 else math.inf
        self.diagnostics["damping_ratio"] = ratio
        if ratio > DAMPING_DOMINATES:
            warnings.warn(
                f"damping={self.damping:g} is {ratio:.3g}× the largest eigenvalue of {self.matrix_name} "
                f"({top_eigenvalue:.3g}): (H + damping·I)⁻¹ ≈ I/damping, so the scores shrink by ~1/damping "
                "and become a scaled gradient dot product (Identity()), not influence; use a damping "
                f"well below {top_eigenvalue:.3g} (the smallest that makes H positive definite)",
                RuntimeWarning,
                stacklevel=3,
            )

    def _fitted(self) -> Objective:
        if self.objective is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit(objective) first")
        return self.objective

    def settings(self) -> dict[str, Any]:
        """The solver's knobs, for reports and saved results."""
        return {
            k: v for k, v in vars(self).items()
            if k not in ("objective", "diagnostics") and not k.startswith("_") and not isinstance(v, torch.Tensor)
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


@dataclass
class SpectrumEstimate:
    """Both ends of a symmetric operator's spectrum from Lanczos Ritz values. Ritz values lie inside
    the spectrum: ``smallest`` ≥ the true λ_min and ``largest`` ≤ the true λ_max."""

    smallest: float
    largest: float
    steps: int
    converged: bool


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    p: int,
    like: torch.Tensor,
    max_steps: int = 100,
    rtol: float = 1e-2,
    seed: int = 0,
    ends: str = "both",
    stop_ratio: float = 0.0,
    stop_above: float = math.inf,
) -> SpectrumEstimate:
    """Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

    Stops when the Ritz-residual bound of each wanted end (``ends`` = ``"both"`` or ``"largest"``)
    is within ``rtol`` of its value, after ``max_steps`` matvecs, as soon as 0 < smallest <
    ``stop_ratio`` · largest (then λ_max/λ_min is proven above 1/``stop_ratio``), or as soon as
    largest ≥ ``stop_above`` (then λ_max ≥ ``stop_above`` is proven: Ritz values lie inside the
    spectrum; ``converged`` is False then).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(p, generator=gen, dtype=like.dtype).to(like.device)
    q /= q.norm()
    Q = torch.empty(min(max_steps, p), p, dtype=like.dtype, device=like.device)
    alpha: list[float] = []
    beta: list[float] = []
    for k in range(len(Q)):
        Q[k] = q
        w = matvec(q[None])[0]
        alpha.append((w @ q).item())
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - Q[: k + 1].T @ (Q[: k + 1] @ w)
        b = w.norm().item()
        T = torch.diag(torch.tensor(alpha, dtype=torch.float64))
        if beta:
            off = torch.tensor(beta, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)
        bound = b * S[-1].abs()  # |λ − θᵢ| ≤ bound[i] for some eigenvalue λ
        top_ok = bound[-1] <= rtol * abs(theta[-1])
        low_ok = bound[0] <= rtol * abs(theta[0])
        done = b <= 1e-12 * max(abs(theta[0]), abs(theta[-1]), 1e-300)  # invariant subspace: exact
        if done or (top_ok and (ends == "largest" or low_ok)):
            return SpectrumEstimate(theta[0].item(), theta[-1].item(), k + 1, True)
        if 0 < theta[0] < stop_ratio * theta[-1] or theta[-1] >= stop_above:
            break
        beta.append(b)
        q = w / b
    return SpectrumEstimate(theta[0].item(), theta[-1].item(), len(alpha), len(alpha) == p)


def alternative_solver(p: int) -> str:
    """The exact solver to name in advice for a problem with ``p`` parameters (registry rule)."""
    from whybox.curvature.registry import default_solver_name

    return "Exact()" if default_solver_name(p) == "exact" else "CG()"


def not_pd_message(min_eig: float, damping: float, solver: str, curvature: str = "hessian") -> str:
    fix = max(-min_eig, 0.0) * 1.1 + 1e-3 * max(abs(min_eig), 1e-6)
    if curvature == "hessian":
        return (
            f"the Hessian (+ damping {damping:g}) is not positive definite: smallest eigenvalue "
            f"{min_eig:.3g}. The model is not at a minimum (not converged, or non-convex), or the "
            "objective is flat in some direction (e.g. no weight decay with redundant parameters); "
            f"add damping, e.g. {solver}(damping={damping + fix:.2g}), use weight decay, train longer, "
            f"or use Gauss-Newton curvature ({solver}(curvature=ggn), positive semi-definite at any θ)"
        )
    return (
        f"the Gauss-Newton matrix (+ damping {damping:g}) is singular: smallest eigenvalue {min_eig:.3g} "
        "(it is only semi-definite: flat in directions no training output depends on); add damping, e.g. "
        f"{solver}(damping={damping + fix:.2g}), or use weight decay"
    )
