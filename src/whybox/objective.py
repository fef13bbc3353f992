"""The functional view of a trained model: ``model + per-example loss + weight decay + data + θ̂``.

Everything else in whybox reaches autograd only through this class. Parameters are handled as one
flat vector θ of length p (the trainable subset, in ``named_parameters`` order), so solvers and
influence code work with plain ``[k, p]`` matrices.

Objective:  R(θ) = (1/n) Σ_i L(z_i, θ) + ½ Σ_j d_j θ_j²
Hessian:    H = ∇²R(θ̂) = (1/n) Σ_i ∇²L(z_i, θ̂) + diag(d)   (damping is the solver's business)
Gauss-Newton: G = (1/n) Σ_i J_iᵀ A_i J_i + diag(d)   (J_i the output Jacobian, A_i = ∇²_out L)

G drops H's term Σ_c ∂L/∂o_c ∇²o_c (the model's own curvature weighted by the residual), so it is
positive semi-definite whenever the loss is convex in the outputs, even far from a minimum; it
equals H when the outputs are linear in θ (GLMs, a network's last layer).

d is the per-coordinate weight decay ``Objective.decay``: the one ``weight_decay`` w everywhere by
default, 0 on parameters named in ``no_decay`` (e.g. an unpenalised intercept), or one value per
parameter from a mapping. The per-example loss L is plain: the regulariser lives in R, so removing
a training point keeps it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

from whybox import losses as _losses
from whybox.losses import LossFn

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]
CURVATURES = ("hessian", "ggn")  # what a solver inverts: the Hessian H or the Gauss-Newton matrix G
WeightDecay = Union[float, Mapping[str, float]]


def _name_list(params: None | str | Sequence[str]) -> list[str] | None:
    if params is None:
        return None
    return [params] if isinstance(params, str) else list(params)


def _names_match(name: str, entry: str) -> bool:
    """Whether ``entry`` names parameter ``name`` as a run of whole dotted components:
    ``"bias"`` matches ``"fc.bias"`` and ``"0.bias"`` (not ``"unbiased"``), ``"fc"`` matches
    ``"fc.weight"`` and ``"fc.bias"``, ``"1.weight"`` matches ``"1.weight"`` only."""
    parts, want = name.split("."), entry.strip(".").split(".")
    return any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def _check_decay(value, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return value


def _decay_per_parameter(
    chosen: Sequence[str], every: Sequence[str], weight_decay: WeightDecay, no_decay: list[str] | None
) -> dict[str, float]:
    """The weight decay of each explained parameter in ``chosen``. Entries must match some
    parameter in ``every`` (all the model's, frozen ones included), so typos are refused."""
    no_decay = no_decay or []
    if isinstance(weight_decay, Mapping):
        given, w = {k: _check_decay(v, f"weight_decay[{k!r}]") for k, v in weight_decay.items()}, None
    else:
        given, w = None, _check_decay(weight_decay, "weight_decay")
    for what, entries in (("no_decay entry", no_decay), ("weight_decay key", list(given or {}))):
        for entry in entries:
            if not any(_names_match(n, entry) for n in every):
                raise ValueError(f"{what} {entry!r} matches no parameter of the model; available: {list(every)}")
    decay = {}
    for name in chosen:
        if any(_names_match(name, e) for e in no_decay):
            decay[name] = 0.0
        elif given is None:
            decay[name] = w
        else:
            found = {v for k, v in given.items() if _names_match(name, k)}
            if len(found) != 1:
                raise ValueError(
                    f"weight_decay gives parameter {name!r} " + (f"several values {sorted(found)}" if found else "no value")
                    + f"; give it exactly one (e.g. {{{name!r}: 0.0}}) or list it in no_decay"
                )
            decay[name] = found.pop()
    return decay


@dataclass(frozen=True)
class Stationarity:
    """How far θ̂ is from a stationary point of R: ``relative`` = ‖∇R(θ̂)‖ / ``gradient_scale``."""

    grad_norm: float  # ‖∇R(θ̂)‖
    gradient_scale: float  # RMS over training points of ‖∇L(zᵢ, θ̂)‖
    relative: float


def as_data(X, y=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ``(X, y)`` tensors/arrays, a ``Dataset`` or a ``DataLoader`` into two tensors."""
    if y is None:
        if isinstance(X, torch.utils.data.DataLoader):
            pairs = [(xb, yb) for xb, yb in X]
            return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        if isinstance(X, torch.utils.data.Dataset):
            items = [X[i] for i in range(len(X))]  # type: ignore[arg-type]
            return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor(
                np.asarray([np.asarray(b) for _, b in items])
            )
        raise TypeError("y is missing: pass X and y, or a Dataset/DataLoader of (x, y) pairs")
    return torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X), torch.as_tensor(
        np.asarray(y) if not torch.is_tensor(y) else y
    )


def _curvature(name: str) -> str:
    if name not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {name!r}")
    return name


def _check_finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t.reshape(len(t), -1)).all(dim=1) if t.ndim else ~torch.isfinite(t)
        if bad.any():
            first = int(torch.nonzero(bad.reshape(-1))[0])
            raise ValueError(
                f"{what} contains NaN or inf in {int(bad.sum())} row(s) (first at index {first}); "
                "remove or impute those rows first"
            )


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` without the copy when there is one part (a [n, p] gradient matrix can be GBs)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


_TRAIN_MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class Objective:
    """A trained model seen as functions of its flat parameter vector θ.

    Args:
        model: a trained ``nn.Module``; its current parameters are θ̂. Must be in eval mode if it
            has dropout or batch-norm layers.
        loss: a name from ``whybox.losses.LOSSES`` (``"cross_entropy"``, ``"logistic"``,
            ``"squared_error"``, ``"hinge"``, ``"smooth_hinge"``), a ``SmoothHinge(t)``, or any
            callable ``loss(output, target) -> scalar`` for one example.
        X: the training inputs ``[n, *input_shape]`` (a tensor or array), or a Dataset/DataLoader
            of ``(x, y)`` pairs with ``y=None``.
        y: the training targets, one per row of ``X``.
        weight_decay: w in R(θ) = mean loss + (w/2)‖θ‖² (PyTorch's convention: ∇ gains w·θ), or a
            mapping ``{"fc.weight": 0.01, "fc.bias": 0.0}`` giving every explained parameter its own
            w (keys match as in ``no_decay``).
        params: names (or name prefixes, e.g. ``"fc."``) of the parameters to explain; the rest are
            frozen. Default: all parameters with ``requires_grad``.
        batch_size: examples per chunk for every pass over data (bounds memory).
        cache_bytes: keep all training gradients in memory when they fit in this many bytes.
        no_decay: parameters left out of the weight decay (w = 0), e.g. ``["bias"]``. An entry
            matches a parameter when it is a run of whole dotted components of its name: ``"bias"``
            matches ``"fc.bias"`` and ``"0.bias"``, ``"fc"`` matches ``"fc.weight"`` and ``"fc.bias"``.

    Attributes:
        decay: the per-coordinate weight decay d, ``[p]``, used by ``risk``, ``hvp`` and ``hessian``.
        decay_by_param: the weight decay of each explained parameter, by name.
        weight_decay: the single w when every explained parameter has the same one, else
            ``decay_by_param`` (a dict that ``Objective(..., weight_decay=...)`` accepts back).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | LossFn = "cross_entropy",
        X: ArrayLike = None,  # type: ignore[assignment]
        y: ArrayLike | None = None,
        weight_decay: WeightDecay = 0.0,
        params: None | str | Sequence[str] = None,
        batch_size: int = 2048,
        cache_bytes: int = 512 * 2**20,
        *,
        no_decay: None | str | Sequence[str] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if X is None:
            raise ValueError("training data X is missing: Objective(model, loss, X=..., y=...)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.loss_fn, self.loss_name = _losses.resolve(loss)
        self.batch_size = int(batch_size)
        self.cache_bytes = int(cache_bytes)
        self._check_mode(model)
        self._split_params(model, _name_list(params))
        self._set_decay(weight_decay, _name_list(no_decay), [n for n, _ in model.named_parameters()])
        self.X, self.y = self.check_data(X, y, "training")
        self._train_grads: torch.Tensor | None = None
        self._head_cache: list | None = None  # (layer inputs, output Hessians) of a GLM, see _head_hvp

    def __getstate__(self) -> dict:
        """Pickled without the training-gradient cache (it can be GBs; a Dask worker recomputes
        only the rows it scores)."""
        state = self.__dict__.copy()
        state["_train_grads"] = state["_head_cache"] = None
        return state

    # ------------------------------------------------------------------ set-up and validation
    @staticmethod
    def _check_mode(model: nn.Module) -> None:
        active = [n for n, m in model.named_modules() if m.training and isinstance(m, _TRAIN_MODE_LAYERS)
                  and not (isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0)]  # Dropout(0) is the identity
        if active:
            raise ValueError(
                f"model is in training mode with dropout/batch-norm layers ({', '.join(active[:3])}): "
                "their output is random or batch-dependent, so influence is undefined; "
                "call model.eval() first"
            )

    def _split_params(self, model: nn.Module, wanted: list[str] | None) -> None:
        named = dict(model.named_parameters())
        if not named:
            raise ValueError("model has no parameters to explain")
        if wanted is None:
            chosen = [n for n, t in named.items() if t.requires_grad]
        else:
            chosen = [n for n in named if any(n == w or n.startswith(w) for w in wanted)]
            missing = [w for w in wanted if not any(n == w or n.startswith(w) for n in named)]
            if missing:
                raise ValueError(
                    f"params {missing} match no parameter of the model; available: {list(named)}"
                )
        if not chosen:
            raise ValueError("no trainable parameters selected (all have requires_grad=False?)")
        self.param_names = chosen
        self.shapes = [named[n].shape for n in chosen]
        self.sizes = [named[n].numel() for n in chosen]
        first = named[chosen[0]]
        self.dtype, self.device = first.dtype, first.device
        if not first.is_floating_point():
            raise TypeError(f"parameter {chosen[0]} has dtype {first.dtype}; need floating point")
        self.theta = torch.cat([named[n].detach().reshape(-1).to(self.dtype) for n in chosen])
        bad = [n for n in chosen if not torch.isfinite(named[n]).all()]
        if bad:
            raise ValueError(
                f"model parameters {bad} contain NaN or inf: training diverged; retrain the model "
                "(lower the learning rate) before explaining it"
            )
        self.frozen = {n: t.detach() for n, t in named.items() if n not in set(chosen)}
        self.frozen.update({n: b for n, b in model.named_buffers()})

    def _set_decay(self, weight_decay: WeightDecay, no_decay: list[str] | None, every: list[str]) -> None:
        self.decay_by_param = _decay_per_parameter(self.param_names, every, weight_decay, no_decay)
        values = list(self.decay_by_param.values())
        self.weight_decay: WeightDecay = values[0] if len(set(values)) == 1 else dict(self.decay_by_param)
        self.decay = torch.cat([
            torch.full((size,), value, dtype=self.dtype, device=self.device)
            for size, value in zip(self.sizes, values)
        ])

    def check_data(self, X, y, what: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and convert ``(X, y)`` for this model: shapes, finiteness, label range."""
        X, y = as_data(X, y)
        if X.ndim == 0 or len(X) == 0:
            raise ValueError(f"{what} data is empty: X has shape {tuple(X.shape)}")
        if y.ndim == 0 or len(y) != len(X):
            raise ValueError(
                f"{what} data: X has {len(X)} rows but y has shape {tuple(y.shape)}; "
                "give one target per row of X"
            )
        if X.is_floating_point():
            X = X.to(self.dtype)
        X, y = X.to(self.device), y.to(self.device)
        _check_finite(X, f"{what} X")
        _check_finite(y, f"{what} y")
        out = self._probe(X[:2], what)
        self._check_targets(out, y, what)
        return X, y

    def _probe(self, X: torch.Tensor, what: str) -> torch.Tensor:
        if hasattr(self, "_input_shape") and tuple(X.shape[1:]) != self._input_shape:
            raise ValueError(
                f"{what} X has rows of shape {tuple(X.shape[1:])} but the training rows have "
                f"shape {self._input_shape}; reshape the {what} data to match"
            )
        try:
            with torch.no_grad():
                out = functional_call(self.model, self._param_dict(self.theta), (X,))
        except Exception as err:  # the user's model rejected the input
            raise ValueError(
                f"model failed on {what} rows of shape {tuple(X.shape[1:])} ({type(err).__name__}: {err}); "
                "X must have shape [n, *input_shape] that the model accepts"
            ) from None
        if not torch.is_tensor(out) or out.shape[:1] != X.shape[:1]:
            raise ValueError(
                f"model must return a tensor with one row per example, got "
                f"{type(out).__name__} {getattr(out, 'shape', '')} for {len(X)} examples"
            )
        self._input_shape = tuple(X.shape[1:])
        self.output_shape = tuple(out.shape[1:])
        return out

    def _check_targets(self, out: torch.Tensor, y: torch.Tensor, what: str) -> None:
        name = self.loss_name
        if name == "cross_entropy":
            n_classes = out.shape[-1] if out.ndim == 2 else None
            if n_classes is None:
                raise ValueError(f"cross_entropy needs model outputs of shape [n, C], got {tuple(out.shape)}")
            if y.is_floating_point() and not torch.equal(y, y.round()):
                raise ValueError(f"{what} y must hold integer class labels for cross_entropy")
            if y.ndim != 1 or y.min() < 0 or y.max() >= n_classes:
                raise ValueError(
                    f"{what} labels must be integers in [0, {n_classes}) for a model with "
                    f"{n_classes} outputs; got range [{y.min().item()}, {y.max().item()}]"
                )
        elif name in _losses.BINARY:
            if out[0].numel() != 1:
                raise ValueError(f"{name} loss needs one score per example, got outputs {tuple(out.shape)}")
            values = set(torch.unique(y).tolist())
            if not (values <= {0, 1} or values <= {-1, 1}):
                raise ValueError(f"{what} labels for {name} must be in {{0, 1}} or {{-1, +1}}; got {sorted(values)[:5]}")
        elif name == "squared_error" and y[0].numel() != out[0].numel():
            raise ValueError(
                f"{what} y rows have {y[0].numel()} values but the model outputs {out[0].numel()}"
            )

    # ------------------------------------------------------------------ functional core
    @property
    def n(self) -> int:
        return len(self.X)

    @property
    def p(self) -> int:
        return self.theta.numel()

    def _param_dict(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(theta, self.sizes)
        d = {n: t.view(s) for n, t, s in zip(self.param_names, pieces, self.shapes)}
        d.update(self.frozen)
        return d

    def outputs(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Model outputs for a batch at θ (default θ̂)."""
        th = self.theta if theta is None else theta
        return functional_call(self.model, self._param_dict(th), (X,))

    def _batch_losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return vmap(self.loss_fn)(self.outputs(X, theta), y)

    def _example_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.outputs(x.unsqueeze(0), theta).squeeze(0), y)

    def chunks(self, n: int, size: int | None = None) -> Iterator[slice]:
        """Row slices of at most ``size`` (default ``batch_size``) rows."""
        size = size or self.batch_size
        for start in range(0, n, size):
            yield slice(start, min(start + size, n))

    def losses(self, X=None, y=None, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Plain per-example losses ``[N]`` (training data by default)."""
        X, y = self._data(X, y)
        th = self.theta if theta is None else theta
        with torch.no_grad():
            return torch.cat([self._batch_losses(th, X[s], y[s]) for s in self.chunks(len(X))])

    def _data(self, X, y) -> tuple[torch.Tensor, torch.Tensor]:
        if X is None:
            return self.X, self.y
        if torch.is_tensor(X) and torch.is_tensor(y) and X.device == self.device and (
            not X.is_floating_point() or X.dtype == self.dtype
        ) and X.ndim >= 1 and len(X) == len(y) and len(X) > 0 and tuple(X.shape[1:]) == self._input_shape:
            _check_finite(X, "X")
            return X, y
        return self.check_data(X, y)

    def risk(self, theta: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """R(θ) = (1/n) Σ wᵢ L(zᵢ, θ) + ½ Σⱼ dⱼθⱼ², differentiable in θ (weights default to 1)."""
        th = self.theta if theta is None else theta
        total = th.new_zeros(())
        for s in self.chunks(self.n):
            l = self._batch_losses(th, self.X[s], self.y[s])
            total = total + (l if weights is None else l * weights[s]).sum()
        return total / self.n + 0.5 * th.dot(self.decay * th)

    # ------------------------------------------------------------------ first derivatives
    def iter_grads(self, X=None, y=None) -> Iterator[tuple[slice, torch.Tensor]]:
        """Per-example gradients ∇θL(zᵢ, θ̂) as ``(rows, [B, p])`` chunks (batched, no loop over rows)."""
        X, y = self._data(X, y)
        head = self._linear_head() is not None  # a GLM or an explained last layer: rank-one, in closed form
        per_example = self._head_grads if head else lambda X, y: vmap(grad(self._example_loss), in_dims=(None, 0, 0))(
            self.theta, X, y).detach()
        rows = max(1, min(self.batch_size, 2**26 // (self.p * self.theta.element_size())))  # ≤ 64 MiB a chunk
        for s in self.chunks(len(X), rows):
            yield s, per_example(X[s], y[s])

    def grads(self, X=None, y=None) -> torch.Tensor:
        """Per-example gradients of the plain loss, ``[N, p]`` (training data by default)."""
        if X is None:
            return self.train_grads(slice(None))
        return _cat([g for _, g in self.iter_grads(X, y)])

    def train_grads(self, rows) -> torch.Tensor:
        """Gradients of the selected training rows, ``[k, p]``. All n are cached when they fit in
        ``cache_bytes`` (default 512 MiB); otherwise only the asked rows are computed, so callers
        that stream over row chunks use bounded memory however large n is."""
        if self._train_grads is None and self.n * self.p * self.theta.element_size() <= self.cache_bytes:
            self._train_grads = _cat([g for _, g in self.iter_grads(self.X, self.y)])
        if self._train_grads is not None:
            return self._train_grads[rows]
        return _cat([g for _, g in self.iter_grads(self.X[rows], self.y[rows])])

    def risk_grad(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """∇R(θ): zero at a converged θ̂."""
        th = (self.theta if theta is None else theta).detach()
        return grad(self.risk)(th)

    def stationarity(self) -> Stationarity:
        """‖∇R(θ̂)‖ relative to the RMS of the per-example gradient norms, √((1/n)Σᵢ‖∇L(zᵢ, θ̂)‖²).

        Why this scale: ∇R is the mean of the per-example gradients plus the decay term, and
        ‖(1/n)Σᵢ gᵢ‖ ≤ RMSᵢ‖gᵢ‖ (Cauchy-Schwarz), so the loss part of the ratio lies in [0, 1]:
        0 when the training points' pushes cancel (a stationary point), 1 when they all push the
        same way. It is unchanged by rescaling the loss, so one threshold serves every model. The
        RMS (rather than the mean norm) is the Frobenius norm of the [n, p] gradient matrix over
        √n: one pass, no sorting, and zero only when every example's gradient is zero.
        """
        grad_norm = float(self.risk_grad().norm())
        squares = sum(float(self.train_grads(s).pow(2).sum()) for s in self.chunks(self.n))
        scale = math.sqrt(squares / self.n)
        relative = grad_norm / scale if scale > 0 else (0.0 if grad_norm == 0 else math.inf)
        return Stationarity(grad_norm, scale, relative)

    def check_stationary(self, threshold: float = 1e-3, stacklevel: int = 2) -> Stationarity:
        """``stationarity()``, with a ``RuntimeWarning`` when its ``relative`` exceeds ``threshold``.

        Influence functions assume θ̂ minimises R (∇R(θ̂) = 0, H positive definite). The default
        1e-3 means the leftover gradient is a thousandth of a typical example's gradient:
        scikit-learn's default ``tol=1e-4`` and L-BFGS to a tight tolerance land well below it,
        a model stopped early by SGD lands above it.
        """
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0, got {threshold}")
        result = self.stationarity()
        if result.relative > threshold:
            warnings.warn(
                f"θ̂ is not a minimum of the training objective: ‖∇R(θ̂)‖ = {result.grad_norm:.3g}, "
                f"{result.relative:.3g} of the RMS per-example gradient norm {result.gradient_scale:.3g} "
                f"(threshold {threshold:g}). Influence assumes ∇R(θ̂) = 0, so scores may be wrong; "
                "train longer (to ‖∇R‖ near 0, e.g. full-batch L-BFGS with whybox.zoo.fit), add damping "
                "to the solver, or use Gauss-Newton curvature (positive semi-definite away from a minimum)",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
        return result

    # ------------------------------------------------------------------ second derivatives
    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """H·v for a batch ``V [k, p]`` (O(np) per vector, H never formed; for a GLM or an
        explained last layer, two GEMMs over the layer's inputs: ``_head_hvp``). One call builds
        ∇R's graph once and differentiates it again for every vector; solvers that multiply
        repeatedly keep that graph with ``curvature_operator``."""
        return self.curvature_operator("hessian")(V)

    def curvature_operator(self, curvature: str = "hessian") -> Callable[[torch.Tensor], torch.Tensor]:
        """V ↦ H·V (or G·V with ``"ggn"``) for ``V [k, p]``, full data, weight decay included, as a
        function to call many times. For the Hessian it holds ∇R's first-order graph (one forward
        and create-graph backward pass per chunk, built on the first call) while that graph fits
        in ``cache_bytes``, so each later product costs one backward pass of it per vector and no
        forward pass (``LinearisedGradient``); drop the function to free it."""
        if _curvature(curvature) == "ggn":
            return self.ggn_vp
        if self._linear_head() is not None:
            return self._head_hvp
        return LinearisedGradient(self)

    def batch_hvp(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(mean over the batch of ∇²L)·v for ``V [k, p]``: the mini-batch Hessian, no weight decay
        (the batch's gradient graph built once, then one backward pass of it per vector)."""
        theta, g, _ = _gradient_graph(self, X, y)
        return _graph_products(theta, g, V.reshape(-1, self.p)) / len(X)

    def ggn_vp(self, V: torch.Tensor) -> torch.Tensor:
        """G·v for a batch ``V [k, p]``: the Gauss-Newton matrix (module docstring), never formed."""
        V = V.reshape(-1, self.p)
        out = torch.zeros_like(V)
        for s in self.chunks(self.n):
            out += self.batch_ggn_vp(V, self.X[s], self.y[s]) * (s.stop - s.start)
        return out / self.n + self.decay * V

    def batch_ggn_vp(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(mean over the batch of JᵢᵀAᵢJᵢ)·v for ``V [k, p]``: push v forward through the model
        (J v), through the loss's output Hessian (A J v), and pull it back (Jᵀ A J v)."""
        model = lambda th: self.outputs(X, th)  # noqa: E731
        out, pull_back = vjp(model, self.theta)
        out_grad = lambda o: vmap(grad(self.loss_fn))(o, y)  # noqa: E731
        def one(v: torch.Tensor) -> torch.Tensor:
            Jv = jvp(model, (self.theta,), (v,))[1]
            return pull_back(jvp(out_grad, (out.detach(),), (Jv,))[1])[0]
        return vmap(one)(V).detach() / len(X)

    def curvature_vp(self, V: torch.Tensor, curvature: str = "hessian") -> torch.Tensor:
        """H·v (``"hessian"``) or G·v (``"ggn"``), full data, weight decay included."""
        return self.hvp(V) if _curvature(curvature) == "hessian" else self.ggn_vp(V)

    def batch_curvature_vp(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor, curvature: str = "hessian") -> torch.Tensor:
        """The mini-batch form of ``curvature_vp`` (mean over the batch, no weight decay)."""
        if _curvature(curvature) == "hessian":
            return self.batch_hvp(V, X, y)
        return self.batch_ggn_vp(V, X, y)

    def curvature_matrix(self, curvature: str = "hessian") -> torch.Tensor:
        """The dense H or G, ``[p, p]`` (small p only)."""
        return self.hessian() if _curvature(curvature) == "hessian" else self.ggn()

    def ggn(self) -> torch.Tensor:
        """The dense Gauss-Newton matrix G, ``[p, p]``, from per-example factors (G = Σ UᵢUᵢᵀ/n + diag(d))."""
        if self._linear_head() is not None:  # the output is linear in θ: G = H, and its products are cheap
            return self.hessian()
        C = max(1, math.prod(self.output_shape))
        rows = max(1, min(self.batch_size, 2**23 // (self.p * C)))  # factor chunks of ≤ 64 MiB (float64)
        G = torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        for s in self.chunks(self.n, rows):
            U = self.gauss_newton_factors(s).transpose(1, 2).reshape(-1, self.p)
            G.addmm_(U.T, U)
        G /= self.n
        G.diagonal().add_(self.decay)
        return 0.5 * (G + G.T)

    def example_hessians(self, idx: Sequence[int]) -> torch.Tensor:
        """Per-example Hessians ∇²L(zᵢ, θ̂), ``[k, p, p]`` (small p only)."""
        idx = torch.as_tensor(idx, device=self.device).reshape(-1)
        eye = torch.eye(self.p, dtype=self.dtype, device=self.device)
        return torch.stack([self.batch_hvp(eye, self.X[i : i + 1], self.y[i : i + 1]) for i in idx.tolist()])

    def hessian(self, block: int = 64) -> torch.Tensor:
        """The dense Hessian H of R at θ̂, ``[p, p]``: for a GLM or an explained last layer directly
        from the layer's inputs (``_head_hessian``), else from HVPs in column blocks (∇R's graph built
        once for all of them, see ``curvature_operator``)."""
        if self._linear_head() is not None:
            return self._head_hessian()
        eye = torch.eye(self.p, dtype=self.dtype, device=self.device)
        hvp = self.curvature_operator("hessian")
        H = torch.cat([hvp(eye[i : i + block]) for i in range(0, self.p, block)])
        return 0.5 * (H + H.T)

    def _linear_head(self) -> str | None:
        """The name of the one ``nn.Linear`` whose weight (and bias) are exactly the explained
        parameters, if the model has one and its output is the model's output [N, C]; else None."""
        if getattr(self, "_head", False) is not False:
            return self._head
        self._head = None
        if len(self.output_shape) > 1:
            return None
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            own = {f"{name}.{p}" if name else p for p, value in module.named_parameters(recurse=False)}
            if own == set(self.param_names):
                inputs, out = self._head_inputs(name, self.X[:4])
                if inputs is not None and torch.equal(out.reshape(len(out), -1), self.outputs(self.X[:4]).reshape(len(out), -1)):
                    self._head = name
                break
        return self._head

    def _head_inputs(self, name: str, X: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(inputs [N, d], outputs [N, C]) of the Linear module ``name`` for the rows X."""
        module = self.model.get_submodule(name)
        seen: list = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
        try:
            with torch.no_grad():
                self.outputs(X)
        finally:
            handle.remove()
        if len(seen) != 1 or seen[0][0].ndim != 2:
            return None, None
        return seen[0]

    def _head_hvp(self, V: torch.Tensor) -> torch.Tensor:
        """H·V for a model whose explained parameters are one Linear layer producing the output
        (a GLM, or a last layer on frozen features). Its per-example Hessian is Aᵢ ⊗ ãᵢãᵢᵀ (ãᵢ =
        [aᵢ, 1] the layer's input, Aᵢ the loss Hessian in the outputs), so H·v is two small GEMMs
        over the layer's inputs: O(n·C·d) per vector, no autograd. Inputs and Aᵢ are cached while
        they fit in ``cache_bytes``."""
        name = self._linear_head()
        index, bias = self._head_index(name)
        W = V[:, index]  # [k, C, d̃]
        out = torch.zeros_like(V)
        for a, A in self._head_terms(name, bias):
            JV = torch.einsum("bj,kcj->kbc", a, W)  # each example's output change
            out[:, index] += torch.einsum("bce,kbe,bj->kcj", A, JV, a)  # through the output Hessian, back onto W̃
        return out / self.n + self.decay * V

    def _head_hessian(self) -> torch.Tensor:
        """The dense H of a GLM / explained last layer: block (c, c') of H_W̃ is Σᵢ Aᵢ[c, c'] ãᵢãᵢᵀ / n, one
        GEMM over the layer's inputs per pair c ≤ c' (C(C+1)/2 GEMMs of n·d̃², against p HVPs of
        n·C·d̃ each through ``_head_hvp``: C·d̃ / ((C+1)/2) times less work)."""
        name = self._linear_head()
        index, bias = self._head_index(name)
        C, dt = index.shape
        index = index.reshape(-1)  # [C·d̃]: θ position of W̃[c, j]
        HW = torch.zeros(C, dt, C, dt, dtype=self.dtype, device=self.device)
        for a, A in self._head_terms(name, bias):
            for c in range(C):
                for c2 in range(c, C):
                    HW[c, :, c2] += (a * A[:, c, c2, None]).T @ a
        for c in range(C):
            for c2 in range(c + 1, C):
                HW[c2, :, c] = HW[c, :, c2].T
        H = torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        H[index[:, None], index[None, :]] = HW.reshape(C * dt, C * dt) / self.n
        H.diagonal().add_(self.decay)
        return 0.5 * (H + H.T)

    def _head_index(self, name: str) -> tuple[torch.Tensor, bool]:
        """Where W̃ = [W, b] of the Linear head ``name`` sits in θ: ``index [C, d̃]`` (column d the
        bias, if it has one), and whether it has one."""
        module = self.model.get_submodule(name)
        C, d, bias = module.out_features, module.in_features, module.bias is not None
        prefix = f"{name}." if name else ""
        offsets = dict(zip(self.param_names, np.cumsum([0, *self.sizes[:-1]]).tolist()))
        index = offsets[f"{prefix}weight"] + torch.arange(C * d, device=self.device).reshape(C, d)
        if bias:  # column d of W̃ = [W, b] is the bias
            index = torch.cat([index, offsets[f"{prefix}bias"] + torch.arange(C, device=self.device)[:, None]], dim=1)
        return index, bias

    def _head_grads(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example gradients ``[B, p]`` when the explained parameters are one Linear head: the
        rank-one ∂L/∂oᵢ ãᵢᵀ (output gradient times the layer's input with a 1 appended), no
        per-example autograd through the model."""
        name = self._linear_head()
        index, bias = self._head_index(name)
        a, out = self._head_inputs(name, X)
        if bias:
            a = torch.cat([a, a.new_ones(len(a), 1)], dim=1)
        D = self._output_derivatives(out, y)[0]  # [B, C]
        G = a.new_empty(len(a), self.p)
        G[:, index.reshape(-1)] = (D[:, :, None] * a[:, None, :]).reshape(len(a), -1)
        return G.detach()

    def _output_derivatives(self, out: torch.Tensor, y: torch.Tensor, second: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """∂Lᵢ/∂oᵢ ``[B, C]`` and, with ``second``, ∂²Lᵢ/∂oᵢ² ``[B, C, C]`` for model outputs ``out``,
        by plain autograd on the outputs (Lᵢ depends on its own row only, so the gradient of ΣLᵢ
        holds every row's; C more backward passes give the Hessians). No torch.func transform:
        nothing to warm up (vmap(grad) costs ~1 s on its first call in a process)."""
        o = out.detach().reshape(len(out), -1).requires_grad_(True)
        loss_of_out = lambda row, t: self.loss_fn(row.reshape(self.output_shape), t)  # noqa: E731
        with torch.enable_grad():
            total = vmap(loss_of_out)(o, y).sum()
            (D,) = torch.autograd.grad(total, o, create_graph=second)
            if not second:
                return D.detach(), None
            if not D.requires_grad:  # the loss is linear in the outputs
                return D.detach(), o.new_zeros(len(o), o.shape[1], o.shape[1])
            rows = [torch.autograd.grad(D[:, c].sum(), o, retain_graph=True, allow_unused=True)[0]
                    for c in range(o.shape[1])]
        A = torch.stack([torch.zeros_like(o) if r is None else r for r in rows], dim=1)
        return D.detach(), A.detach()

    def _head_terms(self, name: str, bias: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(ã [B, d̃], A [B, C, C]) over training chunks; kept in memory when they fit in ``cache_bytes``."""
        if self._head_cache is not None:
            yield from self._head_cache
            return
        terms: list | None = []  # None once they outgrow cache_bytes: memory stays bounded in n
        size = 0
        for s in self.chunks(self.n):
            a, out = self._head_inputs(name, self.X[s])
            if bias:
                a = torch.cat([a, a.new_ones(len(a), 1)], dim=1)
            A = self._output_derivatives(out, self.y[s], second=True)[1]
            size += (a.numel() + A.numel()) * self.theta.element_size()
            terms = terms if terms is not None and size <= self.cache_bytes else None
            if terms is not None:
                terms.append((a.detach(), A))
            yield a.detach(), A
        self._head_cache = terms

    def gauss_newton_factors(self, rows) -> torch.Tensor:
        """U_i = J_iᵀ A_i^{1/2} for training rows, ``[k, p, C]``: J_i the output Jacobian, A_i the
        loss Hessian in the outputs, so U_i U_iᵀ is the example's Gauss-Newton matrix (its whole
        Hessian when the output is linear in θ)."""
        X, y = self.X[rows], self.y[rows]
        out_fn = lambda th, x: self.outputs(x.unsqueeze(0), th).reshape(-1)  # noqa: E731
        J = vmap(jacrev(out_fn), in_dims=(None, 0))(self.theta, X)  # [k, C, p]
        A = self._output_derivatives(self.outputs(X), y, second=True)[1]  # [k, C, C]
        evals, evecs = torch.linalg.eigh(0.5 * (A + A.transpose(1, 2)))
        root = evecs * evals.clamp_min(0).sqrt()[:, None, :]  # A = root rootᵀ
        return (J.transpose(1, 2) @ root).detach()

    def is_linear_in_params(self) -> bool:
        """Whether the model output is linear in θ (its Jacobian does not change with θ); cached."""
        if getattr(self, "_linear_in_params", None) is None:
            x = self.X[:2]
            jac = lambda th: jacrev(lambda t: self.outputs(x, t))(th)  # noqa: E731
            gen = torch.Generator(device="cpu").manual_seed(0)
            shift = torch.randn(self.p, generator=gen, dtype=self.dtype).to(self.device)
            J0, J1 = jac(self.theta), jac(self.theta + shift * (1 + self.theta.abs()))
            self._linear_in_params = bool(torch.allclose(J0, J1, rtol=1e-6, atol=1e-9))
        return self._linear_in_params

    def mixed_grad(self, S: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇ₓ(s·∇θL(x, y)) for every s in ``S [m, p]`` and every row of X: ``[m, N, *x.shape]``."""
        if not X.is_floating_point():
            raise TypeError(f"pert_loss needs continuous inputs; X has dtype {X.dtype}")

        def directional(x, yy, s):  # s·∇θL(x) = d/dε L(x, θ + εs)
            return jvp(lambda th: self._example_loss(th, x, yy), (self.theta,), (s,))[1]

        per_train = vmap(grad(directional), in_dims=(0, 0, None))
        per_test = vmap(per_train, in_dims=(None, None, 0))
        return torch.cat([per_test(X[s], y[s], S).detach() for s in self.chunks(len(X))], dim=1)

    # ------------------------------------------------------------------ predictions and input gradients
    @property
    def is_regression(self) -> bool:
        """True for ``squared_error``: predictions are the outputs themselves, not classes."""
        return self.loss_name == "squared_error"

    def predict(self, X=None, theta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, confidence) for each row of X (training data by default) at θ (default θ̂).

        Classes from softmax over C outputs, or from a sigmoid of one output (class 1 when the
        score is > 0); for regression the first output and a NaN confidence.
        """
        X = self.X if X is None else torch.as_tensor(X, device=self.device)
        if X.is_floating_point():
            X = X.to(self.dtype)
        with torch.no_grad():
            out = torch.cat([self.outputs(X[s], theta) for s in self.chunks(len(X))]).reshape(len(X), -1)
        if self.is_regression:
            return out[:, 0], torch.full((len(X),), float("nan"), dtype=out.dtype, device=out.device)
        if out.shape[1] == 1:
            p1 = torch.sigmoid(out[:, 0])
            pred = (p1 > 0.5).long()
            return pred, torch.where(pred == 1, p1, 1 - p1)
        conf, pred = torch.softmax(out, dim=1).max(dim=1)
        return pred, conf

    def input_grads(self, X, y) -> torch.Tensor:
        """∇ₓL(x, y, θ̂) for each row, shaped like X (which input features push the loss up)."""
        X, y = self._data(X, y)
        if not X.is_floating_point():
            raise TypeError(f"input gradients need continuous inputs; X has dtype {X.dtype}")
        per_example = vmap(grad(self._example_loss, argnums=1), in_dims=(None, 0, 0))
        return torch.cat([per_example(self.theta, X[s], y[s]).detach() for s in self.chunks(len(X))])

    # ------------------------------------------------------------------ parameters
    def with_theta(self, theta: torch.Tensor) -> Objective:
        """A shallow copy of this objective at other parameters (the model is not touched)."""
        clone = object.__new__(Objective)
        clone.__dict__.update(self.__dict__)
        clone.theta = theta.detach().to(self.dtype).reshape(-1)
        clone._train_grads = clone._head_cache = None
        return clone

    def with_data(self, X, y) -> Objective:
        """A shallow copy on other training data (e.g. with a point replaced), same θ."""
        clone = self.with_theta(self.theta)
        clone.X, clone.y = self.check_data(X, y, "training")
        return clone

    def with_rows(self, rows: Sequence[int], X_rows) -> Objective:
        """A shallow copy whose training inputs ``rows`` are replaced by ``X_rows`` (same θ and labels);
        only the new rows are validated, so changing a few rows of a large set stays cheap."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.device).reshape(-1)
        X_new = torch.as_tensor(X_rows, device=self.device)
        if X_new.is_floating_point():
            X_new = X_new.to(self.dtype)
        if X_new.shape != (len(idx), *self.X.shape[1:]):
            raise ValueError(f"X_rows must have shape {(len(idx), *self.X.shape[1:])}, got {tuple(X_new.shape)}")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise ValueError(f"rows must be training indices in [0, {self.n})")
        _check_finite(X_new, "training X")
        clone = self.with_theta(self.theta)
        clone.X = self.X.clone()
        clone.X[idx] = X_new
        return clone

    def to(self, device: str | torch.device) -> Objective:
        """This objective on another device (the model is moved in place; θ̂ is kept)."""
        theta = self.theta.to(device)
        self.model.to(device)
        return self._rebuilt(self.model, self.X.to(device), self.y.to(device), theta)

    def _rebuilt(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> Objective:
        """This problem (loss, weight decay, explained parameters, batching) on another model copy or data placement, at θ."""
        return Objective(model, self.loss_fn, X, y, weight_decay=self.weight_decay, params=self.param_names,
                         batch_size=self.batch_size, cache_bytes=self.cache_bytes).with_theta(theta)

    def cast(self, dtype: torch.dtype) -> Objective:
        """A copy of this objective in another floating dtype (a copy of the model, floating data
        cast, θ̂ kept): e.g. float32 products for a solver that checks its answer in float64."""
        if self.dtype == dtype:
            return self
        X = self.X.to(dtype) if self.X.is_floating_point() else self.X
        return self._rebuilt(copy.deepcopy(self.model).to(dtype), X, self.y, self.theta.to(dtype))

    def write_to_model(self, theta: torch.Tensor | None = None) -> None:
        """Copy θ (default θ̂) into the model's parameters."""
        named = dict(self.model.named_parameters())
        pieces = torch.split((self.theta if theta is None else theta).detach(), self.sizes)
        with torch.no_grad():
            for name, piece, shape in zip(self.param_names, pieces, self.shapes):
                named[name].copy_(piece.view(shape))


class LinearisedGradient:
    """H·V by reverse-over-reverse differentiation with ∇R's graph kept between calls.

    The first call runs, per training chunk, the forward pass and a create-graph backward pass
    giving gₛ = Σᵢ∈ₛ ∇L(zᵢ, θ̂) as a function of θ; every product is then Σₛ ∂(gₛ·v)/∂θ / n +
    d ⊙ v, one backward pass through the kept graphs per vector. This avoids re-running the
    forward and first backward pass for every product (as forward-over-reverse ``torch.func``
    products do) and torch.func's per-call transform overhead: on the digits MLP and CNN one
    product costs about one and two forward+backward passes. The graphs are kept while the
    bytes they save stay within ``objective.cache_bytes``; above that each call rebuilds them
    chunk by chunk, so memory stays flat in n.
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self._graphs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._keep = True
        self.saved_bytes = 0  # what the kept (or last built) graphs hold

    def _chunk_graphs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if self._graphs:
            yield from self._graphs
            return
        obj = self.objective
        kept, used = [], 0
        for s in obj.chunks(obj.n):
            theta, g, size = _gradient_graph(obj, obj.X[s], obj.y[s])
            used += size
            self._keep = self._keep and used <= obj.cache_bytes
            if self._keep:
                kept.append((theta, g))
            yield theta, g
        self.saved_bytes = used
        self._graphs = kept if self._keep else []

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        V = V.reshape(-1, obj.p)
        out = torch.zeros_like(V)
        for theta, g in self._chunk_graphs():
            out += _graph_products(theta, g, V)
        return out / obj.n + obj.decay * V


def _gradient_graph(obj: Objective, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(θ as a leaf, g = Σᵢ∇L(zᵢ, θ) over the rows with its graph, bytes the graph saves); g is None
    when the loss is linear in θ on these rows (no curvature)."""
    theta = obj.theta.detach().requires_grad_(True)
    size = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        size[0] += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total = obj._batch_losses(theta, X, y).sum()
        g = torch.autograd.grad(total, theta, create_graph=True)[0] if total.requires_grad else None
    return theta, (g if g is not None and g.requires_grad else None), size[0]


def _graph_products(theta: torch.Tensor, g: torch.Tensor | None, V: torch.Tensor) -> torch.Tensor:
    """∂(g·v)/∂θ for every row v of ``V [k, p]``: one backward pass through g's graph each."""
    out = torch.zeros_like(V)
    if g is None:
        return out
    for j, v in enumerate(V):
        (hv,) = torch.autograd.grad(g, theta, v, retain_graph=True, allow_unused=True)
        if hv is not None:
            out[j] = hv
    return out
