"""Tiny real models of every supported VLM family, built at test time (no hub, no committed weights).

A *trio* is what a merge needs: a ``base`` LM (random init), a reasoning ``llm`` fine-tuned from it and a
``vlm`` whose language model was fine-tuned from the same base.  Fine-tuning is imitated by adding small
Gaussian noise (std ``noise``) to the base weights, independently for the LLM and the VLM's LM, so task
vectors are small, dense and different, as they are for real fine-tunes.  Everything is a deterministic
function of ``seed``: two builds with the same arguments write bit-identical safetensors.

Usage in tests::

    trio = build_trio("qwen2_vl", tmp_path)               # one-off
    trio = cached_trio(tmp_path_factory, "llava_next")     # built once per pytest session
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    Idefics2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
)

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "llava_next", "llava", "idefics2")

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
BASE_VOCAB = 128
# Tokens the VLM configs point at.  Without extra vocabulary they live in the last rows of the shared
# vocabulary; with ``vlm_extra_vocab`` they move into the VLM-only rows, as in LLaVA-Next / Idefics2.
N_SPECIAL = 4


@dataclass(frozen=True)
class Trio:
    """Checkpoint directories of one tiny family: the VLM, the reasoning LLM and their common base."""

    family: str
    vlm: Path
    llm: Path
    base: Path


def _text_kwargs(vocab: int, tie: bool, layers: int, heads: int = HEADS) -> dict[str, Any]:
    return dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=min(KV_HEADS, heads),
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _llm_config(family: str, tie: bool, layers: int, heads: int = HEADS) -> PretrainedConfig:
    """The text-only LLM/base config sharing the VLM's LM shapes (vocab ``BASE_VOCAB``)."""
    kw = _text_kwargs(BASE_VOCAB, tie, layers, heads)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return Qwen2Config(**kw)
    if family in ("llava_next", "llava"):
        return LlamaConfig(**kw)
    if family == "idefics2":
        return MistralConfig(**kw)
    raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")


def _vlm_config(family: str, tie: bool, extra_vocab: int, layers: int, heads: int = HEADS) -> PretrainedConfig:
    vocab = BASE_VOCAB + extra_vocab
    special = list(range(vocab - N_SPECIAL, vocab))  # image, video, vision_start, vision_end
    if family in ("qwen2_vl", "qwen2_5_vl"):
        text = _text_kwargs(vocab, tie, layers, heads)
        # mrope_section must sum to head_dim / 2 (8 at 4 heads: [2, 3, 3]; 16 at 2 heads: [4, 6, 6])
        half = HIDDEN // heads // 2
        section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
        ids = dict(
            image_token_id=special[0],
            video_token_id=special[1],
            vision_start_token_id=special[2],
            vision_end_token_id=special[3],
        )
        if family == "qwen2_vl":
            vision = dict(
                depth=2, embed_dim=32, hidden_size=HIDDEN, num_heads=4, mlp_ratio=2, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
            )  # fmt: skip
            cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)
        else:
            vision = dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=HIDDEN,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=56,
                fullatt_block_indexes=[1],
            )  # fmt: skip
            cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **ids)
        return cfg
    clip = dict(
        model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=28, patch_size=14, projection_dim=32,
    )  # fmt: skip
    if family in ("llava_next", "llava"):
        text = dict(model_type="llama", **_text_kwargs(vocab, tie, layers, heads))
        common = dict(
            vision_config=clip, text_config=text, image_token_index=special[0], tie_word_embeddings=tie
        )
        if family == "llava":
            return LlavaConfig(image_seq_length=4, **common)
        return LlavaNextConfig(
            image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]], image_seq_length=4, **common
        )
    if family == "idefics2":
        text = dict(model_type="mistral", **_text_kwargs(vocab, tie, layers, heads))
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=28, patch_size=14)  # fmt: skip
        perceiver = dict(hidden_act="silu", resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                         resampler_head_dim=16, num_key_value_heads=1, hidden_size=HIDDEN, rms_norm_eps=1e-6)  # fmt: skip
        return Idefics2Config(
            text_config=text, vision_config=vision, perceiver_config=perceiver,
            image_token_id=special[0], tie_word_embeddings=tie,
        )  # fmt: skip
    raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")


def _seeded_init(build: Any, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build()


def _name_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed from (seed, tensor name): independent of Python's salted hash()."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _noisy(t: torch.Tensor, std: float, seed: int, name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_name_seed(seed, name))
    return t + std * torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)


def _lm_items(vlm_state: dict[str, torch.Tensor], base_names: set[str]) -> dict[str, str]:
    """Map VLM in-memory LM names -> base LLM names (``model.X`` / ``lm_head.weight``)."""
    out: dict[str, str] = {}
    for name in vlm_state:
        for prefix in ("model.language_model.", "model.text_model."):
            if name.startswith(prefix):
                cand = "model." + name[len(prefix) :]
                if cand in base_names:
                    out[name] = cand
        if name == "lm_head.weight" and "lm_head.weight" in base_names:
            out[name] = name
    return out


def build_trio(
    family: str,
    root: Path,
    seed: int = 0,
    *,
    noise: float = 0.02,
    tie_embeddings: bool = False,
    vlm_extra_vocab: int = 0,
    num_layers: int = LAYERS,
    heads: int = HEADS,
    dtype: torch.dtype = torch.float32,
) -> Trio:
    """Build and save a tiny (vlm, llm, base) trio of ``family`` under ``root`` (created if needed).

    base = random init (seed); llm = base + N(0, noise²); the VLM's LM = base + independent N(0, noise²);
    the VLM's vision tower / projector are random; with ``vlm_extra_vocab`` > 0 the VLM has that many extra
    embedding (and lm_head) rows after the shared ``BASE_VOCAB`` ones.  ``heads``: the language model's
    attention heads (head_dim = 64 / heads: the default 4 gives 16; 2 gives 32, a head size vLLM's CPU
    attention accepts).  ``dtype`` is the saved dtype.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    llm_cfg = _llm_config(family, tie_embeddings, num_layers, heads)
    base = _seeded_init(lambda: AutoModelForCausalLM.from_config(llm_cfg), seed).eval()
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}

    llm = _seeded_init(lambda: AutoModelForCausalLM.from_config(llm_cfg), seed).eval()
    with torch.no_grad():
        for name, p in llm.state_dict().items():
            p.copy_(_noisy(base_state[name], noise, seed + 1, name))

    vcfg = _vlm_config(family, tie_embeddings, vlm_extra_vocab, num_layers, heads)
    vlm = _seeded_init(lambda: AutoModelForImageTextToText.from_config(vcfg), seed + 2).eval()
    vstate = vlm.state_dict()
    with torch.no_grad():
        for vname, bname in _lm_items(vstate, set(base_state)).items():
            src = base_state[bname]
            dst = vstate[vname]
            if dst.shape == src.shape:
                dst.copy_(_noisy(src, noise, seed + 2, vname))
            else:  # extra vocabulary rows: shared rows from the base, extra rows keep their random init
                dst[: src.shape[0]].copy_(_noisy(src, noise, seed + 2, vname))

    paths = {}
    for label, model in (("base", base), ("llm", llm), ("vlm", vlm)):
        path = root / label
        model.to(dtype).save_pretrained(path)
        paths[label] = path
    return Trio(family=family, vlm=paths["vlm"], llm=paths["llm"], base=paths["base"])


_CACHE: dict[tuple, Trio] = {}


def cached_trio(tmp_path_factory: Any, family: str, seed: int = 0, **options: Any) -> Trio:
    """:func:`build_trio` once per pytest session per argument set (pass pytest's ``tmp_path_factory``)."""
    key = (family, seed, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _CACHE:
        label = "-".join([family, f"s{seed}", *(f"{k}{v}" for k, v in key[2])]).replace(".", "_")
        _CACHE[key] = build_trio(family, tmp_path_factory.mktemp(label), seed, **options)
    return _CACHE[key]
