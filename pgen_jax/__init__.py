"""pgen_jax: personalised next-item image generation with Janus-Pro in JAX/Flax NNX."""

__version__ = "0.1.0"
