"""Loading the user's own data, models and attributor classes, with one-line errors for every bad input.

Data: ``.npz`` (arrays ``X``, ``y``; optionally ``X_test``, ``y_test``), ``.csv`` (a header row, one
label column, numeric feature columns) or a folder of images with one sub-folder per class.

Models (``load_model``, the one loader for every verb): a TorchScript file (``torch.jit.save``), a
``torch.export`` program (``.pt2``), or a Python file that builds the model, optionally plus a
state-dict checkpoint loaded with ``torch.load(weights_only=True)`` — no arbitrary objects are ever
unpickled. Every problem raises ``ValueError`` (or ``FileNotFoundError``) with one line naming the
problem and the fix.
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

PathLike = Union[str, Path]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def one_line(err: BaseException) -> str:
    """An exception as ``Type: message`` on one line (for error messages that wrap it)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


@dataclass
class Data:
    """One split of the user's data, as numpy arrays, plus what is needed to display it."""

    X: np.ndarray  # float64, [n, features] or [n, C, H, W] for images
    y: np.ndarray  # [n] labels as given (ints, floats or strings)
    feature_names: list[str] = field(default_factory=list)
    image_shape: tuple[int, ...] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.X)


def _exists(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist; check the path")
    return p


def load_data(path: PathLike, label_column: str = "label") -> dict[str, Data]:
    """Load ``{"train": Data}`` (plus ``"test"`` if an .npz carries ``X_test``/``y_test``).

    Args:
        path: an ``.npz`` file, a ``.csv`` file, or a folder ``root/<class>/<image files>``.
        label_column: the CSV column holding the labels.
    """
    p = _exists(path, "data")
    if p.is_dir():
        return {"train": load_image_folder(p)}
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return load_npz(p)
    if suffix == ".csv":
        return {"train": load_csv(p, label_column)}
    raise ValueError(f"data {str(p)!r}: unknown format {suffix or '(no suffix)'}; give a .npz, a .csv or a folder of images")


def load_npz(path: PathLike) -> dict[str, Data]:
    """Arrays ``X`` and ``y`` (or ``X_train``/``y_train``), optionally ``X_test``/``y_test``."""
    p = _exists(path, "data")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise ValueError(f"{p.name} is not a readable .npz file ({one_line(err)}); save it with numpy.savez") from None
    keys = sorted(arrays)
    out: dict[str, Data] = {}
    for split, (xk, yk) in {"train": ("X", "y"), "test": ("X_test", "y_test")}.items():
        if split == "train" and xk not in arrays and "X_train" in arrays:
            xk, yk = "X_train", "y_train"
        if xk not in arrays and yk not in arrays:
            continue
        if xk not in arrays or yk not in arrays:
            raise ValueError(f"{p.name} has {xk if xk in arrays else yk} but not {yk if xk in arrays else xk}; arrays found: {keys}")
        out[split] = _check_arrays(arrays[xk], arrays[yk], f"{p.name}[{xk}]", f"{p.name}[{yk}]")
        out[split].source = str(p)
    if "train" not in out:
        raise ValueError(f"{p.name} needs arrays 'X' and 'y' (or 'X_train' and 'y_train'); found {keys}")
    if "test" in out and out["test"].X.shape[1:] != out["train"].X.shape[1:]:
        raise ValueError(f"{p.name}: X_test rows have shape {out['test'].X.shape[1:]} but X rows {out['train'].X.shape[1:]}")
    return out


def _check_arrays(X: np.ndarray, y: np.ndarray, xname: str, yname: str) -> Data:
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{xname} must hold numbers, got dtype {X.dtype}")
    if X.ndim < 2:
        raise ValueError(f"{xname} must have shape [n, features...], got {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"{yname} must be one label per row (shape [n]), got shape {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"{xname} has {len(X)} rows but {yname} has {len(y)} labels; they must match")
    if len(X) == 0:
        raise ValueError(f"{xname} is empty")
    if y.dtype.kind not in "biufUS":
        raise ValueError(f"{yname} must hold numbers or strings, got dtype {y.dtype}")
    X = X.astype(np.float64)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X.reshape(len(X), -1))).any(1).sum())
        raise ValueError(f"{xname} has NaN or inf in {bad} row(s); remove or impute them first")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{yname} has NaN or inf labels; remove those rows")
    image_shape = tuple(X.shape[1:]) if X.ndim == 4 else None
    return Data(X, y, [f"x{i}" for i in range(int(np.prod(X.shape[1:])))], image_shape)


def load_csv(path: PathLike, label_column: str = "label") -> Data:
    """A CSV with a header row: one label column, every other column a number."""
    p = _exists(path, "data")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise ValueError(f"{p.name} is not a readable CSV file ({one_line(err)})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ValueError(f"{p.name} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise ValueError(f"{p.name} has no label column {label_column!r}; columns are {header[:10]}; pass --label-column")
    if len(set(header)) != len(header):
        raise ValueError(f"{p.name} has repeated column names in its header")
    if len(header) < 2:
        raise ValueError(f"{p.name} has no feature columns besides {label_column!r}")
    li = header.index(label_column)
    feats, labels = [], []
    for line, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise ValueError(f"{p.name} line {line} has {len(r)} fields but the header has {len(header)}")
        try:
            feats.append([float(v) for j, v in enumerate(r) if j != li])
        except ValueError:
            bad = next(j for j, v in enumerate(r) if j != li and not _is_float(v))
            raise ValueError(f"{p.name} line {line}, column {header[bad]!r}: {r[bad][:30]!r} is not a number") from None
        labels.append(r[li].strip())
    y = _labels_array(labels)
    data = _check_arrays(np.asarray(feats, dtype=np.float64), y, p.name, f"{p.name}[{label_column}]")
    data.feature_names = [h for j, h in enumerate(header) if j != li]
    data.source = str(p)
    return data


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _labels_array(labels: list[str]) -> np.ndarray:
    """Integers if every label is one (and fits int64), else floats if every label is a number, else strings."""
    try:
        values = [float(v) for v in labels]
    except ValueError:
        return np.asarray(labels)
    if all(np.isfinite(v) and v == int(v) and abs(v) < 2.0**63 for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray(values, dtype=np.float64)


def load_image_folder(root: PathLike) -> Data:
    """Images under ``root/<class name>/``; all the same size; pixels scaled to [0, 1], shape [n, C, H, W]."""
    from PIL import Image, UnidentifiedImageError

    root = _exists(root, "image folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class sub-folders; use root/<class>/<image>.png")
    arrays, labels, names = [], [], []
    for c in classes:
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im.load()
                    arr = np.asarray(im.convert("RGB"))
                    if (arr == arr[..., :1]).all():  # grayscale stored in any mode: keep one channel
                        arr = arr[..., 0]
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise ValueError(f"image {f.name} in {c}/ cannot be read ({one_line(err)})") from None
            arrays.append(arr)
            labels.append(c)
            names.append(f"{c}/{f.name}")
    if not arrays:
        raise ValueError(f"image folder {str(root)!r} has class folders but no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if any(a.ndim == 3 for a in arrays):
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {str(root)!r} have different sizes {sorted(shapes)[:3]}; resize them to one size first")
    X = np.stack(arrays).astype(np.float64) / 255.0
    X = X[:, None] if X.ndim == 3 else X.transpose(0, 3, 1, 2)
    y = np.asarray(labels)
    data = _check_arrays(X, _labels_array(labels) if all(_is_float(v) for v in labels) else y, str(root), "labels")
    data.image_shape = tuple(X.shape[1:])
    data.source = str(root)
    return data


def encode_labels(train_y: np.ndarray, *others: np.ndarray, class_order: Sequence[str] | None = None
                  ) -> tuple[list[np.ndarray], list[str]]:
    """Class labels → indices 0..K-1; returns (arrays, class names).

    ``class_order`` names the classes in the order of the model's outputs (output k is
    ``class_order[k]``). Without it, integer labels already in 0..K-1 are kept as they are and other
    labels are numbered in sorted order.
    """
    train_y = np.asarray(train_y)
    if class_order is not None:
        names = [str(c) for c in class_order]
        if len(set(names)) != len(names):
            raise ValueError(f"class_order {names} repeats a class")
        index = {c: k for k, c in enumerate(names)}
        out = []
        for what, labels in (("training", train_y), *(("test", o) for o in others)):
            text = np.asarray(labels).astype(str)
            unknown = sorted(set(text.tolist()) - set(names))
            if unknown:
                raise ValueError(f"{what} labels {unknown[:5]} are not in class_order {names[:10]}")
            out.append(np.array([index[c] for c in text], dtype=np.int64))
        return out, names
    if train_y.dtype.kind in "iu" and train_y.min() >= 0:
        k = int(max([train_y.max()] + [int(np.asarray(o).max()) for o in others if len(o)])) + 1
        for o in others:
            o = np.asarray(o)
            if o.dtype.kind not in "iu" or (len(o) and o.min() < 0):
                raise ValueError("test labels must be non-negative integers like the training labels")
        return [train_y.astype(np.int64)] + [np.asarray(o).astype(np.int64) for o in others], [str(i) for i in range(k)]
    if train_y.dtype.kind == "f":
        raise ValueError("labels are non-integer numbers: use a regression loss (--loss squared_error) or integer class labels")
    classes = np.unique(train_y.astype(str))
    out = [np.searchsorted(classes, train_y.astype(str))]
    for o in others:
        o = np.asarray(o).astype(str)
        unknown = sorted(set(o.tolist()) - set(classes.tolist()))
        if unknown:
            raise ValueError(f"test labels {unknown[:5]} do not occur in the training labels {classes.tolist()[:10]}")
        out.append(np.searchsorted(classes, o))
    return out, classes.tolist()


# ---------------------------------------------------------------------------------------- models
class TorchScriptModel(nn.Module):
    """A TorchScript module made usable by ``torch.func.functional_call`` (which rejects jitted modules).

    Its parameters are copied into this eager wrapper; ``forward`` writes the wrapper's (possibly
    functional) parameters into the script module before calling it, so gradients, HVPs and vmap
    flow through the scripted graph.
    """

    def __init__(self, scripted: torch.jit.ScriptModule) -> None:
        super().__init__()
        self._scripted = [scripted]  # a list, so it is not registered as a submodule
        self._names = [n for n, _ in scripted.named_parameters()]
        for name, p in scripted.named_parameters():
            self.register_parameter(name.replace(".", "__"), nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sm = self._scripted[0]
        for name in self._names:
            *path, leaf = name.split(".")
            owner = sm
            for part in path:
                owner = getattr(owner, part)
            owner._c.setattr(leaf, getattr(self, name.replace(".", "__")))
        return sm(x)

    def _apply(self, fn, recurse=True):  # .double(), .to(device) also move the scripted module
        self._scripted[0]._apply(fn)
        return super()._apply(fn)

    def train(self, mode: bool = True):
        self._scripted[0].train(mode)
        return super().train(mode)


class ExportedModel(nn.Module):
    """A ``torch.export`` program (``.pt2``) as an ordinary module.

    An exported program is frozen in the mode it was exported in and refuses ``train()``/``eval()``;
    this wrapper accepts them (they only set the flag), so code that switches modes works on it.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True):
        self.training = mode
        return self


def load_model(path: PathLike, code: PathLike | None = None, name: str | None = None) -> nn.Module:
    """The one model loader: a TorchScript file, a ``torch.export`` program, or Python code (+ weights).

    Args:
        path: a TorchScript file (``torch.jit.save``); a ``.pt2`` program (``torch.export.save``,
            exported with a dynamic batch dimension); a ``.py`` file that builds the model with its
            own weights; or, with ``code``, a state-dict checkpoint (``torch.save(model.state_dict(),
            path)``; a dict with a ``"state_dict"`` entry works too), read with ``weights_only=True``.
        code: a Python file defining the model; ``name`` is the class or zero-argument function
            that builds it (default: ``build_model`` if defined, else the file's only ``nn.Module``
            subclass).

    Returns the model in eval mode. No file is ever unpickled beyond plain tensors.
    """
    p = _exists(path, "model")
    if code is None and p.suffix == ".py":
        return build_from_code(p, name).eval()
    if code is None and p.suffix == ".pt2":
        try:
            program = torch.export.load(str(p)).module()
        except Exception as err:  # noqa: BLE001 - any failure means "not an exported program"
            raise ValueError(f"model {p.name} is not a torch.export program saved with torch.export.save "
                             f"({one_line(err)})") from None
        return ExportedModel(program).eval()
    if code is None:
        try:
            scripted = torch.jit.load(str(p), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any failure means "not TorchScript"
            raise ValueError(
                f"model {p.name} is not a TorchScript file ({one_line(err)}); for a state-dict "
                "checkpoint also give the Python file that builds the model"
            ) from None
        return TorchScriptModel(scripted).eval()
    if p.suffix == ".py":
        raise ValueError(f"model {p.name} is Python code; give the weights file as the model and the code file as the code")
    module = build_from_code(code, name)
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or non-weights file
        why = "it holds Python objects, which whybox never unpickles" if "weights_only" in str(err) else one_line(err)
        raise ValueError(
            f"checkpoint {p.name} cannot be read as weights ({why}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"checkpoint {p.name} is not a state dict (a dict of tensors); save model.state_dict()")
    try:
        module.load_state_dict(state, strict=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"checkpoint {p.name} does not fit the model from the code file ({one_line(err)})") from None
    return module.eval()


def load_checkpoints(path: PathLike) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Checkpoints of a training run for ``whybox.TracIn``: ``(state dicts, learning rates)``.

    ``path`` is a file written by ``whybox.attribution.CheckpointRecorder.save`` (checkpoints with
    their learning rates), one state-dict file, a folder of state-dict files (``*.pt``, ``*.pth``),
    or a glob such as ``ckpt/epoch_*.pt``; plain state dicts get learning rate 1. Read with
    ``weights_only=True``.
    """
    text = str(path)
    if any(c in text for c in "*?["):
        parent = Path(text).parent
        files = sorted(parent.glob(Path(text).name)) if not any(c in str(parent) for c in "*?[") else []
        if not files:
            raise FileNotFoundError(f"no checkpoint files match {text} (a glob within one folder, e.g. ckpt/epoch_*.pt)")
    else:
        p = _exists(path, "checkpoints")
        files = sorted(f for f in p.iterdir() if f.suffix in (".pt", ".pth")) if p.is_dir() else [p]
        if not files:
            raise FileNotFoundError(f"folder {p} holds no checkpoint files (*.pt, *.pth)")
    checkpoints: list[dict[str, torch.Tensor]] = []
    rates: list[float] = []
    for f in files:
        try:
            data = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - corrupt or non-weights file
            raise ValueError(f"checkpoint {f.name} cannot be read as weights ({one_line(err)}); save state dicts "
                             "(torch.save(model.state_dict(), path)) or use whybox.attribution.CheckpointRecorder.save") from None
        if isinstance(data, dict) and "checkpoints" in data and "learning_rates" in data:
            checkpoints += list(data["checkpoints"])
            rates += [float(v) for v in data["learning_rates"]]
            continue
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not data or not all(torch.is_tensor(v) for v in data.values()):
            raise ValueError(f"checkpoint {f.name} is not a state dict (a dict of tensors) nor a "
                             "CheckpointRecorder.save file; save model.state_dict() during training")
        checkpoints.append(data)
        rates.append(1.0)
    return checkpoints, rates


def import_user_file(code: PathLike, what: str = "model code"):
    """Run a user's Python file as a module (any exception becomes a one-line ValueError)."""
    c = _exists(code, what)
    if c.suffix != ".py":
        raise ValueError(f"{what} {c.name} must be a .py file")
    spec = importlib.util.spec_from_file_location(f"whybox_user_{abs(hash(str(c.resolve())))}", c)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {c.name} as Python code")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except BaseException as err:  # noqa: BLE001 - the user's file may raise anything, even SystemExit
        if isinstance(err, KeyboardInterrupt):
            raise
        raise ValueError(f"{what} {c.name} raised {one_line(err)} while being imported") from None
    return mod


def build_from_code(code: PathLike, name: str | None = None) -> nn.Module:
    """Run a user's Python file and build its model (see ``load_model``)."""
    mod = import_user_file(code)
    c = Path(code)
    if name is None:
        if callable(getattr(mod, "build_model", None)):
            name = "build_model"
        else:
            classes = [v for v in vars(mod).values() if inspect.isclass(v) and issubclass(v, nn.Module)
                       and v.__module__ == mod.__name__]
            if len(classes) != 1:
                raise ValueError(
                    f"model code {c.name} defines {len(classes)} nn.Module classes and no build_model(); "
                    "pass --model-name NAME"
                )
            name = classes[0].__name__
    builder = getattr(mod, name, None)
    if not callable(builder):
        raise ValueError(f"model code {c.name} has no class or function {name!r}")
    try:
        model = builder()
    except BaseException as err:  # noqa: BLE001
        if isinstance(err, KeyboardInterrupt):
            raise
        raise ValueError(f"building the model with {name}() from {c.name} raised {one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name}() in {c.name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_attributor_class(path: PathLike, name: str) -> type:
    """The ``whybox.Attributor`` subclass ``name`` defined in the user's Python file ``path``."""
    from whybox.attribution import Attributor

    cls = getattr(import_user_file(path, "attributor file"), name, None)
    if cls is None:
        raise ValueError(f"attributor file {Path(path).name} defines no {name!r}")
    if not (inspect.isclass(cls) and issubclass(cls, Attributor)):
        raise ValueError(f"{name} in {Path(path).name} is not a subclass of whybox.Attributor")
    return cls


# ---------------------------------------------------------------------------------------- studies
def infer_loss(y: np.ndarray, n_outputs: int) -> str:
    """The loss that fits the labels and the model's output size (one line of reasoning, no guessing)."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        return "squared_error"
    if n_outputs == 1:
        return "logistic"
    return "cross_entropy"


def prepare_user_model(data, model) -> dict:
    """The user's data and model (``whybox.study.DataSettings``/``ModelSettings``) as an Objective
    plus the test data and what is needed to display them; ``whybox.study.load_study`` wires it up.

    Either ``model.model`` (TorchScript, or a state dict with ``model.model_code``) — a model
    already trained on exactly the training rows — or ``model.sklearn`` in {logistic, svm, ridge}:
    whybox fits that scikit-learn model itself with inverse regularisation ``model.C``.
    """
    from whybox import adapters
    from whybox.objective import Objective

    if (model.model is None) == (model.sklearn is None):
        raise ValueError("give exactly one model: --model FILE (TorchScript, or a state dict with --model-code) or --sklearn logistic|svm|ridge")
    if not 0 < data.test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {data.test_fraction}")
    parts = load_data(data.train, data.label_column)
    tr = parts["train"]
    if data.test is not None:
        te = load_data(data.test, data.label_column)["train"]
        if te.X.shape[1:] != tr.X.shape[1:]:
            raise ValueError(f"test rows have shape {te.X.shape[1:]} but training rows {tr.X.shape[1:]}; they must match")
        if tr.feature_names and te.feature_names and tr.X.ndim == 2 and tr.feature_names != te.feature_names:
            raise ValueError("the test file's columns differ from the training file's (same names in the same order needed)")
    elif "test" in parts:
        te = parts["test"]
    elif model.sklearn is not None:
        tr, te = _split(tr, data.test_fraction, data.seed)
    else:
        raise ValueError("a trained model needs its test data: pass --test FILE (or X_test/y_test in the .npz); "
                         "whybox cannot split data the model was trained on")
    dtype = torch.float64 if model.float64 else torch.float32
    Xtr, Xte = tr.X, te.X
    if data.standardize:
        mean, std = Xtr.mean(0), Xtr.std(0)
        std = np.where(std == 0, 1.0, std)
        Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    settings: dict = {"test": str(data.test) if data.test is not None else "(split)" if "test" not in parts else "(npz)"}
    class_names: list[str] | None = None
    if model.sklearn is not None:
        if model.weight_decay is not None:
            raise ValueError("with --sklearn the weight decay is set by C (weight_decay = 1/(C·n)); drop --weight-decay")
        Xtr2, Xte2 = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
        if model.sklearn != "ridge":
            (ytr, yte), class_names = encode_labels(tr.y, te.y)
            if len(np.unique(ytr)) < 2:
                raise ValueError("the training labels hold a single class; a classifier needs at least two")
        else:
            if tr.y.dtype.kind not in "biuf" or te.y.dtype.kind not in "biuf":
                raise ValueError("ridge regression needs numeric labels")
            ytr, yte = tr.y.astype(float), te.y.astype(float)
        try:
            est = adapters.fit_sklearn(model.sklearn, Xtr2, ytr, C=model.C, seed=data.seed)
        except ValueError as err:
            raise ValueError(f"scikit-learn could not fit the model: {one_line(err)}") from None
        obj, adapted = adapters.from_sklearn(est, Xtr2, ytr, dtype=dtype)
        y_test = adapted.encode(yte)
        if adapted.classes is not None:
            class_names = [class_names[int(c)] for c in adapted.classes] if class_names else None
        X_test = torch.tensor(Xte2, dtype=dtype)
        settings.update(model_kind=f"scikit-learn {type(est).__name__}(C={model.C:g})", weight_decay=obj.weight_decay,
                        loss=obj.loss_name)
        if adapted.note:
            settings["note"] = adapted.note
    else:
        net = load_model(model.model, model.model_code, model.model_name).to(dtype)
        with torch.no_grad():
            try:
                probe = net(torch.tensor(Xtr[:2], dtype=dtype))
            except Exception as err:  # noqa: BLE001 - the user's forward may fail in any way
                raise ValueError(f"the model failed on training rows of shape {Xtr.shape[1:]} ({one_line(err)})") from None
        if not torch.is_tensor(probe):
            raise ValueError(f"the model returned {type(probe).__name__}, not a tensor")
        n_out = int(probe[0].numel()) if probe.ndim > 0 and len(probe) else 1
        loss = model.loss or infer_loss(tr.y, n_out)
        if loss == "squared_error":
            if tr.y.dtype.kind not in "biuf" or te.y.dtype.kind not in "biuf":
                raise ValueError("squared_error needs numeric labels")
            y_train, y_test = torch.tensor(tr.y.astype(float), dtype=dtype), torch.tensor(te.y.astype(float), dtype=dtype)
        else:
            (ytr, yte), class_names = encode_labels(tr.y, te.y, class_order=model.class_order)
            y_train, y_test = torch.tensor(ytr), torch.tensor(yte)
        weight_decay = model.weight_decay or 0.0
        obj = Objective(net, loss, torch.tensor(Xtr, dtype=dtype), y_train, weight_decay=weight_decay, params=model.params)
        if loss != "squared_error" and model.class_order is None:
            check_label_order(obj, class_names)
        X_test = torch.tensor(Xte, dtype=dtype)
        settings.update(model_kind="your model", loss=loss, weight_decay=weight_decay)
    X_test, y_test = obj.check_data(X_test, y_test, "test")
    return dict(
        objective=obj, X_test=X_test, y_test=y_test, name=Path(str(data.train)).stem, image_shape=tr.image_shape,
        feature_names=tr.feature_names, class_names=class_names, show_train=tr.X, show_test=te.X, settings=settings,
    )


def check_label_order(objective, class_names: Sequence[str]) -> None:
    """Refuse a label encoding under which the model gets most training points wrong while another
    order of the same classes would fit: the model's outputs are in a different class order."""
    from scipy.optimize import linear_sum_assignment

    y = objective.y.cpu().numpy()
    pred = objective.predict()[0].cpu().numpy()
    k = max(len(class_names), int(pred.max()) + 1, int(y.max()) + 1)
    confusion = np.zeros((k, k))
    np.add.at(confusion, (y, pred), 1)
    accuracy = np.trace(confusion) / len(y)
    rows, cols = linear_sum_assignment(-confusion)  # output cols[r] best matches label r
    best = confusion[rows, cols].sum() / len(y)
    if accuracy < 0.5 and best >= accuracy + 0.25:
        order = [""] * k
        for r, c in zip(rows, cols):
            order[c] = class_names[r] if r < len(class_names) else str(r)
        raise ValueError(
            f"the model gets {1 - accuracy:.0%} of the training points wrong with the labels numbered "
            f"{list(class_names)} (output k = class k), but only {1 - best:.0%} with the order {order}: "
            f"its outputs use another class order; give class_order={','.join(order)}"
        )


def _split(data: Data, fraction: float, seed: int) -> tuple[Data, Data]:
    from sklearn.model_selection import train_test_split

    n = len(data)
    n_test = max(1, int(round(fraction * n)))
    if n - n_test < 2:
        raise ValueError(f"{n} rows are too few to split off a test set; pass --test FILE")
    idx = np.arange(n)
    try:
        tr, te = train_test_split(idx, test_size=n_test, random_state=seed, stratify=data.y if data.y.dtype.kind != "f" else None)
    except ValueError:
        tr, te = train_test_split(idx, test_size=n_test, random_state=seed)

    def take(rows):
        return Data(data.X[rows], data.y[rows], data.feature_names, data.image_shape, data.source)

    return take(np.sort(tr)), take(np.sort(te))
