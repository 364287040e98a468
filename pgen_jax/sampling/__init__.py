"""History-conditioned image generation: prompt building and the KV-cache CFG sampler."""

from pgen_jax.sampling.prompts import (HistoryItem, PromptBatch, PromptTemplate, SpecialTokens, build_batch,
                                       prompt_ids, uncond_ids)
from pgen_jax.sampling.sampler import SampleOutput, Sampler, SamplingConfig, generate, guided_logits, per_sample

__all__ = ["HistoryItem", "PromptBatch", "PromptTemplate", "SampleOutput", "Sampler", "SamplingConfig",
           "SpecialTokens", "build_batch", "generate", "guided_logits", "per_sample", "prompt_ids",
           "uncond_ids"]
