"""Reward and metric models in JAX: CLIP, DINO, LPIPS, SSIM and the weighted combination of terms."""
