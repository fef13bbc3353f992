"""Benchmark for `whybox compare` (paper §5.1): prints machine/versions, then the verb's table;
figures and JSON go to --out (default whybox-out/compare). Every option of `whybox compare` is accepted, e.g.

    PYTHONPATH=src python benchmarks/bench_compare.py --help
"""

from _verb import run_verb

if __name__ == "__main__":
    run_verb("compare")
