"""Use cases of influence functions (paper §5): label fixing, domain-mismatch debugging, attacks, comparisons."""

from whybox.applications import mislabeled  # noqa: F401
from whybox.applications import mismatch  # noqa: F401
