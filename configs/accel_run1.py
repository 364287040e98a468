"""Run 1 of the accelerator runs (pgen_jax/bench/accelerator.sh): the whole job, sft -> grpo -> eval ->
export, a few steps each, at configs/movielens.py's shape (5 history images, G = 8 x 8 prompts, SFT
batch 64 as 4 slices of 16, remat full) with nothing downloaded: random Janus-Pro-1B weights, CLIP
ViT-H-14 and DINOv2-L architectures with random weights, the byte tokenizer, and a small synthetic
world at 384px whose store is prepared beforehand on a CPU machine (`accelerator.sh --prepare DIR`:
the accelerator image has no TensorFlow for the prepare stage). The figures are each stage's time and
peak device memory, and the GRPO step's time split; the losses and rewards mean nothing.

  python -m pgen_jax.main --config=configs/accel_run1.py --config.data.root=.accel/world \
      --config.data.store=.accel/store --config.workdir=/tmp/pgen_accel/run1
  python -m pgen_jax.main --config=configs/accel_run1.py:tiny ...   # the CPU dry run's preset

The world (pgen_jax/bench/accel.py's WORLD) has 3 posters per genre (18 items) and 16 users who rated
all of them; every rating counts as a positive (data.min_rating = 0), so each user has 18 items in
order: 80 training windows, 16 validation and 16 test ones, at about 0.6 MB per 384px item in the store.
"""

from configs.movielens import get_config as movielens


def get_config(preset: str = ""):
  c = movielens()                      # its shape: remat, grad_accum, micro_batch, uncond_pads
  c.stages = ("sft", "grpo", "eval", "export")
  c.workdir = "/tmp/pgen_accel/run1"
  c.model.checkpoint = ""              # random weights of model.preset
  c.model.tokenizer = "bytes"          # no tokenizer download; prompts are a little longer than BPE ones
  c.data.name = "synthetic"
  c.data.root = ".accel/world"         # written by `accelerator.sh --prepare` (WORLD above)
  c.data.store = ".accel/store"        # prepared there too
  c.data.version = ""
  c.data.min_rating = 0.0
  c.sft.num_steps = 2
  c.sft.warmup_steps = 1
  c.sft.log_every = 1
  c.sft.eval_every = 1000              # validation loss at the start and the end only
  c.sft.eval_batches = 1
  c.sft.eval_batch_size = 8
  c.sft.ckpt_every = 1000              # only the final checkpoint
  c.sft.keep = 1
  c.sft.grid_samples = 2
  c.sft.genre_probe = False
  c.grpo.num_steps = 3                 # step 1 compiles; step 2 is a whole step with its batch sampled ahead
  c.grpo.log_every = 1
  c.grpo.ckpt_every = 1000
  c.grpo.grid_every = 1000
  c.grpo.eval_every = 0                # no validation rollouts, so no best/ checkpoint: the card's disk is 64 GiB
  c.reward_models.clip = "random:vit-h-14"
  c.reward_models.dino = "random:dinov2-large"
  c.reward_models.scorer_nima = ""
  c.reward_models.scorer_qwen = ""
  c.eval.windows = 8                   # one sampler batch (eval.batch_size) per generator
  c.eval.bootstrap = 100
  c.eval.report_users = 2
  c.eval.sasrec.epochs = 2
  c.export.dir = c.workdir + "/hf"
  if preset == "tiny":                 # CPU dry run: the same stages and shapes, a tiny model and images
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.data.image_size = 16             # the tiny model's image size
    c.data.workers = 0
    c.prompt.max_text_tokens = 8
    c.reward_models.clip = "random:tiny"
    c.reward_models.dino = "random:tiny"
    c.reward_models.dino_size = 28
  elif preset:
    raise ValueError(f"configs/accel_run1.py:{preset}: unknown preset; use no suffix or ':tiny'")
  return c
