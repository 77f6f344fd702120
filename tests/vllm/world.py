"""A small world whose head size vLLM's CPU attention accepts (32), built at test time in seconds.

Why not the toy world: its head_dim is 24, which vLLM's CPU attention rejects (it takes 32, 64, 80, ...),
and the toy world's version and weights must not change under the search-quality measurements made on it.
So this world keeps the toy world's vocabulary, tokenizer, chat template, image processor and benchmark
rows (``objectives.toy.vocab`` / ``bench_data``), with its own shapes (hidden 64, 2 heads of 32, 1 KV head,
2 layers) and untrained weights drawn as ``tests/tiny/models.py`` draws them: base = random init, the LLM
and the VLM's language model = base + independent N(0, noise²). It scores near zero; what the vLLM tests
compare is every generated response, which an untrained model makes as varied as a trained one.

The VLM is saved with the stock ``Qwen2VLProcessor`` (video processor included, which needs torchvision:
this module runs in .venv-vllm only); :func:`objectives.processing.load_processor` reads the same files as
the image-only processor for the ``hf`` engine.

:func:`build_llava_next_world`: a LLaVA-Next trio of ``tests/tiny`` (Llama language model, CLIP tower) with
2 heads of 32, the byte-level tokenizer and LLaVA-Next processor of ``tests/tiny/vlm_processing``, and the
same benchmark rows. Its VLM file stores the vision tower under the hub's names
(``vision_tower.vision_model.*``, as llava-hf/llava-v1.6-* do): transformers 5 saves its in-memory CLIP
layout (``vision_tower.embeddings...``, no ``vision_model.``), which vLLM 0.32's LLaVA-Next loader does not
map (``There is no module or parameter named 'vision_tower.embeddings'``); transformers loads both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
)

from objectives.toy import bench_data
from objectives.toy.vocab import (
    IM_END,
    IMAGE_PAD,
    PAD,
    TOKEN_ID,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    VOCAB_SIZE,
    build_tokenizer,
)

TEXT = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
    bos_token_id=TOKEN_ID[PAD], eos_token_id=TOKEN_ID[IM_END], pad_token_id=TOKEN_ID[PAD],
)  # fmt: skip
MROPE_SECTION = [4, 6, 6]  # head_dim 32 -> 16 rotary pairs over (time, height, width)
VISION = dict(
    depth=2, embed_dim=32, hidden_size=64, num_heads=1, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2, in_channels=3,
)  # fmt: skip
VISION_25 = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=1, out_hidden_size=64, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=56, fullatt_block_indexes=[1],
)  # fmt: skip
FAMILIES = ("qwen2_vl", "qwen2_5_vl")
SIDE = 28  # one 28x28 image = 4 patches = 1 merged token: the toy world's layout


@dataclass(frozen=True)
class World:
    """Checkpoint dirs, the LMUData dir and its dataset names."""

    vlm: Path
    llm: Path
    base: Path
    data_dir: Path
    datasets: tuple[str, ...]
    family: str = "qwen2_vl"


def _name_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _noisy(t: torch.Tensor, std: float, seed: int, name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_name_seed(seed, name))
    return t + std * torch.randn(t.shape, generator=gen, dtype=torch.float32)


def _vlm_config(family: str) -> Qwen2VLConfig | Qwen2_5_VLConfig:
    text = dict(TEXT)
    text.pop("tie_word_embeddings")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": MROPE_SECTION}
    cls, vision, arch = (
        (Qwen2VLConfig, VISION, "Qwen2VLForConditionalGeneration")
        if family == "qwen2_vl"
        else (Qwen2_5_VLConfig, VISION_25, "Qwen2_5_VLForConditionalGeneration")
    )
    cfg = cls(
        text_config=text, vision_config=dict(vision), image_token_id=TOKEN_ID[IMAGE_PAD],
        video_token_id=TOKEN_ID[VIDEO_PAD], vision_start_token_id=TOKEN_ID[VISION_START],
        vision_end_token_id=TOKEN_ID[VISION_END], tie_word_embeddings=False, bos_token_id=TOKEN_ID[PAD],
        eos_token_id=TOKEN_ID[IM_END], pad_token_id=TOKEN_ID[PAD],
    )  # fmt: skip
    cfg.architectures = [arch]
    return cfg


def _generation_defaults(model: torch.nn.Module) -> None:
    gc = model.generation_config
    gc.eos_token_id = TOKEN_ID[IM_END]
    gc.pad_token_id = TOKEN_ID[PAD]
    gc.bos_token_id = None
    gc.do_sample = False


def save_stock_processor(tokenizer, out: Path, family: str = "qwen2_vl") -> None:
    """The stock Qwen2(.5)-VL processor (image + video processor + tokenizer + template), as vLLM loads it."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    # up to (2 SIDE)^2: a 28x28 image stays one token, and a study's min_pixels can ask for 4 (settings test)
    image = Qwen2VLImageProcessor(min_pixels=SIDE * SIDE, max_pixels=4 * SIDE * SIDE)
    video = Qwen2VLVideoProcessor(min_pixels=SIDE * SIDE, max_pixels=4 * SIDE * SIDE)
    cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    proc = cls(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=tokenizer.chat_template,
    )
    proc.save_pretrained(str(out))


def build_world(
    root: Path, seed: int = 0, *, noise: float = 0.05, items: int = 12, family: str = "qwen2_vl"
) -> World:
    """Build the world under ``root`` (deterministic in ``seed``); ``items`` rows per dataset kind;
    ``family`` the VLM's (one of :data:`FAMILIES`)."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_cfg = Qwen2Config(**TEXT)
    text_cfg.architectures = ["Qwen2ForCausalLM"]
    base = Qwen2ForCausalLM(text_cfg).float().eval()
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    llm = Qwen2ForCausalLM(text_cfg).float().eval()
    torch.manual_seed(seed + 2)
    vlm = AutoModelForImageTextToText.from_config(_vlm_config(family)).float().eval()
    vstate = vlm.state_dict()
    with torch.no_grad():
        for name, p in llm.state_dict().items():
            p.copy_(_noisy(base_state[name], noise, seed + 1, name))
        for name, p in vstate.items():
            src = "model." + name.removeprefix("model.language_model.") if "language_model" in name else name
            if src in base_state:
                p.copy_(_noisy(base_state[src], noise, seed + 2, name))
    paths = {}
    for label, model in (("base", base), ("llm", llm), ("vlm", vlm)):
        path = root / label
        _generation_defaults(model)
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        paths[label] = path
    save_stock_processor(tokenizer, paths["vlm"], family)
    data = write_benchmarks(root, seed, items)
    meta = {"seed": seed, "noise": noise, "items": items, "family": family}
    (root / "world.json").write_text(json.dumps(meta) + "\n")
    return World(paths["vlm"], paths["llm"], paths["base"], data, DATASETS, family)


DATASETS = ("MathVista_V32", "MathVision_V32")


def write_benchmarks(root: Path, seed: int, items: int) -> Path:
    """The toy world's MathVista / MathVision rows (``items`` per kind, 28x28 digit images) under
    ``root/LMUData``; returns that folder."""
    rng = np.random.default_rng(seed)
    triples = [tuple(int(x) for x in rng.integers(0, 10, 3)) for _ in range(items)]
    data = root / "LMUData"
    half = items // 2
    bench_data.write_tsv(bench_data.vista_rows(seed, triples, half, items - half), data / "MathVista_V32.tsv")
    bench_data.write_tsv(
        bench_data.mathv_rows(seed, triples, half, items - half), data / "MathVision_V32.tsv"
    )
    return data


def hub_vision_names(vlm: Path) -> None:
    """Rewrite ``vlm``'s safetensors with the vision tower under the hub's LLaVA names
    (``vision_tower.X`` -> ``vision_tower.vision_model.X``; the module docstring says why)."""
    for f in sorted(vlm.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            state = {k: h.get_tensor(k) for k in h.keys()}
        renamed = {
            "vision_tower.vision_model." + k.removeprefix("vision_tower.")
            if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")
            else k: v
            for k, v in state.items()
        }
        save_file(renamed, str(f), metadata={"format": "pt"})


def build_llava_next_world(root: Path, seed: int = 0, *, noise: float = 0.05, items: int = 12) -> World:
    """A LLaVA-Next world with head_dim 32 (module docstring), deterministic in ``seed``."""
    from tests.tiny.models import build_trio
    from tests.tiny.vlm_processing import add_processor

    root.mkdir(parents=True, exist_ok=True)
    trio = build_trio("llava_next", root, seed, noise=noise, heads=2)
    add_processor(trio.vlm)
    hub_vision_names(trio.vlm)
    data = write_benchmarks(root, seed, items)
    meta = {"seed": seed, "noise": noise, "items": items, "family": "llava_next"}
    (root / "world.json").write_text(json.dumps(meta) + "\n")
    return World(trio.vlm, trio.llm, trio.base, data, DATASETS, "llava_next")
