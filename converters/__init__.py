"""Checkpoint converters between Hugging Face layouts and pgen_jax."""
