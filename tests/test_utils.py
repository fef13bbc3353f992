"""The memory readings benchmarks report: a phase's peak starts at the memory held when it began."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from whybox.utils import peak_rss_mib, reset_peak_rss, rss_mib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is reset through /proc (Linux)")
def test_a_new_phase_forgets_an_earlier_peak_and_sees_its_own():
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    del block
    assert reset_peak_rss()
    start = rss_mib()
    assert peak_rss_mib() < start + 32  # the 64 MiB peak before the reset is gone
    block = np.ones(48 * 2**20 // 8)
    assert peak_rss_mib() >= start + 40  # this phase's own 48 MiB
    del block
