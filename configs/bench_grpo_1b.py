"""The GRPO step's time split at the Janus-Pro-1B shape with nothing downloaded: random Janus-Pro-1B
weights, CLIP ViT-H-14 and DINOv2-L architectures with random weights, the synthetic world at 384px.

  python -m pgen_jax.main --config=configs/bench_grpo_1b.py
  # with a scorer running at reward_models.scorer_url (python -m pgen_jax.scorer serve --nima=... --qwen=...):
  python -m pgen_jax.main --config=configs/bench_grpo_1b.py --config.grpo.reward_weights.profile=1.0

Read time/rollout, time/reward, time/scorer_wait, time/update and time/step per step from the log (or
<workdir>/grpo/tb); the first steps include compilation. The rewards mean nothing; the times do.
"""

from configs.common import base_config


def get_config():
  c = base_config()
  c.workdir = "runs/bench_grpo_1b"
  c.stages = ("prepare", "grpo")
  c.model.preset = "janus-pro-1b"
  c.model.tokenizer = "bytes"          # no tokenizer download; prompts are a little longer than BPE ones
  c.prompt.uncond_pads = "drop"        # the CFG row is BOS + BOI, not thousands of attended pads
  c.data.name = "synthetic"
  c.data.root = "runs/bench_grpo_1b/world"
  c.data.image_size = 384
  c.grpo.num_steps = 12
  c.grpo.log_every = 1
  c.grpo.ckpt_every = 1000             # no checkpoint but the final one
  c.grpo.grid_every = 1000
  c.grpo.eval_every = 0                # timing only: no validation rollouts
  c.reward_models.clip = "random:vit-h-14"
  c.reward_models.dino = "random:dinov2-large"
  return c
