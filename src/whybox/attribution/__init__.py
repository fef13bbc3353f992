"""Instance attribution methods behind one interface (influence functions are one of them)."""

from whybox.attribution.base import Attributor

__all__ = ["Attributor"]
