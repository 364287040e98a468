"""Training: SFT (sft.py, run by sft_loop.py) and GRPO (grpo.py, run by grpo_loop.py), checkpoints."""
