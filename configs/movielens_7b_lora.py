"""Janus-Pro-7B on MovieLens posters with LoRA adapters, on one 80 GB GPU (issue 28).

configs/movielens.py's experiment (its shape: SFT batch 64, GRPO 8 histories x 8 samples, 5 history
images) with the 7B: full fine-tuning keeps fp32 master weights and two AdamW moments for 7B parameters,
far beyond one device, so the base stays frozen in bf16 and rank-16 adapters (fp32) train on the decoder's
attention and MLP projections. Memory per stage: docs/benchmarks.md (python -m pgen_jax.bench.memory
--config=configs/movielens_7b_lora.py --stage=sft|grpo|rollout|eval). For QLoRA's nf4 base:
--config.model.lora.base_qtype=nf4.
"""

from configs.movielens import get_config as movielens


def get_config():
  c = movielens()
  c.workdir = "runs/movielens_7b_lora"
  c.model.preset = "janus-pro-7b"
  c.model.checkpoint = "checkpoints/Janus-Pro-7B"
  c.fetch.janus.repo = "deepseek-community/Janus-Pro-7B"
  # Not pinned to a commit yet (none verified from these machines): pin it to the commit the first fetch
  # reports, so later runs read the same bytes.
  c.fetch.janus.revision = "main"
  c.model.param_dtype = "bfloat16"     # the frozen base: the adapters keep their own fp32 copy
  c.model.lora.rank = 16
  c.model.lora.alpha = 32.0
  c.sft.trainable = ("language_model",)  # adapters only: the 7B's heads stay as released
  c.sft.lr = 2e-4                      # adapters take larger steps than full fine-tuning (4e-5)
  c.sft.grad_accum = 16                # batch 64 as 16 slices of 4: the 7B's activations at ~3,000 tokens
  c.grpo.lr = 1e-5
  c.grpo.rollout_chunk = 2             # the sampler draws 2 histories x 8 samples at a time: a quarter of the KV
  c.eval.batch_size = 4                # 4 windows x 4 samples per sampler call (8 x 4 needs 77 GB)
  c.export.dir = "runs/movielens_7b_lora/hf"
  return c
