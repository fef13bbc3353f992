"""Applications of training-data attribution (Koh & Liang 2017, §5)."""

from whybox.applications import attack  # noqa: F401
from whybox.applications import compare  # noqa: F401
