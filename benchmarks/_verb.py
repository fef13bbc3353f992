"""Run a `whybox` verb as a benchmark: machine/versions first, the verb's own table, then wall time."""

import sys
import time

from whybox.cli import main
from whybox.utils import machine_info


def run_verb(verb: str) -> None:
    print(machine_info())
    start = time.perf_counter()
    sys.argv = ["whybox", verb, *sys.argv[1:]]
    try:
        main()
    except SystemExit as done:
        if done.code:
            raise
    print(f"wall time: {time.perf_counter() - start:.0f} s")
