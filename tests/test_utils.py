"""The memory readings benchmarks report: a phase's peak starts at the memory held when it began."""

from __future__ import annotations

import mmap
import sys

import pytest

from whybox.utils import peak_rss_mib, reset_peak_rss, rss_mib

MIB = 2**20


def _touched(mib: int) -> mmap.mmap:
    """Fresh anonymous pages, all resident (an allocator's recycled memory would not raise RSS)."""
    block = mmap.mmap(-1, mib * MIB)
    block.write(b"\1" * (mib * MIB))
    return block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is reset through /proc (Linux)")
def test_a_new_phase_forgets_an_earlier_peak_and_sees_its_own():
    _touched(64).close()
    assert reset_peak_rss()
    start = rss_mib()
    assert peak_rss_mib() < start + 32  # the 64 MiB peak before the reset is gone
    block = _touched(48)
    assert peak_rss_mib() >= start + 40  # this phase's own 48 MiB
    block.close()
