"""Benchmarks (python -m pgen_jax.bench.<name>); figures go to docs/benchmarks.md."""
