"""Fields every experiment config has; the files beside this one set what differs."""

import ml_collections

from pgen_jax.models.config import PARTS
from pgen_jax.models.lora import DEFAULT_TARGET


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stages = ("prepare", "sft", "grpo", "eval", "export")
  c.workdir = "runs/default"
  c.seed = 0
  c.compile_cache = "~/.cache/pgen_jax/xla"  # XLA programs kept across runs (JAX's persistent cache); "": off

  c.model = ml_collections.ConfigDict()
  c.model.preset = "janus-pro-1b"      # architecture when no checkpoint is given
  c.model.checkpoint = ""              # HF (transformers or deepseek) or pgen_jax directory
  c.model.dtype = "bfloat16"           # compute
  c.model.param_dtype = "float32"      # master weights
  c.model.tokenizer = ""               # "": the checkpoint's own; "bytes": byte-level, for tiny models
  c.model.attention = "auto"           # auto | xla | blockwise | cudnn | pallas (pgen_jax.models.attention)
  # LoRA (pgen_jax.models.lora): sft and grpo train adapters on the LM plus the other sft.trainable parts;
  # their final/ holds the adapters merged into the base weights (a plain Janus for eval and export)
  c.model.lora = ml_collections.ConfigDict()
  c.model.lora.rank = 0                # 0: off (full fine-tuning)
  c.model.lora.alpha = 32.0            # the update is scaled by alpha / rank
  c.model.lora.target = DEFAULT_TARGET # regex of the module paths adapted: the decoder's attention and MLP
  c.model.lora.base_qtype = "none"     # QLoRA: the adapted projections' frozen base stored as int8 | nf4
                                       # (pgen_jax.models.quant); final/ and export merge into the float base

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: all remaining devices

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"            # movielens | pixelrec | synthetic
  c.data.root = ""                     # raw files; synthetic: where the world is generated
  c.data.version = ""                  # MovieLens release the fetch stage downloads into root: ml-latest-small,
                                       # ml-1m, ml-25m, ml-32m
  c.data.images = ""                   # posters/covers folder; default root/posters or root/covers
  c.data.store = ""                    # prepared store; default <workdir>/data
  c.data.image_size = 384              # must match the model's image size
  c.data.history_len = 5               # k-1 history items before the target
  c.data.future_len = 3                # p future items used by rewards and metrics
  c.data.stride = 1                    # windows slide by this many items
  c.data.min_rating = 4.0              # positives: rating >= min_rating; 0 keeps every rating
  c.data.test_windows = 1              # per user, the last windows
  c.data.val_windows = 1               # per user, the windows before the test ones
  c.data.holdout_users = 0             # users kept out of training entirely (all their windows test)
  c.data.workers = 2                   # grain worker processes
  c.data.cache_mb = 1024               # per-process cache of decoded items

  c.prompt = ml_collections.ConfigDict()
  c.prompt.template = ("<|User|>: Here are the items this user liked, oldest first:\n{history}"
                       "Generate the image of the next item this user will like.\n\n<|Assistant|>:")
  c.prompt.item = "{image}{text}\n"    # one history item
  c.prompt.max_text_tokens = 32        # item texts are cut to this many tokens
  c.prompt.uncond = "official"         # CFG's unconditional row: official | keep_images
  c.prompt.uncond_pads = "attend"      # the row's blanked tokens: attend (as HF) | drop (its real tokens only)

  c.vq = ml_collections.ConfigDict()   # the vq stage: trains the image tokenizer (small-image runs only)
  c.vq.num_steps = 400
  c.vq.batch_size = 32
  c.vq.crop = 0                        # train on random crops of this side (a multiple of the patch); 0: whole
  c.vq.lr = 2e-3
  c.vq.warmup_steps = 20
  c.vq.clip = 1.0
  c.vq.beta = 0.25                     # commitment weight
  c.vq.perceptual = 0.0                # weight of an LPIPS term beside L2 (reward_models.lpips_vgg + reward_models.lpips_heads); 0: off
  c.vq.restart_every = 25              # steps between dead-code restarts
  c.vq.restart_below = 0.05            # dead: running usage below this share of the uniform rate
  c.vq.usage_decay = 0.9
  c.vq.holdout_every = 8               # items 0, 8, 16, ... are never trained on; PSNR is measured on them
  c.vq.log_every = 50
  c.vq.ckpt_every = 100
  c.vq.keep = 2

  c.sft = ml_collections.ConfigDict()
  c.sft.batch_size = 64                # global, per optimizer step
  c.sft.grad_accum = 1                 # micro-batches per step
  c.sft.lr = 4e-5
  c.sft.warmup_steps = 100
  c.sft.epochs = 1.0
  c.sft.num_steps = 0                  # 0: epochs x windows / batch_size
  c.sft.b1 = 0.9
  c.sft.b2 = 0.95
  c.sft.weight_decay = 0.0
  c.sft.clip = 1.0
  c.sft.trainable = ("language_model", "generation_embeddings", "generation_aligner", "generation_head")
  # lr multiplier per part: a part trained from random init may want more than the pretrained LM
  c.sft.lr_scales = ml_collections.ConfigDict({part: 1.0 for part in PARTS})
  c.sft.remat = "none"                 # decoder layers: none | full | dots_saveable | dots_with_no_batch_dims_saveable
  c.sft.pretokenize = True             # the frozen VQ tokenizes every item's target once, not in every step
  c.sft.uncond_prob = 0.1              # prompts blanked to the CFG row, so guidance has a model
  c.sft.log_every = 50
  c.sft.eval_every = 500
  c.sft.eval_batches = 8
  c.sft.eval_batch_size = 16
  c.sft.ckpt_every = 500
  c.sft.keep = 3
  c.sft.max_bad_steps = 20             # consecutive non-finite steps before the run stops
  c.sft.grid_samples = 4
  c.sft.cfg_weight = 5.0
  c.sft.genre_probe = True             # synthetic data only: genre hit rate of generated images

  c.grpo = ml_collections.ConfigDict()
  c.grpo.num_steps = 800               # public Janus-Pro GRPO recipes
  c.grpo.prompts_per_step = 8          # histories per step (global)
  c.grpo.group_size = 8                # G samples per history
  c.grpo.lr = 1e-6
  c.grpo.warmup_steps = 0              # steps of linear warm-up (x inner_updates optimizer updates)
  c.grpo.b1 = 0.9                      # AdamW, as sft.*
  c.grpo.b2 = 0.95
  c.grpo.weight_decay = 0.0
  c.grpo.grad_clip = 1.0               # global gradient norm (reward_models.clip is the CLIP reward model)
  c.grpo.beta = 0.01                   # KL to the reference (the starting policy); 0 skips it
  c.grpo.eps_low = 0.2
  c.grpo.eps_high = 0.28               # clip-higher (DAPO); set equal to eps_low for symmetric clipping
  c.grpo.advantage = "sum"             # sum: of the weighted total | per_reward: each reward normalised in its group first (GDPO)
  c.grpo.advantage_scale = "std"       # std (GRPO) | none (Dr.GRPO)
  c.grpo.advantage_eps = 1e-3          # reward units: advantages divide by max(group std, this)
  c.grpo.dynamic_sampling = False      # DAPO: leave groups with std <= advantage_eps out of the loss
  c.grpo.logprobs = "cond"             # cond (T2I-R1) | cfg (AR-GRPO): which distribution is trained
  c.grpo.cfg_weight = 5.0
  c.grpo.temperature = 1.0
  c.grpo.inner_updates = 1             # optimizer updates per rollout, with stored old log-probs
  c.grpo.micro_batch = 0               # prompts per gradient-accumulation slice (with their G samples); 0: all
  c.grpo.rollout_chunk = 0             # prompts the sampler draws at once (their KV caches), in turn; 0: all
  c.grpo.remat = "none"                # as sft.remat, for the GRPO update
  c.grpo.sample_ahead = True           # sample batch t+1 (pre-update params) while the scorer scores batch t
  c.grpo.reward = "models"             # models | genre (synthetic world) | fixed (a hackable test reward)
  c.grpo.reward_weights = ml_collections.ConfigDict(
      dict(clip_history=1.0, clip_future=1.0, dino_target=0.5, profile=0.0, nima=0.0, fixed=0.0))  # fixed: tests only
  c.grpo.reward_normalize = "none"     # none: raw weighted sum | running: terms / running within-group spread
  c.grpo.diversity_weight = 0.0        # penalty for resembling other users' images
  c.grpo.fixed_seed = 0
  c.grpo.log_every = 10
  c.grpo.eval_every = 50               # validation reward at checkpoints every this many steps (0: off)
  c.grpo.save_rollouts = 0             # every this many steps, grpo/rollouts/step_N.npz (0: never)
  c.grpo.ckpt_every = 50
  c.grpo.grid_every = 50               # sample grids: history | the G samples | target, 4 histories
  c.grpo.defence_response = "stop"     # stop | rollback (to the last healthy checkpoint, lower lr, more diversity)
  c.grpo.defence_window = 20
  c.grpo.defence_warmup = 5
  c.grpo.defence_patience = 3
  c.grpo.defence_std_ratio = 0.3
  c.grpo.defence_distance_ratio = 0.5  # alarm: cross-user distance 1 - sim below this x the first steps'
  c.grpo.defence_drift = ()            # drift stats the alarm uses: brightness saturation edge_density token_entropy
  c.grpo.defence_drift_z = 6.0         # ... when off their first steps' mean by this many stds
  c.grpo.defence_entropy_ratio = 0.45 # alarm: batch token entropy below this x the first step's (0: off)
  c.grpo.defence_lr_factor = 0.5
  c.grpo.defence_diversity_factor = 2.0
  c.grpo.defence_max_rollbacks = 3     # then stop

  # The frozen reward and metric models vq (LPIPS), grpo (rewards), eval (metrics) and fetch share;
  # the scorer process serves NIMA and Qwen2.5-VL.
  c.reward_models = ml_collections.ConfigDict()
  c.reward_models.clip = ""                # CLIP directory (transformers or open_clip), e.g. ViT-H-14 laion2b
  c.reward_models.dino = ""                # DINOv2 directory
  c.reward_models.dino_size = 224          # DINO input size (Pigeon's protocol); positions resampled to it
  c.reward_models.lpips_vgg = ""           # torchvision VGG16 weights, for lpips_target
  c.reward_models.lpips_heads = ""         # lpips' weights/v0.1/vgg.pth
  c.reward_models.scorer_url = "http://127.0.0.1:8765"
  c.reward_models.scorer_token = ""
  c.reward_models.scorer_nima = ""         # NIMA weights (pyiqa's file): the job's own scorer loads them
  c.reward_models.scorer_qwen = ""         # Qwen2.5-VL directory (transformers layout), for the profile term
  c.reward_models.scorer_start = True      # start the scorer when profile/nima have weight and none answers
  c.reward_models.scorer_device = ""       # torch device of a started scorer: "" = cuda when present, else cpu

  c.eval = ml_collections.ConfigDict()  # the comparison: recommenders and generators on the same windows
  c.eval.clip = ""                     # metric CLIP; "": reward_models.clip (the optimised reward, with a warning)
  c.eval.dino = ""                     # metric DINO; "": reward_models.dino
  c.eval.scorer_terms = ()             # nima, profile: per image from the scorer (reward_models.scorer_*; started if none)
  c.eval.recommenders = ("random", "pop", "itemknn", "lastitem", "sasrec")
  c.eval.generators = ("zero_shot", "sft", "grpo")  # rows for those that exist
  c.eval.sasrec = ml_collections.ConfigDict(dict(dim=64, layers=2, heads=1, dropout=0.2, lr=1e-3, weight_decay=0.0,
                                                 epochs=30, batch_size=128, seed=0))
  c.eval.bootstrap = 1000              # resamples of the windows for the 95% intervals
  c.eval.report_users = 8              # users shown with their images in report.html
  c.eval.samples = 4                   # images per test window
  c.eval.per_user = 1                  # test windows per user
  c.eval.windows = 0                   # at most this many windows in all; 0: every selected one
  c.eval.batch_size = 8
  c.eval.cfg_weight = 5.0
  c.eval.temperature = 1.0
  c.eval.seed = 0

  c.export = ml_collections.ConfigDict(dict(dir=""))

  # The fetch stage: what to download into the paths above when they are missing. Revisions are pinned
  # to commits, so two runs months apart read the same bytes ("main" would follow the repository). The
  # hashes are the commits that other public projects pin for these repositories (not checked against
  # the Hub from here: hubs are unreachable on the build machines); a wrong one fails the fetch with a
  # 404 naming the repository and revision.
  c.fetch = ml_collections.ConfigDict()
  c.fetch.hf_endpoint = ""             # "": $HF_ENDPOINT, else https://huggingface.co
  c.fetch.janus = ml_collections.ConfigDict(dict(  # -> model.checkpoint
      repo="deepseek-community/Janus-Pro-1B",
      revision="1655280bb75959cc1cb85529a2a8b26e7016072e",
      allow=("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")))
  c.fetch.clip = ml_collections.ConfigDict(dict(   # -> reward_models.clip (open_clip layout and its tokenizer)
      repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
      revision="1c2b8495b28150b8a4922ee1c8edee224c284c0c",
      allow=("open_clip_config.json", "open_clip_model.safetensors", "tokenizer*", "vocab.json", "merges.txt",
             "special_tokens_map.json")))
  c.fetch.dino = ml_collections.ConfigDict(dict(   # -> reward_models.dino
      repo="facebook/dinov2-large",
      revision="47b73eefe95e8d44ec3623f8890bd894b6ea2d6c", allow=("config.json", "model.safetensors",
                                                             "preprocessor_config.json")))
  c.fetch.qwen = ml_collections.ConfigDict(dict(   # -> reward_models.scorer_qwen, when reward_weights.profile > 0
      repo="Qwen/Qwen2.5-VL-7B-Instruct",
      revision="cc594898137f460bfe9f0759e9844b3ce807cfb5", allow=("*.json", "*.safetensors", "*.txt", "*.jinja")))
  c.fetch.nima = ml_collections.ConfigDict(dict(   # -> reward_models.scorer_nima, when reward_weights.nima > 0
      repo="chaofengc/IQA-PyTorch-Weights",
      revision="0df2df423c65f6a64209309695f3845727431027", file="NIMA_InceptionV2_ava-b0c77c00.pth"))
  c.fetch.movielens_url = "https://files.grouplens.org/datasets/movielens"  # <url>/<data.version>.zip(.md5)
  c.fetch.movielens_md5 = ""           # "": the .md5 published beside the zip
  c.fetch.posters = "tmdb"             # tmdb: fetch with $TMDB_API_KEY; or a folder of <movieId>.jpg to use
  c.fetch.tmdb_api = "https://api.themoviedb.org/3"
  c.fetch.tmdb_images = "https://image.tmdb.org/t/p"
  c.fetch.lock_timeout = 3600.0        # seconds to wait for another process fetching the same thing
  return c
