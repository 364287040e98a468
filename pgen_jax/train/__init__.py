"""Training: SFT (sft.py, run by sft_loop.py) and GRPO (grpo.py, run by grpo_loop.py), checkpoints."""

from pgen_jax.train import summaries as _summaries

_summaries.install()  # before any loop imports clu.metric_writers: TensorBoard files without TensorFlow
