"""Architectures of the toy world, as data: a Qwen2 base LM and a Qwen2-VL whose language model has the
same shapes and tensor names (so its LM merges 1:1 with the LLM's), with a tiny vision tower."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from objectives.toy.vocab import (
    IM_END,
    IMAGE_PAD,
    PAD,
    TOKEN_ID,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    VOCAB_SIZE,
)

TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 96,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": TOKEN_ID[PAD],
    "eos_token_id": TOKEN_ID[IM_END],
    "pad_token_id": TOKEN_ID[PAD],
}
# head_dim 24 -> 12 rotary pairs, split over (time, height, width)
MROPE_SECTION = [4, 4, 4]
VISION_CONFIG: dict[str, Any] = {
    "depth": 2,
    "embed_dim": 64,
    "hidden_size": TEXT_CONFIG["hidden_size"],
    "num_heads": 4,
    "mlp_ratio": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "in_channels": 3,
}


def base_config() -> Qwen2Config:
    """The base (and reasoning LLM) config."""
    cfg = Qwen2Config(**TEXT_CONFIG)
    cfg.architectures = ["Qwen2ForCausalLM"]
    return cfg


def vlm_config() -> Qwen2VLConfig:
    """The VLM config: the base's text shapes with M-RoPE, plus the tiny vision tower."""
    text = dict(TEXT_CONFIG)
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": text.pop("rope_theta"),
        "mrope_section": MROPE_SECTION,
    }
    text.pop("tie_word_embeddings")
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(VISION_CONFIG),
        image_token_id=TOKEN_ID[IMAGE_PAD],
        video_token_id=TOKEN_ID[VIDEO_PAD],
        vision_start_token_id=TOKEN_ID[VISION_START],
        vision_end_token_id=TOKEN_ID[VISION_END],
        tie_word_embeddings=False,
        bos_token_id=TOKEN_ID[PAD],
        eos_token_id=TOKEN_ID[IM_END],
        pad_token_id=TOKEN_ID[PAD],
    )
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    return cfg


def new_base(seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised base LM (initialisation drawn from ``seed``)."""
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(base_config()).float()


def new_vlm_from_base(base: Qwen2ForCausalLM, seed: int) -> Qwen2VLForConditionalGeneration:
    """A Qwen2-VL whose vision tower is fresh (from ``seed``) and whose language model and lm_head are the base's."""
    torch.manual_seed(seed)
    vlm = Qwen2VLForConditionalGeneration(vlm_config()).float()
    text_state = {k.removeprefix("model."): v for k, v in base.state_dict().items() if k.startswith("model.")}
    missing, unexpected = vlm.model.language_model.load_state_dict(text_state, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(
            f"base -> VLM text weights do not line up: missing {missing}, unexpected {unexpected}"
        )
    vlm.lm_head.weight.data.copy_(base.lm_head.weight.data)
    return vlm
