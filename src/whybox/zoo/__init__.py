"""Reference data (embedded scikit-learn sets, the MNIST subset of the mnist extra, synthetic populations), reference models and model
setups, and trainers that reach a verified optimum."""

from whybox.zoo.data import DATASETS, MissingExtra, Split, flip_labels, load
from whybox.zoo.models import (
    TransformerClassifier,
    cnn,
    linear_svm,
    logistic_regression,
    mlp,
    mnist_cnn,
    transformer_classifier,
)
from whybox.zoo.populations import (
    Readmission,
    ReadmissionConfig,
    make_readmission,
    make_spam_corpus,
    make_token_sequences,
)
from whybox.zoo.setups import frozen_network, pixel_logistic, pretrained_extractor, rbf_svm
from whybox.zoo.train import (
    FrozenPrefix,
    TrainResult,
    fit,
    retrain,
    retrain_baseline,
    svm_theta,
    train,
    train_adam,
    train_logistic,
)

__all__ = [
    "DATASETS", "MissingExtra", "Split", "load", "flip_labels", "logistic_regression", "linear_svm", "mlp", "cnn", "mnist_cnn",
    "TransformerClassifier", "transformer_classifier",
    "Readmission", "ReadmissionConfig", "make_readmission", "make_spam_corpus", "make_token_sequences",
    "pretrained_extractor", "frozen_network", "pixel_logistic", "rbf_svm",
    "TrainResult", "FrozenPrefix", "fit", "train", "train_adam", "train_logistic", "retrain", "retrain_baseline", "svm_theta",
]
