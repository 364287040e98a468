"""Janus-Pro-1B on MovieLens posters with LoRA adapters, on one 32 GB GPU (issue 28).

configs/movielens.py's experiment at its shape (SFT batch 64, GRPO 8 histories x 8 samples, 5 history
images) training rank-16 adapters (fp32) on the decoder's attention and MLP projections over a frozen bf16
base, instead of every weight with fp32 masters and two AdamW moments. Memory per stage: docs/benchmarks.md
(python -m pgen_jax.bench.memory --config=configs/movielens_lora.py --stage=sft|grpo|eval).
"""

from configs.movielens import get_config as movielens


def get_config():
  c = movielens()
  c.workdir = "runs/movielens_lora"
  c.model.param_dtype = "bfloat16"     # the frozen base: the adapters keep their own fp32 copy
  c.model.lora.rank = 16
  c.model.lora.alpha = 32.0
  c.sft.trainable = ("language_model",)  # adapters only: the generation heads stay as released
  c.sft.lr = 2e-4                      # adapters take larger steps than full fine-tuning (4e-5)
  c.sft.grad_accum = 8                 # batch 64 as 8 slices of 8
  c.grpo.lr = 1e-5
  c.grpo.rollout_chunk = 4             # the sampler draws 4 histories x 8 samples at a time
  c.eval.batch_size = 4                # 4 windows x 4 samples per sampler call
  c.export.dir = "runs/movielens_lora/hf"
  return c
