"""The demo with GRPO run long enough for its gain over SFT to show on held-out users (issue 29).

  python -m pgen_jax.main --config=configs/demo_rl.py

Everything as configs/demo.py (same world, tokenizer and SFT recipe) in its own run directory, but 60 GRPO
steps instead of 10: held-out users' images move nearer their genre's signature than SFT's, judged by the
world (eval's `pixel_margin`, the reward GRPO trains on), with the paired 95% interval of grpo - sft above 0
(README, "The demo"). About 1.5 minutes more than the demo on 2 cores.
"""

from configs.demo import get_config as demo


def get_config():
  c = demo()
  c.workdir = "runs/demo_rl"
  c.data.root = "runs/demo_rl/world"
  c.grpo.num_steps = 60                # 10: 0.016 [-0.000, 0.035]; 30: 0.025 [0.008, 0.046] (seen, one SFT result)
  c.grpo.ckpt_every = 30
  c.grpo.grid_every = 30
  c.export.dir = "runs/demo_rl/hf"
  return c
