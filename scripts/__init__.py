"""Developer scripts: run, test, gen and the benchmarks.

A package (not a folder of loose files) so that the benchmarks and the tests import the one
benchmark library by the same name, `scripts.benchlib`, and mypy sees one module tree. The
benchmarks run as `python -m scripts.bench_x` from their shell wrappers (scripts/bench_x).
"""
