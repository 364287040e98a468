"""Fields every experiment config has; the files beside this one set what differs."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stages = ("prepare", "sft", "grpo", "eval", "export")
  c.workdir = "runs/default"
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "janus-pro-1b"      # architecture when no checkpoint is given
  c.model.checkpoint = ""              # HF (transformers or deepseek) or pgen_jax directory
  c.model.dtype = "bfloat16"           # compute
  c.model.param_dtype = "float32"      # master weights
  c.model.tokenizer = ""               # "": the checkpoint's own; "bytes": byte-level, for tiny models

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1: all remaining devices

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"            # movielens | pixelrec | synthetic
  c.data.root = ""                     # raw files; synthetic: where the world is generated
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

  c.vq = ml_collections.ConfigDict()   # the vq stage: trains the image tokenizer (small-image runs only)
  c.vq.num_steps = 400
  c.vq.batch_size = 32
  c.vq.crop = 0                        # train on random crops of this side (a multiple of the patch); 0: whole
  c.vq.lr = 2e-3
  c.vq.warmup_steps = 20
  c.vq.clip = 1.0
  c.vq.beta = 0.25                     # commitment weight
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
  c.sft.remat = False
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
  c.grpo.warmup_steps = 0
  c.grpo.beta = 0.01                   # KL to the reference (the starting policy); 0 skips it
  c.grpo.eps_low = 0.2
  c.grpo.eps_high = 0.28               # clip-higher (DAPO); set equal to eps_low for symmetric clipping
  c.grpo.aggregation = "token"         # token | sequence
  c.grpo.advantage_scale = "std"       # std (GRPO) | none (Dr.GRPO)
  c.grpo.logprobs = "cond"             # cond (T2I-R1) | cfg (AR-GRPO): which distribution is trained
  c.grpo.cfg_weight = 5.0
  c.grpo.temperature = 1.0
  c.grpo.inner_updates = 1             # optimizer updates per rollout, with stored old log-probs
  c.grpo.sample_ahead = True           # sample batch t+1 (pre-update params) while the scorer scores batch t
  c.grpo.reward = "models"             # models | genre (synthetic world) | fixed (a hackable test reward)
  c.grpo.reward_weights = ml_collections.ConfigDict(
      dict(clip_history=1.0, clip_future=1.0, dino_target=0.5, profile=0.0, nima=0.0))
  c.grpo.clip = ""                     # CLIP directory (transformers or open_clip), e.g. ViT-H-14 laion2b
  c.grpo.dino = ""                     # DINOv2 directory
  c.grpo.dino_size = 224               # DINO input size (Pigeon's protocol); positions resampled to it
  c.grpo.lpips_vgg = ""                # torchvision VGG16 weights, for lpips_target
  c.grpo.lpips_heads = ""              # lpips' weights/v0.1/vgg.pth
  c.grpo.scorer_url = "http://127.0.0.1:8765"
  c.grpo.scorer_token = ""
  c.grpo.diversity_weight = 0.0        # penalty for resembling other users' images
  c.grpo.fixed_seed = 0
  c.grpo.log_every = 10
  c.grpo.ckpt_every = 50
  c.grpo.grid_every = 50               # sample grids: history | the G samples | target, 4 histories
  c.grpo.defence_response = "stop"     # stop | rollback (to the last healthy checkpoint, lower lr, more diversity)
  c.grpo.defence_window = 20
  c.grpo.defence_warmup = 5
  c.grpo.defence_patience = 3
  c.grpo.defence_std_ratio = 0.3
  c.grpo.defence_similarity = 0.9
  c.grpo.defence_lr_factor = 0.5
  c.grpo.defence_diversity_factor = 2.0
  c.grpo.defence_max_rollbacks = 3     # then stop

  c.eval = ml_collections.ConfigDict()  # uses grpo.clip / grpo.dino for the similarity metrics
  c.eval.samples = 4                   # images per test window
  c.eval.per_user = 1                  # test windows per user
  c.eval.windows = 0                   # at most this many windows in all; 0: every selected one
  c.eval.batch_size = 8
  c.eval.cfg_weight = 5.0
  c.eval.temperature = 1.0
  c.eval.seed = 0

  c.export = ml_collections.ConfigDict(dict(dir=""))
  return c
