r"""K-FAC: Kronecker-factored Gauss-Newton curvature (Martens & Grosse 2015; Grosse & Martens 2016).

A factored layer computes s = M ā, with M = [W | b] its ``[d_out, d_in]`` layer matrix (the
weight flattened to rows, the bias as a last column) and ā its input with a 1 appended. Its
per-example gradient is ∇_M L = Σ_t δ_t ā_tᵀ, a sum over the layer's T uses in one example
(T = 1 for a Linear layer on ``[B, d]`` inputs, T = output positions for a Conv2d layer, whose
input is unfolded into patches). K-FAC approximates the layer's block of the Gauss-Newton matrix
(1/n)Σᵢ Jᵢᵀ Λᵢ Jᵢ as G ⊗ A (row-major vectorisation of M) with

    A = (1/n) Σᵢ (1/T) Σ_t ā_t ā_tᵀ,        G = (1/n) Σᵢ Σ_k Σ_t δ_t^k δ_t^kᵀ,

where δ^k = ∂(u_kᵀ f)/∂s are the layer's output gradients for the cotangents u_k of the chosen
``fisher``:

* ``"sampled"`` (default): one target per example drawn from the model's predictive distribution
  (the true Fisher, which equals the Gauss-Newton matrix for cross-entropy, logistic and squared
  error); one backward pass, a Monte-Carlo estimate of G.
* ``"ggn"``: the exact output-Hessian factorisation Λᵢ = Σ_k u_k u_kᵀ (eigen-roots, ≤ C columns);
  C backward passes, no sampling. With one example and T = 1, G ⊗ A is exactly the layer's
  Gauss-Newton block.
* ``"empirical"``: the observed labels' gradients (the empirical Fisher; not a curvature of the
  loss, kept for comparison with libraries that use it).

Damping: K-FAC inverts (G + (√λ/π) I) ⊗ (A + π√λ I), λ = weight_decay + damping and
π = √((tr A / d_in)/(tr G / d_out)) (Martens & Grosse's factored Tikhonov damping, ≈ G⊗A + λI).
It keeps the inverse a Kronecker product, so a rank-one test gradient δₜāₜᵀ stays rank one after
the solve and ``whybox.KFACInfluence`` scores a training point as (δᵢᵀG⁻¹δₜ)(āₜᵀA⁻¹āᵢ).
``EKFAC`` (ekfac.py) adds λ exactly in the Kronecker eigenbasis instead.

Parameters outside factorable layers (embeddings, LayerNorm, the projections inside
``nn.MultiheadAttention``, which it calls through ``F.multi_head_attention_forward`` and not as
modules, Conv2d with groups or non-zero padding modes, parameters shared between modules) can fall
back to a diagonal Gauss-Newton block from per-example gradients (K backward passes per chunk,
vmapped, and a ``[rows, K, p_left]`` tensor): ``fallback="diagonal"``. The default ``"auto"`` does
that (and warns naming them) only while those gradients are no larger per example than what the
factored layers capture per example; otherwise it refuses and names the fix,
``Objective(..., params=factorable_params(model))`` (explain the factored layers only, as
Kronfluence does) or ``fallback="diagonal"``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vjp, vmap

from whybox.curvature.base import Curvature, NotPositiveDefiniteError
from whybox.objective import Objective

FISHER = ("sampled", "ggn", "empirical")
FALLBACK = ("auto", "diagonal", "error")
LIKELIHOOD_LOSSES = ("cross_entropy", "logistic", "squared_error")
_CHUNK_BYTES = 256 * 2**20  # captured activations and output gradients per chunk


@dataclass
class KroneckerLayer:
    """One factored layer: its parameters' place in θ and, once fitted, its factors.

    ``index[o * d_in + j]`` is the position in θ of the layer matrix entry M[o, j].
    """

    module: str
    kind: str  # "linear" or "conv2d"
    weight: str | None  # the weight's name in objective.param_names, if it is explained
    bias: str | None
    d_out: int
    d_in: int
    index: torch.Tensor
    A: torch.Tensor | None = None  # [d_in, d_in]
    G: torch.Tensor | None = None  # [d_out, d_out]
    eig_A: tuple[torch.Tensor, torch.Tensor] | None = None  # (eigenvalues, eigenvectors), EK-FAC only
    eig_G: tuple[torch.Tensor, torch.Tensor] | None = None
    extra: dict = field(default_factory=dict)  # solver-specific state (damped inverses, EK-FAC diagonal)

    @property
    def params(self) -> list[str]:
        return [p for p in (self.weight, self.bias) if p is not None]

    def take(self, V: torch.Tensor) -> torch.Tensor:
        """The layer's part of flat vectors ``V [k, p]`` as matrices ``[k, d_out, d_in]``."""
        return V[:, self.index].reshape(len(V), self.d_out, self.d_in)

    def put(self, out: torch.Tensor, M: torch.Tensor) -> None:
        """Write layer matrices ``M [k, d_out, d_in]`` into flat vectors ``out [k, p]``."""
        out[:, self.index] = M.reshape(len(M), -1)


@dataclass
class ChunkGrads:
    """Captured layer inputs and output gradients of one chunk of examples.

    ``layers[l] = (a [B, T, d_in], D [K, B, T, d_out])``: per-example gradient k of layer l is
    Σ_t D[k, b, t] a[b, t]ᵀ. ``left [K, B, p_left]``: the per-example gradients of the parameters
    that no layer factors (None when there are none). K = 1 for true-label gradients.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    left: torch.Tensor | None


# ---------------------------------------------------------------------------- which layers
def _factorable(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros" and (
        not isinstance(module.padding, str) or module.padding == "valid"
    ):
        return "conv2d"
    return None


def factorable_params(model: nn.Module) -> list[str]:
    """Names of the parameters K-FAC factors in ``model``: weights and biases of its ``nn.Linear``
    and ``nn.Conv2d`` modules (zero padding, no groups), each owned by one module. Pass them as
    ``Objective(model, ..., params=factorable_params(model))`` to explain only those layers (the
    rest frozen), e.g. a transformer's feed-forward and head layers. A weight also used outside
    its module's forward (tied) is caught when the curvature is fitted."""
    owners: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for t in module.parameters(recurse=False):
            owners[id(t)] = owners.get(id(t), 0) + 1
    mine = {id(t) for m in model.modules() if _factorable(m) for t in m.parameters(recurse=False) if owners[id(t)] == 1}
    return [name for name, t in model.named_parameters() if id(t) in mine]


def find_layers(objective: Objective) -> tuple[list[KroneckerLayer], list[str]]:
    """The factorable layers among the explained parameters, and the names of the rest."""
    canonical = {id(t): name for name, t in objective.model.named_parameters()}
    owners: dict[str, int] = {}
    for _, module in objective.model.named_modules(remove_duplicate=False):
        for t in module.parameters(recurse=False):
            owners[canonical[id(t)]] = owners.get(canonical[id(t)], 0) + 1
    offsets = dict(zip(objective.param_names, torch.tensor([0, *objective.sizes[:-1]]).cumsum(0).tolist()))
    layers = []
    for path, module in objective.model.named_modules():
        kind = _factorable(module)
        if kind is None:
            continue
        w = canonical[id(module.weight)]
        b = canonical[id(module.bias)] if module.bias is not None else None
        names = [n for n in (w, b) if n is not None and n in offsets and owners[n] == 1]
        if not names:
            continue
        w = w if w in names else None
        b = b if b in names else None
        d_out = module.weight.shape[0]
        per_row = module.weight[0].numel()
        cols = []
        if w is not None:
            cols.append(offsets[w] + torch.arange(d_out)[:, None] * per_row + torch.arange(per_row)[None, :])
        if b is not None:
            cols.append(offsets[b] + torch.arange(d_out)[:, None])
        index = torch.cat(cols, 1)
        layers.append(KroneckerLayer(path, kind, w, b, d_out, index.shape[1], index.reshape(-1).to(objective.device)))
    covered = {n for layer in layers for n in layer.params}
    return layers, [n for n in objective.param_names if n not in covered]


# ---------------------------------------------------------------------------- one pass over a chunk
class _Capture:
    """Forward hooks on the factored modules: record each call's input rows ā ``[B, T, d_in]`` and
    its output s, kept in the autograd graph (a leaf if nothing upstream needs gradients) so that
    ∂/∂s can be taken. The hook returns a clone, so in-place activations cannot alter s."""

    def __init__(self, objective: Objective, layers: list[KroneckerLayer]) -> None:
        modules = dict(objective.model.named_modules())
        self.targets = [(modules[layer.module], layer) for layer in layers]
        self.inputs: list[list[torch.Tensor]] = [[] for _ in layers]
        self.outputs: list[list[torch.Tensor]] = [[] for _ in layers]

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook(i)) for i, (m, _) in enumerate(self.targets)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, i: int):
        layer = self.targets[i][1]

        def hook(mod, inputs, output):
            x = inputs[0].detach()
            if layer.kind == "conv2d":
                pad = 0 if mod.padding == "valid" else mod.padding
                x = F.unfold(x, mod.kernel_size, mod.dilation, pad, mod.stride).transpose(1, 2)
            else:
                x = x.reshape(len(x), -1, x.shape[-1])
            parts = [x] if layer.weight is not None else []
            if layer.bias is not None:
                parts.append(x.new_ones(*x.shape[:2], 1))
            self.inputs[i].append(torch.cat(parts, 2))
            if not output.requires_grad:
                output.requires_grad_()
            self.outputs[i].append(output)
            return output.clone()

        return hook

    def rows(self, i: int, s_grads: list[torch.Tensor]) -> torch.Tensor:
        """Output gradients of layer i's calls as ``[B, T, d_out]``."""
        layer = self.targets[i][1]
        parts = []
        for g in s_grads:
            if layer.kind == "conv2d":
                parts.append(g.reshape(len(g), layer.d_out, -1).transpose(1, 2))
            else:
                parts.append(g.reshape(len(g), -1, layer.d_out))
        return _cat(parts, 1)


def sample_targets(objective: Objective, out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One target per row drawn from the model's predictive distribution (outputs ``out [B, C]``)."""
    name = objective.loss_name
    if name == "cross_entropy":
        return torch.multinomial(torch.softmax(out, 1), 1, generator=generator).squeeze(1)
    if name == "logistic":
        return torch.bernoulli(torch.sigmoid(out[:, 0]), generator=generator)
    if name == "squared_error":
        return out + torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    raise ValueError(
        f"fisher='sampled' draws targets from the model's likelihood, and loss {name!r} has none "
        f"(sampling is defined for {', '.join(LIKELIHOOD_LOSSES)}); use fisher='ggn' (exact "
        "output-Hessian factorisation) instead"
    )


def output_cotangents(
    objective: Objective, out: torch.Tensor, y: torch.Tensor, fisher: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Cotangents ``u [K, B, C]`` of the flattened outputs whose pull-backs give the curvature's
    gradients: the loss gradient at the observed (``"empirical"``) or sampled targets, or the
    columns of a root of the output Hessian (``"ggn"``). Plain autograd over a vmapped loss (no
    ``torch.func.grad``, whose first call in a process imports torch._dynamo)."""
    flat = out.detach().reshape(len(out), -1).requires_grad_()
    if fisher == "sampled":
        y = sample_targets(objective, flat.detach(), generator)
    loss_of_out = lambda o, t: objective.loss_fn(o.reshape(objective.output_shape), t)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(vmap(loss_of_out)(flat, y).sum(), flat, create_graph=fisher == "ggn")
        if fisher != "ggn":
            return g.detach()[None]
        rows = [torch.autograd.grad(g[:, c].sum(), flat, retain_graph=True, allow_unused=True)[0] if g.requires_grad else None
                for c in range(flat.shape[1])]
    H = torch.stack([torch.zeros_like(flat) if r is None else r for r in rows], 1).detach()  # [B, C, C]
    evals, evecs = torch.linalg.eigh(0.5 * (H + H.mT))
    tiny = torch.finfo(evals.dtype).eps * evals.abs().max().clamp_min(torch.finfo(evals.dtype).tiny)
    keep = evals.amax(0) > tiny
    roots = evecs[:, :, keep] * evals[:, keep].clamp_min(0).sqrt()[:, None, :]  # Λ = roots rootsᵀ
    return roots.permute(2, 0, 1)


def chunk_grads(
    objective: Objective,
    layers: list[KroneckerLayer],
    left: list[str],
    X: torch.Tensor,
    y: torch.Tensor,
    fisher: str = "empirical",
    generator: torch.Generator | None = None,
) -> ChunkGrads:
    """One forward pass and K backward passes over a chunk: each factored layer's inputs and
    output gradients, and the per-example gradients of the ``left`` parameters."""
    with torch.enable_grad(), _Capture(objective, layers) as cap:
        out = objective.outputs(X)
        U = output_cotangents(objective, out, y, fisher, generator)
        sources = [s for outs in cap.outputs for s in outs]
        D = [[] for _ in layers]
        for k in range(len(U)):
            gs = torch.autograd.grad(out, sources, U[k].reshape(out.shape), retain_graph=k < len(U) - 1, allow_unused=True)
            gs = [torch.zeros_like(s) if g is None else g for s, g in zip(sources, gs)]
            pos = 0
            for i, outs in enumerate(cap.outputs):
                D[i].append(cap.rows(i, gs[pos : pos + len(outs)]))
                pos += len(outs)
    missing = [layer.module for layer, a in zip(layers, cap.inputs) if not a]
    if missing:
        raise ValueError(f"layers {missing} were not called in the model's forward pass; leave their parameters out (params=...)")
    pairs = [(_cat(a, 1), d[0][None] if len(d) == 1 else torch.stack(d)) for a, d in zip(cap.inputs, D)]
    rest = _left_grads(objective, left, X, U) if left else None
    return ChunkGrads(pairs, rest)


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat`` without the copy when there is one part (a layer called once)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _left_grads(objective: Objective, names: list[str], X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Per-example gradients ``[K, B, p_left]`` of the unfactored parameters, u_kᵀ J_left: one
    vector-Jacobian product per cotangent (K backward passes, vmapped over the rows)."""
    idx = left_index(objective, names)

    def pulled(theta_left, x, u):  # u [K, C]
        def out(t):
            return objective.outputs(x.unsqueeze(0), torch.index_copy(objective.theta, 0, idx, t)).reshape(-1)

        _, pull = vjp(out, theta_left)
        return vmap(lambda uk: pull(uk)[0])(u)

    return vmap(pulled, in_dims=(None, 0, 1), out_dims=1)(objective.theta[idx], X, U).detach()


def _param_index(objective: Objective, name: str) -> torch.Tensor:
    i = objective.param_names.index(name)
    start = sum(objective.sizes[:i])
    return torch.arange(start, start + objective.sizes[i], device=objective.device)


def left_index(objective: Objective, names: list[str]) -> torch.Tensor:
    """Positions in θ of the unfactored parameters, in the order of ``ChunkGrads.left``."""
    if not names:
        return torch.zeros(0, dtype=torch.long, device=objective.device)
    return torch.cat([_param_index(objective, n) for n in names])


def captured_per_example(layers: list[KroneckerLayer], probe: ChunkGrads, K: int) -> int:
    """Values one example's captured layer inputs and K output gradients take."""
    return sum(a[0].numel() + K * D[0, 0].numel() for a, D in probe.layers)


def rows_per_chunk(objective: Objective, layers: list[KroneckerLayer], K: int, p_left: int = 0) -> int:
    """Examples per chunk: ``objective.batch_size``, fewer when one example's captured rows
    (unfolded Conv2d patches, K output gradients) and K fallback gradients of ``p_left`` values
    would pass 256 MiB in a chunk. Checks on the first example that each layer's gradient is
    Σ_t δ_t ā_tᵀ of its forward calls."""
    probe = chunk_grads(objective, layers, [], objective.X[:1], objective.y[:1])
    theta = objective.theta.detach().requires_grad_()
    with torch.enable_grad():
        loss = objective.loss_fn(objective.outputs(objective.X[:1], theta)[0], objective.y[0])
        (g,) = torch.autograd.grad(loss, theta)
    for layer, (a, D) in zip(layers, probe.layers):
        ours, ref = torch.einsum("bto,bti->boi", D[0], a), layer.take(g[None])
        if not torch.allclose(ours, ref, rtol=1e-4, atol=1e-6 * max(ref.abs().max().item(), 1e-30)):
            raise ValueError(
                f"layer {layer.module!r}: its parameters' gradient is not the one its forward calls give "
                "(is its weight also used outside its forward, e.g. tied or passed to a functional call?); "
                "leave it out of the explained parameters (params=...)"
            )
    per = (sum(a.numel() + K * d.numel() for a, d in probe.layers) + K * p_left) * objective.theta.element_size()
    return max(1, min(objective.batch_size, _CHUNK_BYTES // max(per, 1)))


# ---------------------------------------------------------------------------- the curvature
class KFAC(Curvature):
    """Block-diagonal Kronecker-factored Gauss-Newton curvature, factors from one pass over the data.

    Args:
        damping: added to weight decay; enters as factored Tikhonov damping (see the module text).
        fisher: ``"sampled"`` (true Fisher, one sampled target per example), ``"ggn"`` (exact
            output-Hessian factorisation, C backward passes) or ``"empirical"`` (observed labels).
        seed: for the sampled targets.
        strict: raise ``InaccurateSolveError`` instead of warning when a check fails (a flat solve's
            residual; ``KFACInfluence``'s measured low-rank EK-FAC error).
        fallback: what to do with explained parameters outside factorable layers: ``"diagonal"``
            (a diagonal Gauss-Newton block from their per-example gradients), ``"error"`` (refuse),
            or ``"auto"`` (default): diagonal, with a warning, while their per-example gradients
            are no larger than what the factored layers capture per example, else refuse. The
            refusal names ``Objective(..., params=factorable_params(model))``.

    ``solve`` applies the inverse to flat vectors in ``objective.param_names`` order, so
    ``InfluenceFunction(objective, KFAC())`` works unchanged; ``whybox.KFACInfluence`` scores
    without per-example gradients. ``layers`` holds the fitted factors; ``diagnostics`` the layers,
    the fallback parameters and the factors' extreme eigenvalues.
    """

    def __init__(self, damping: float = 0.0, fisher: str = "sampled", seed: int = 0, fallback: str = "auto",
                 strict: bool = False) -> None:
        super().__init__(damping, strict=strict, curvature="ggn")  # a Kronecker-factored Gauss-Newton/Fisher, whatever `fisher` is
        if fisher not in FISHER:
            raise ValueError(f"fisher must be one of {FISHER}, got {fisher!r}")
        if fallback not in FALLBACK:
            raise ValueError(f"fallback must be one of {FALLBACK}, got {fallback!r}")
        self.fisher = fisher
        self.seed = seed
        self.fallback = fallback

    # ------------------------------------------------------------------ fitting
    @property
    def shift(self) -> float:
        """λ = weight decay + damping: what the curvature adds to the Gauss-Newton matrix. The
        Kronecker factors need one λ, so a per-parameter weight decay is refused."""
        decay = self._fitted().weight_decay
        if not isinstance(decay, (int, float)):
            raise ValueError("KFAC/EKFAC need one weight decay for every parameter; this objective has "
                             f"per-parameter decay {decay}; use CG() or Exact() for it")
        return decay + self.damping

    @property
    def layers(self) -> list[KroneckerLayer]:
        """The factored layers with their fitted factors."""
        self._check_fitted()
        return self._layers

    @property
    def fallback_params(self) -> list[str]:
        """Explained parameters outside factorable layers (diagonal Gauss-Newton block)."""
        self._check_fitted()
        return self._left

    @property
    def chunk_rows(self) -> int:
        """Examples per chunk in every pass (``objective.batch_size``, fewer for large Conv2d patches)."""
        self._check_fitted()
        return self._rows

    def _check_fitted(self) -> None:
        if not hasattr(self, "_layers"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit(objective) first")

    def fit(self, objective: Objective) -> KFAC:
        super().fit(objective)
        if self.fisher == "sampled" and objective.loss_name not in LIKELIHOOD_LOSSES:
            raise ValueError(
                f"fisher='sampled' draws targets from the model's likelihood, and loss {objective.loss_name!r} "
                f"has none (sampling is defined for {', '.join(LIKELIHOOD_LOSSES)}); use "
                f"{type(self).__name__}(fisher='ggn') (exact output-Hessian factorisation) instead"
            )
        self._layers, self._left = find_layers(objective)
        self._left_idx = left_index(objective, self._left)
        K = 1 if self.fisher != "ggn" else max(1, math.prod(objective.output_shape))
        if self._left:
            self._check_fallback(objective, K)
        self._rows = rows_per_chunk(objective, self._layers, K, len(self._left_idx))
        dev = objective.device
        acc_A = [torch.zeros(l.d_in, l.d_in, dtype=torch.float64, device=dev) for l in self._layers]
        acc_G = [torch.zeros(l.d_out, l.d_out, dtype=torch.float64, device=dev) for l in self._layers]
        diag = torch.zeros(len(self._left_idx), dtype=torch.float64, device=dev)
        for cg in self._passes(self._left):
            for i, (a, D) in enumerate(cg.layers):
                a2, D2 = a.reshape(-1, a.shape[-1]), D.reshape(-1, D.shape[-1])
                acc_A[i] += gram(a2).double() / a.shape[1]
                acc_G[i] += gram(D2).double()
            if cg.left is not None:
                diag += (cg.left**2).sum((0, 1)).double()
        for layer, A, G in zip(self._layers, acc_A, acc_G):
            layer.A, layer.G = (A / objective.n).to(objective.dtype), (G / objective.n).to(objective.dtype)
        self.left_diagonal = (diag / objective.n).to(objective.dtype)
        if len(self.left_diagonal) and not (self.left_diagonal + self.shift).min() > 0:
            raise NotPositiveDefiniteError(
                f"the diagonal Gauss-Newton block of {self._left} has zero entries and damping + weight "
                f"decay is 0; add damping, e.g. {type(self).__name__}(damping={suggest_damping(self.left_diagonal.mean().item()):.2g})"
            )
        self._prepare()
        return self

    def _check_fallback(self, objective: Objective, K: int) -> None:
        """Refuse, or warn about, the diagonal block of the unfactored parameters (``fallback``)."""
        name, p_left = type(self).__name__, len(self._left_idx)
        probe = chunk_grads(objective, self._layers, [], objective.X[:1], objective.y[:1]) if self._layers else None
        captured = captured_per_example(self._layers, probe, K) if probe else 0
        what = (f"{name} factors nn.Linear and nn.Conv2d layers called as modules (not embeddings, LayerNorm or "
                f"nn.MultiheadAttention's projections); parameters {_short(self._left)} ({p_left:,} values) "
                "would get a diagonal Gauss-Newton block from their per-example gradients")
        fix = (f"explain the factored layers only with Objective(model, ..., params=whybox.factorable_params(model)) "
               f"(the others frozen, as Kronfluence does), or accept the diagonal block with {name}(fallback='diagonal')")
        if self.fallback == "error" or (self.fallback == "auto" and K * p_left > captured):
            size = "" if self.fallback == "error" else (
                f", {K * p_left:,} values per example against the {captured:,} the factored layers capture: "
                "slower than the factored part and most of the memory")
            raise ValueError(f"{what}{size}; {fix}")
        warnings.warn(f"{what} (slower, and blind to correlations); to leave them out: {fix.split(', or')[0]}",
                      RuntimeWarning, stacklevel=3)

    def _passes(self, left: list[str]):
        """Chunks of one pass over the training data with this curvature's gradients (the same
        sampled targets on every pass: the generator is re-seeded)."""
        obj = self._fitted()
        gen = torch.Generator(device=obj.device).manual_seed(self.seed)
        for s in obj.chunks(obj.n, self._rows):
            yield chunk_grads(obj, self._layers, left, obj.X[s], obj.y[s], self.fisher, gen)

    def _prepare(self) -> None:
        """Damped factor inverses (factored Tikhonov damping, Cholesky); refuses singular ones."""
        lam = self.shift
        info = {}
        for layer in self._layers:
            A, G = layer.A.double(), layer.G.double()
            mean_a, mean_g = A.trace().item() / layer.d_in, G.trace().item() / layer.d_out
            pi = math.sqrt(mean_a / mean_g) if mean_a > 0 and mean_g > 0 else 1.0
            A_d = A + pi * math.sqrt(lam) * torch.eye(layer.d_in, dtype=A.dtype, device=A.device)
            G_d = G + math.sqrt(lam) / pi * torch.eye(layer.d_out, dtype=G.dtype, device=G.device)
            inverses = [self._spd_inverse(M, layer, mean_a * mean_g) for M in (A_d, G_d)]
            dtype = layer.A.dtype
            layer.extra = {"pi": pi, "A_inv": inverses[0].to(dtype), "G_inv": inverses[1].to(dtype),
                           "A_damped": A_d.to(dtype), "G_damped": G_d.to(dtype)}
            info[layer.module] = {"d_out": layer.d_out, "d_in": layer.d_in, "pi": pi,
                                  "A_mean_eigenvalue": mean_a, "G_mean_eigenvalue": mean_g}
        self.diagnostics = {"fisher": self.fisher, "shift": lam, "layers": info, "fallback_params": list(self._left)}

    def _spd_inverse(self, M: torch.Tensor, layer: KroneckerLayer, mean_curvature: float) -> torch.Tensor:
        L, info = torch.linalg.cholesky_ex(M)
        pivots = torch.diagonal(L) ** 2
        if info.item() != 0 or not pivots.min() > 10 * torch.finfo(M.dtype).eps * M.diagonal().max():
            raise NotPositiveDefiniteError(
                f"layer {layer.module!r}: a K-FAC factor is singular (dead units or collinear inputs) and "
                f"damping + weight decay = {self.shift:g}; add damping, e.g. "
                f"{type(self).__name__}(damping={suggest_damping(mean_curvature):.2g})"
            )
        return torch.cholesky_inverse(L)

    # ------------------------------------------------------------------ applying it
    def layer_solve(self, layer: KroneckerLayer, M: torch.Tensor) -> torch.Tensor:
        """The curvature's inverse on layer matrices ``M [k, d_out, d_in]``."""
        return layer.extra["G_inv"] @ M @ layer.extra["A_inv"]

    def layer_apply(self, layer: KroneckerLayer, M: torch.Tensor) -> torch.Tensor:
        """The curvature itself on layer matrices ``M [k, d_out, d_in]``."""
        return layer.extra["G_damped"] @ M @ layer.extra["A_damped"]

    def solve_rank_one(self, layer: KroneckerLayer, d: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The inverse on rank-one layer matrices dₜaₜᵀ (rows ``d [m, d_out]``, ``a [m, d_in]``).

        K-FAC keeps them rank one: returns ``(G⁻¹dₜ, A⁻¹aₜ)`` as ``([m, d_out], [m, d_in])``."""
        return d @ layer.extra["G_inv"], a @ layer.extra["A_inv"]

    def rank_one_quadratic(self, layer: KroneckerLayer, d: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """vec(d aᵀ)ᵀ (curvature)⁻¹ vec(d aᵀ) for rows ``d [B, d_out]``, ``a [B, d_in]``: ``[B]``."""
        return ((d @ layer.extra["G_inv"]) * d).sum(1) * ((a @ layer.extra["A_inv"]) * a).sum(1)

    def left_solve(self, V: torch.Tensor) -> torch.Tensor:
        """The inverse of the diagonal fallback block on ``V [k, p_left]``."""
        return V / (self.left_diagonal + self.shift)

    def _blockwise(self, V: torch.Tensor, on_layer, on_left) -> torch.Tensor:
        obj = self._fitted()
        self._check_fitted()
        V = V.reshape(-1, obj.p)
        out = torch.empty_like(V)
        for layer in self._layers:
            layer.put(out, on_layer(layer, layer.take(V)))
        if len(self._left_idx):
            out[:, self._left_idx] = on_left(V[:, self._left_idx])
        return out

    def _solve(self, V: torch.Tensor) -> torch.Tensor:
        """(K-FAC curvature)⁻¹ V for ``V [k, p]``, block by block. ``solve`` then checks the residual
        against ``matvec`` — the Kronecker-factored system itself, not the exact Hessian."""
        return self._blockwise(V, self.layer_solve, self.left_solve)

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """(K-FAC curvature)·V for ``V [k, p]`` (the approximation, not the Hessian)."""
        return self._blockwise(V, self.layer_apply, lambda v: v * (self.left_diagonal + self.shift))

    def dense(self) -> torch.Tensor:
        """The dense K-FAC curvature ``[p, p]`` (small p only): what second-order effects start from."""
        obj = self._fitted()
        return self.matvec(torch.eye(obj.p, dtype=obj.dtype, device=obj.device))


def _short(names: list[str], k: int = 6) -> str:
    return str(names) if len(names) <= k else f"{names[:k]} and {len(names) - k} more"


def suggest_damping(mean_curvature: float) -> float:
    """A damping that makes singular factors usable: 1e-3 × the mean curvature eigenvalue."""
    return 1e-3 * max(mean_curvature, 1e-12)


# ---------------------------------------------------------------------------- products at BLAS-friendly widths
_ALIGN = 64  # BLAS runs markedly slower on odd widths such as d + 1 (a bias column): split those off


def _split(d: int) -> int:
    main = d - d % _ALIGN
    return main if 0 < main < d else d


def aligned_mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y`` for 2-D tensors, with the ragged ends of the inner and output widths (beyond a
    multiple of 64) computed apart: same result, faster for widths like 513."""
    k, n = _split(x.shape[1]), _split(y.shape[1])
    if k == x.shape[1] and n == y.shape[1]:
        return x @ y
    main = x[:, :k] @ y[:k, :n]
    if k < x.shape[1]:
        main = main.addmm_(x[:, k:], y[k:, :n])
    return main if n == y.shape[1] else torch.cat([main, x @ y[:, n:]], 1)


def gram(x: torch.Tensor) -> torch.Tensor:
    """``xᵀx`` for ``x [B, d]``: the upper block triangle only (column blocks aligned to 64, the
    ragged end apart), mirrored; about 5/8 of a full product for d ≥ 256."""
    d = x.shape[1]
    main = d - d % _ALIGN
    if main < 4 * _ALIGN:
        return x.T @ x
    cuts = [round(i * main / 4 / _ALIGN) * _ALIGN for i in range(5)] + ([d] if main < d else [])
    out = x.new_empty(d, d)
    blocks = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    for i, bi in enumerate(blocks):
        xi = x[:, bi].T
        for bj in blocks[i:]:
            out[bi, bj] = block = xi @ x[:, bj]
            if bj != bi:
                out[bj, bi] = block.T
    return out
