"""Janus-Pro-7B on MovieLens posters with QLoRA: configs/movielens_7b_lora.py with the frozen base stored as
nf4 (4-bit NormalFloat codes, a bf16 scale per output channel and block of 64 input rows; qwix), a quarter
of the bf16 base's bytes. The adapters train in fp32 on the dequantised base; final/ and the export merge
them into the float base, reloaded (the nf4 rounding is not carried into the released weights). Memory
per stage: docs/benchmarks.md (python -m pgen_jax.bench.memory --config=configs/movielens_7b_qlora.py
--stage=sft|grpo|eval).
"""

from configs.movielens_7b_lora import get_config as movielens_7b_lora


def get_config():
  c = movielens_7b_lora()
  c.workdir = "runs/movielens_7b_qlora"
  c.model.lora.base_qtype = "nf4"
  # One history (x 8 samples) at a time: the decode loop's dequantised weights are loop-invariant, and XLA
  # may keep them dequantised for the whole loop (the CPU compile does, in f32).
  c.grpo.rollout_chunk = 1
  c.export.dir = "runs/movielens_7b_qlora/hf"
  return c
