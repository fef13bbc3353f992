"""Benchmark for `whybox attack` (paper §5.2): prints machine/versions, then the verb's table;
figures and JSON go to --out (default whybox-out/attack). Every option of `whybox attack` is accepted, e.g.

    PYTHONPATH=src python benchmarks/bench_attack.py --help
"""

from _verb import run_verb

if __name__ == "__main__":
    run_verb("attack")
