"""Use cases of influence functions (paper §5): label fixing, domain-mismatch debugging,
training-set attacks, comparing models. Each takes any ``Attributor``."""

from whybox.applications import attack, compare, mislabeled, mismatch  # noqa: F401
