"""Real-size configs of the studies' model trios, and checkpoints in the hub's layout built from them.

The sizes are those of the hub's config.json files (Qwen/Qwen2.5-VL-7B-Instruct + Qwen/Qwen2.5-Math-7B +
Qwen/Qwen2.5-7B; llava-hf/llama3-llava-next-8b-hf + hkust-nlp/dart-math-llama3-8b-prop2diff +
meta-llama/Meta-Llama-3-8B; HuggingFaceM4/idefics2-8b + mistralai/Mistral-7B-v0.1). ``layers`` shortens
the decoders (and nothing else) where a test or benchmark cannot afford all of them.

:func:`write_checkpoint` writes a config.json and one safetensors file per model in the hub's tensor names:
header only (a sparse file of the full size, nothing read or written but the header) or with random data
(``fill``), so the memory plan, the tensor map and ``from_pretrained`` see the real layout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    Idefics2Config,
    LlamaConfig,
    LlavaNextConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2Config,
)

from merge_core.io import TORCH_TO_ST

FAMILIES = ("qwen2_5_vl", "llava_next", "idefics2")

QWEN_TEXT = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
)  # fmt: skip
LLAMA3_TEXT = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip
MISTRAL_TEXT = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip

# ``tiny``: the same layout and vocabulary (the special tokens keep their ids) with small widths
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
TINY_QWEN_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                        fullatt_block_indexes=[1])  # fmt: skip

# in-memory prefix -> hub prefix (first match); names not listed are stored as they are in memory
HUB_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_5_vl": (("model.language_model.", "model."), ("model.visual.", "visual.")),
    "llava_next": (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
    ),
    "idefics2": (),
}


def _layers(text: dict, layers: int | None, tiny: bool = False) -> dict:
    text = {**text, **TINY_TEXT} if tiny else text
    return text if layers is None else {**text, "num_hidden_layers": layers}


def vlm_config(family: str, layers: int | None = None, tiny: bool = False) -> PretrainedConfig:
    """The VLM's config at real size (``layers``: fewer decoder layers; ``tiny``: small widths, Qwen only)."""
    if family == "qwen2_5_vl":
        text = {**_layers(QWEN_TEXT, layers, tiny), "rope_parameters": {
            "rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3] if tiny else [16, 24, 24]}}  # fmt: skip
        vision = dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        )  # fmt: skip
        vision.update(TINY_QWEN_VISION if tiny else {})
        return Qwen2_5_VLConfig(
            text_config={**text, "bos_token_id": 151643, "eos_token_id": 151645},
            vision_config=vision, image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
            vision_end_token_id=151653, tie_word_embeddings=False,
        )  # fmt: skip
    if family == "llava_next":
        text = {**_layers(LLAMA3_TEXT, layers), "vocab_size": 128320, "model_type": "llama"}
        vision = dict(
            model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
        )  # fmt: skip
        return LlavaNextConfig(
            text_config=text, vision_config=vision, image_token_index=128256, vision_feature_layer=-2,
            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            tie_word_embeddings=False,
        )  # fmt: skip
    if family == "idefics2":
        text = {**_layers(MISTRAL_TEXT, layers), "vocab_size": 32003, "model_type": "mistral"}
        vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                      image_size=980, patch_size=14)  # fmt: skip
        perceiver = dict(resampler_n_latents=64, resampler_depth=3, resampler_n_heads=16, resampler_head_dim=96,
                         num_key_value_heads=4)  # fmt: skip
        return Idefics2Config(
            text_config=text, vision_config=vision, perceiver_config=perceiver, image_token_id=32001,
            tie_word_embeddings=False,
        )  # fmt: skip
    raise KeyError(family)


def llm_config(family: str, layers: int | None = None, tiny: bool = False) -> PretrainedConfig:
    """The paired text-only LLM's (and base's) config at real size (``tiny``: Qwen only)."""
    if family == "qwen2_5_vl":
        return Qwen2Config(**_layers(QWEN_TEXT, layers, tiny), rope_theta=1000000.0)
    if family == "llava_next":
        return LlamaConfig(**_layers(LLAMA3_TEXT, layers), vocab_size=128256, rope_theta=500000.0)
    if family == "idefics2":
        return MistralConfig(**_layers(MISTRAL_TEXT, layers))
    raise KeyError(family)


def meta_model(config: PretrainedConfig, vlm: bool) -> torch.nn.Module:
    """The model built on the meta device (no memory): its parameters have the real shapes."""
    cls = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(config)


def hub_name(family: str | None, name: str) -> str:
    """The hub's stored name of an in-memory parameter name (``family`` None: a text-only LLM)."""
    for memory, hub in HUB_NAMES.get(family or "", ()):
        if name.startswith(memory):
            return hub + name[len(memory) :]
    return name


def write_checkpoint(
    out: Path,
    config: PretrainedConfig,
    model: torch.nn.Module,
    family: str | None,
    dtype: torch.dtype = torch.bfloat16,
    fill: Callable[[str, tuple[int, ...]], torch.Tensor] | None = None,
) -> Path:
    """config.json + model.safetensors holding ``model``'s parameters under their hub names, in ``dtype``.

    ``fill(name, shape)``: the tensor to store (any float dtype; cast to ``dtype``); None writes the header
    only and extends the file to its full size without writing data (a sparse file)."""
    out.mkdir(parents=True, exist_ok=True)
    config.dtype = dtype
    config.save_pretrained(out)
    params = [(hub_name(family, n), tuple(p.shape)) for n, p in model.named_parameters()]
    st = TORCH_TO_ST[dtype]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in params:
        n = dtype.itemsize
        for s in shape:
            n *= s
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = out / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        if fill is None:
            f.truncate(8 + len(raw) + offset)
        else:
            for name, shape in params:
                t = fill(name, shape).to(dtype).contiguous()
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
    return path
