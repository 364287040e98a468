"""Reward and metric models: frozen Flax CLIP (clip.py); DINO, SSIM/LPIPS and the scorer come next."""
