"""Command-line checkpoint converters (python -m converters.janus); the checkpoint names they use
live in pgen_jax (models/hf.py, rewards/hf.py)."""
