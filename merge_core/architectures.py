"""The architecture table: where each VLM family keeps its language model, as data.

Each entry lists, for one VLM family, the ``model_type`` values it appears under, the LLM model types its
language model can pair with, and the name prefixes of its parts in both naming schemes (the on-disk Hub
layout and the in-memory layout transformers 5 uses; files in either load).  Adding a family is one entry.

The language model inside the VLM is addressed by *canonical* names — the names the paired text-only LLM
uses (``model.layers.3.mlp.up_proj.weight``, ``model.embed_tokens.weight``, ``lm_head.weight``) — so the
streamed merge (disk names) and the resident merge (in-memory names) share one plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from merge_core.errors import ArchitectureError


@dataclass(frozen=True)
class Architecture:
    """One VLM family: model types and name prefixes (longest match wins within each group)."""

    family: str
    vlm_model_types: tuple[str, ...]
    llm_model_types: tuple[str, ...]
    lm_prefixes: tuple[str, ...]  # decoder of the VLM's LM ("<prefix>layers.0...", "<prefix>norm.weight")
    lm_head_names: tuple[str, ...]
    projector_prefixes: tuple[str, ...]  # checked before vision: Qwen's merger sits inside ``visual``
    vision_prefixes: tuple[str, ...]


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        family="qwen2_vl",
        vlm_model_types=("qwen2_vl",),
        llm_model_types=("qwen2",),
        lm_prefixes=("model.language_model.", "model."),
        lm_head_names=("lm_head.weight",),
        projector_prefixes=("model.visual.merger.", "visual.merger."),
        vision_prefixes=("model.visual.", "visual."),
    ),
    Architecture(
        family="qwen2_5_vl",
        vlm_model_types=("qwen2_5_vl",),
        llm_model_types=("qwen2",),
        lm_prefixes=("model.language_model.", "model."),
        lm_head_names=("lm_head.weight",),
        projector_prefixes=("model.visual.merger.", "visual.merger."),
        vision_prefixes=("model.visual.", "visual."),
    ),
    Architecture(
        family="llava_next",
        vlm_model_types=("llava_next",),
        llm_model_types=("llama", "mistral"),
        lm_prefixes=("model.language_model.", "language_model.model."),
        lm_head_names=("lm_head.weight", "language_model.lm_head.weight"),
        projector_prefixes=(
            "model.multi_modal_projector.",
            "multi_modal_projector.",
            "model.image_newline",
            "image_newline",
        ),
        vision_prefixes=("model.vision_tower.", "vision_tower."),
    ),
    Architecture(
        family="llava",
        vlm_model_types=("llava",),
        llm_model_types=("llama", "mistral"),
        lm_prefixes=("model.language_model.", "language_model.model."),
        lm_head_names=("lm_head.weight", "language_model.lm_head.weight"),
        projector_prefixes=("model.multi_modal_projector.", "multi_modal_projector."),
        vision_prefixes=("model.vision_tower.", "vision_tower."),
    ),
    Architecture(
        family="idefics2",
        vlm_model_types=("idefics2",),
        llm_model_types=("mistral",),
        lm_prefixes=("model.text_model.",),
        lm_head_names=("lm_head.weight",),
        projector_prefixes=("model.connector.",),
        vision_prefixes=("model.vision_model.",),
    ),
)

# The text-only LLMs: every supported one stores its decoder under "model." and its head as "lm_head.weight".
LLM_PREFIX = "model."
LLM_HEAD = "lm_head.weight"
CANON_EMBED = "model.embed_tokens.weight"

# Components of LM tensors, by name relative to the decoder prefix; first match wins.
LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
LAYER_COMPONENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attention", re.compile(r"^self_attn\.")),
    ("mlp", re.compile(r"^(mlp|block_sparse_moe)\.")),
    ("norm", re.compile(r"^[a-z_]*(layernorm|_norm)\.")),
)
FINAL_NORM_RE = re.compile(r"^norm\.(weight|bias)$")
EMBED_RE = re.compile(r"^embed_tokens\.weight$")

# Tensor classes (what inspect counts)
CLASSES: tuple[str, ...] = ("vision", "projector", "embed", "lm_head", "layer", "final_norm")


@dataclass(frozen=True)
class Classified:
    """Where one VLM (or LLM) tensor sits.  ``canonical`` is the LLM-side name for LM tensors."""

    cls: str  # one of CLASSES
    canonical: str | None = None
    layer: int | None = None
    component: str | None = None  # attention | mlp | norm | embed | lm_head (LM tensors only)


def architecture_for(model_type: str | None, path: str = "") -> Architecture:
    """The table entry for a VLM ``model_type``; ArchitectureError listing the supported ones otherwise."""
    for arch in ARCHITECTURES:
        if model_type in arch.vlm_model_types:
            return arch
    supported = ", ".join(t for a in ARCHITECTURES for t in a.vlm_model_types)
    where = f" ({path}/config.json)" if path else ""
    raise ArchitectureError(
        f"unknown VLM architecture model_type={model_type!r}{where}; supported: {supported} "
        "(add an entry to merge_core/architectures.py)"
    )


def classify_lm_relative(rel: str) -> Classified | None:
    """Classify a name relative to the decoder prefix (``layers.3.mlp.up_proj.weight``, ``norm.weight``)."""
    canonical = LLM_PREFIX + rel
    m = LAYER_RE.match(rel)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        for component, pattern in LAYER_COMPONENTS:
            if pattern.match(rest):
                return Classified("layer", canonical, layer, component)
        return None
    if FINAL_NORM_RE.match(rel):
        return Classified("final_norm", canonical, None, "norm")
    if EMBED_RE.match(rel):
        return Classified("embed", canonical, None, "embed")
    return None


def classify_vlm(arch: Architecture, name: str) -> Classified | None:
    """Classify a VLM tensor name (either naming scheme); None if the table does not know it."""
    for prefix in arch.projector_prefixes:
        if name.startswith(prefix):
            return Classified("projector")
    for prefix in arch.vision_prefixes:
        if name.startswith(prefix):
            return Classified("vision")
    if name in arch.lm_head_names:
        return Classified("lm_head", LLM_HEAD, None, "lm_head")
    for prefix in sorted(arch.lm_prefixes, key=len, reverse=True):
        if name.startswith(prefix):
            return classify_lm_relative(name[len(prefix) :])
    return None


def classify_llm(name: str) -> Classified | None:
    """Classify a text-only LLM tensor name; its canonical name is the name itself."""
    if name == LLM_HEAD:
        return Classified("lm_head", LLM_HEAD, None, "lm_head")
    if name.startswith(LLM_PREFIX):
        return classify_lm_relative(name[len(LLM_PREFIX) :])
    return None
