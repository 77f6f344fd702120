"""Digit images: a 28x28 RGB canvas (one Qwen2-VL vision token) with a digit in random tint, size, offset,
rotation and noise, or a blank canvas (the image cell of text-only items)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIDE = 28  # = patch_size * spatial_merge_size: one image is exactly one LM token
BLANK = 10  # image code of the blank canvas (digits are 0..9)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render(code: int, rng: np.random.Generator) -> Image.Image:
    """A 28x28 RGB image of digit ``code`` (0..9), or a blank canvas for :data:`BLANK`.

    Draws (in this order, so the stream is reproducible): background tint, ink colour, font size 15..23,
    offset +-3 px, rotation +-15 degrees, Gaussian pixel noise sd 6..14.
    """
    bg = rng.integers(170, 256, size=3)
    ink = rng.integers(0, 90, size=3)
    size = int(rng.integers(15, 24))
    dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
    angle = float(rng.uniform(-15.0, 15.0))
    noise_sd = float(rng.uniform(6.0, 14.0))
    mask = Image.new("L", (SIDE, SIDE), 0)
    if code != BLANK:
        draw = ImageDraw.Draw(mask)
        draw.text((SIDE / 2 + dx, SIDE / 2 + dy), str(code), fill=255, font=_font(size), anchor="mm")
        mask = mask.rotate(angle, resample=Image.BILINEAR)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    pixels = bg[None, None, :] * (1.0 - alpha) + ink[None, None, :] * alpha
    pixels = pixels + rng.normal(0.0, noise_sd, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def render_many(codes: list[int] | np.ndarray, rng: np.random.Generator) -> list[Image.Image]:
    """:func:`render` for each code, drawing from one generator in order."""
    return [render(int(c), rng) for c in codes]
