"""Training: SFT (sft.py, run by loop.py), checkpoints, and the shared set-up from a config."""
