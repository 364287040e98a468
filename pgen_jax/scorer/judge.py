"""Profile consistency judged by Qwen2.5-VL: does the image fit the user's profile?

The prompt (Qwen's chat format) asks for one digit from 0 to 9; the score is the expected digit
under the softmax of the ten digit logits at the answer position, divided by 9 (continuous, in
[0, 1]). Images are resized to `image_size` square so a batch shares one image-token count; the
image processor is the PIL one (no torchvision needed).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers as T
from PIL import Image

TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}"
            "A user's profile: {profile}\nHow well does this image match the user's taste? Answer with one digit "
            "from 0 (not at all) to 9 (perfectly).<|im_end|>\n<|im_start|>assistant\n")


class ProfileJudge:
  def __init__(self, path: str, *, image_size: int = 448, template: str = TEMPLATE, dtype=None):
    dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    self.model = T.Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(self.device).eval()
    self.tokenizer = T.AutoTokenizer.from_pretrained(path)
    self.images = T.Qwen2VLImageProcessorPil.from_pretrained(path)
    self.merge = self.model.config.vision_config.spatial_merge_size
    self.size, self.template = image_size, template
    self.digits = [self.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    if len(set(self.digits)) != 10 or self.tokenizer.unk_token_id in self.digits:
      raise ValueError(f"{path}: the tokenizer lacks single-digit tokens 0-9")

  def inputs(self, images: list[np.ndarray], profiles: list[str]) -> dict:
    pil = [Image.fromarray(x).convert("RGB").resize((self.size, self.size), Image.BICUBIC) for x in images]
    enc = self.images(images=pil, return_tensors="pt")
    n = int(enc["image_grid_thw"][0].prod()) // self.merge ** 2
    image = "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"
    texts = [self.template.format(image=image, profile=p) for p in profiles]
    ids = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
    return {**ids, **enc}

  @torch.no_grad()
  def __call__(self, images: list[np.ndarray], profiles: list[str]) -> np.ndarray:
    inputs = {k: v.to(self.device) for k, v in self.inputs(images, profiles).items()}
    logits = self.model(**inputs).logits[:, -1, self.digits].float()
    p = torch.softmax(logits, -1)
    return ((p * torch.arange(10, dtype=p.dtype, device=p.device)).sum(-1) / 9).cpu().numpy()
