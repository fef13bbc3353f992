"""Benchmark for `whybox attack` (paper §5.2): prints machine/versions, then the verb's table;
figures and JSON go to --out (default whybox-out/attack). Every option of `whybox attack` is accepted, e.g.

    PYTHONPATH=src python benchmarks/bench_attack.py --help
"""

import platform
import sys
import time

import torch

from whybox.cli import main

if __name__ == "__main__":
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    start = time.perf_counter()
    sys.argv = ["whybox", "attack", *sys.argv[1:]]
    try:
        main()
    except SystemExit as done:
        if done.code:
            raise
    print(f"wall time: {time.perf_counter() - start:.0f} s")
