"""What VLMEvalKit decodes with, per VLM family, and how a study's generation settings resolve against it.

A proxy that scores differently from the full evaluation ranks differently, so by default (``preset =
"vlmeval"``) a study generates as VLMEvalKit's wrapper for the family does. Every row below was read in
VLMEvalKit's source (open-compass/VLMEvalKit, the ``main`` branch as stored in the search index; the two
LLaVA rows re-read at commit e8e78f05 of 2026-08-18, where ``max_new_tokens`` is 2048: it went from 512 to
2048 in commit 43af13e0, 2025-02-20, for ``LLaVA``, ``LLaVA_Next`` and ``LLaVA_Next2`` alike):

| family | wrapper (file: function) | settings read there |
| --- | --- | --- |
| qwen2_vl, qwen2_5_vl | ``vlmeval/vlm/qwen2_vl/model.py``: ``Qwen2VLChat.__init__`` and ``generate_inner_transformers``; ``vlmeval/config.py``: the ``Qwen2-VL-7B-Instruct`` / ``Qwen2.5-VL-7B-Instruct`` partials | ``max_new_tokens=2048``, ``repetition_penalty=1.0``, ``top_k=1`` (greedy), no system prompt (the chat template's own), ``min_pixels=1280*28*28``, ``max_pixels=16384*28*28`` |
| llava_next | ``vlmeval/vlm/llava/llava.py``: ``LLaVA_Next.__init__`` and ``generate_inner``, ``output_process`` | ``do_sample=False, max_new_tokens=2048, num_beams=1``, no repetition penalty; the answer is cut at the first ``<|eot_id|>`` (Llama-3 variants), which stopping there reproduces |
| llava | ``vlmeval/vlm/llava/llava.py``: ``LLaVA.__init__`` | ``do_sample=False, max_new_tokens=2048, num_beams=1``, stop at ``</s>`` (the eos) |
| idefics2 | ``vlmeval/vlm/idefics.py``: ``IDEFICS2.__init__`` and ``generate_inner`` | ``max_new_tokens=1024``, the checkpoint's generation config otherwise (no repetition penalty) |

VLMEvalKit's dataset-specific prompts (Qwen2-VL's ``use_custom_prompt`` mixin, Idefics2's
``build_prompt_mathvista`` option rewriting) are reproduced by :mod:`objectives.dataset_prompts`: the preset
``"vlmeval"`` sets ``dataset_prompts`` to the family's style, ``dataset_prompts = "none"`` sends the TSV's
question unchanged. ``preset = "none"`` keeps the processor's bounds and the model's eos ids, with no
repetition penalty (1.0, recorded as such) and 64 new tokens unless set (the toy world decodes that way).
Every resolved config holds an explicit ``repetition_penalty``: left None, the HF engine would take the
checkpoint's generation_config.json value and vLLM (explicit ``SamplingParams``) 1.0
(:func:`objectives.engines.settings.resolve_repetition_penalty`, the rule both engines apply).

Resolution (:func:`resolve_generation`): the preset's values, then every field the study sets.
``eos_tokens`` of a family are token strings, turned into ids with the VLM's tokenizer (a token the
tokenizer does not have is skipped: ``<|eot_id|>`` exists only in Llama-3 based LLaVA-Next checkpoints).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from merge_core.errors import MergesearchError

from .dataset_prompts import STYLES, family_style
from .generation import GenerationConfig

PRESETS: tuple[str, ...] = ("vlmeval", "none")
NONE_MAX_NEW_TOKENS = 64

# Study-settable fields: GenerationConfig's decoding fields (batch_size is a scorer setting: [objectives]).
SETTABLE: tuple[str, ...] = tuple(f.name for f in fields(GenerationConfig) if f.name != "batch_size")


class GenerationSettingsError(MergesearchError):
    """Generation settings that cannot be resolved for the study's VLM."""


@dataclass(frozen=True)
class FamilyGeneration:
    """VLMEvalKit's decoding settings for one VLM family (``source``: where they were read)."""

    source: str
    max_new_tokens: int
    repetition_penalty: float = 1.0
    min_pixels: int | None = None
    max_pixels: int | None = None
    system_prompt: str | None = None
    eos_tokens: tuple[str, ...] = ()
    stop_strings: tuple[str, ...] = ()


_QWEN = FamilyGeneration(
    source="vlmeval/vlm/qwen2_vl/model.py: Qwen2VLChat.__init__; vlmeval/config.py: Qwen2(.5)-VL-7B-Instruct",
    max_new_tokens=2048,
    repetition_penalty=1.0,
    min_pixels=1280 * 28 * 28,
    max_pixels=16384 * 28 * 28,
)

# config.json ``model_type`` -> VLMEvalKit's settings; one row per family of merge_core.architectures.
FAMILY_GENERATION: dict[str, FamilyGeneration] = {
    "qwen2_vl": _QWEN,
    "qwen2_5_vl": _QWEN,
    "llava_next": FamilyGeneration(
        # VLMEvalKit e8e78f05, vlmeval/vlm/llava/llava.py, LLaVA_Next.__init__: kwargs_default(...,
        # max_new_tokens=2048, ...); 512 before its commit 43af13e0 (2025-02-20)
        source="vlmeval/vlm/llava/llava.py: LLaVA_Next.__init__, LLaVA_Next.output_process",
        max_new_tokens=2048,
        eos_tokens=("<|eot_id|>",),
    ),
    "llava": FamilyGeneration(
        # VLMEvalKit e8e78f05, LLaVA.__init__: max_new_tokens=2048 too (the same commit raised both)
        source="vlmeval/vlm/llava/llava.py: LLaVA.__init__", max_new_tokens=2048, eos_tokens=("</s>",)
    ),
    "idefics2": FamilyGeneration(
        source="vlmeval/vlm/idefics.py: IDEFICS2.__init__", max_new_tokens=1024, repetition_penalty=1.0
    ),
}


def _token_ids(tokenizer: Any, tokens: tuple[str, ...]) -> tuple[int, ...]:
    if tokenizer is None or not tokens:
        return ()
    vocab = tokenizer.get_vocab()
    return tuple(int(vocab[t]) for t in tokens if t in vocab)


def resolve_generation(
    model_type: str,
    settings: Mapping[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    batch_size: int = 8,
    fallback_max_new_tokens: int = NONE_MAX_NEW_TOKENS,
) -> GenerationConfig:
    """The :class:`GenerationConfig` a study decodes with for a VLM of ``model_type``.

    ``settings``: ``{"preset": "vlmeval" | "none", <field>: value}`` (a study's ``[objectives.generation]``,
    validated by ``search.study.spec``); fields absent take the preset's value: VLMEvalKit's for the family
    (:data:`FAMILY_GENERATION`) or, for ``"none"``, GenerationConfig's with ``fallback_max_new_tokens`` and
    ``repetition_penalty = 1.0``.
    ``eos_token_ids`` of the study are added to the family's ``eos_tokens`` (as ids of ``tokenizer``).
    """
    settings = dict(settings or {})
    preset = settings.pop("preset", "vlmeval")
    unknown = sorted(set(settings) - set(SETTABLE))
    if unknown:
        raise GenerationSettingsError(
            f"generation setting {unknown[0]!r} is unknown; allowed: preset, {', '.join(SETTABLE)}"
        )
    if preset not in PRESETS:
        raise GenerationSettingsError(
            f"generation preset {preset!r} is unknown; allowed: {', '.join(PRESETS)}"
        )
    # repetition_penalty 1.0: "none" means no penalty, recorded, so both engines apply the same one
    base: dict[str, Any] = {
        "batch_size": batch_size,
        "max_new_tokens": fallback_max_new_tokens,
        "repetition_penalty": 1.0,
    }
    prompts = settings.pop("dataset_prompts", "vlmeval" if preset == "vlmeval" else "none")
    if preset == "vlmeval":
        family = FAMILY_GENERATION.get(model_type)
        if family is None:
            raise GenerationSettingsError(
                f"no VLMEvalKit generation settings for model_type {model_type!r} (known: "
                f"{', '.join(sorted(FAMILY_GENERATION))}); set objectives.generation.preset = 'none' or add a row "
                "to objectives/generation_defaults.py"
            )
        base.update(
            max_new_tokens=family.max_new_tokens,
            repetition_penalty=family.repetition_penalty,
            min_pixels=family.min_pixels,
            max_pixels=family.max_pixels,
            system_prompt=family.system_prompt,
            stop_strings=family.stop_strings,
            eos_token_ids=_token_ids(tokenizer, family.eos_tokens),
        )
    extra_eos = tuple(int(i) for i in settings.pop("eos_token_ids", ()) or ())
    base.update(settings)
    base["stop_strings"] = tuple(base.get("stop_strings", ()) or ())
    base["eos_token_ids"] = tuple(dict.fromkeys((*base.get("eos_token_ids", ()), *extra_eos)))
    base["instructions"] = dict(base.get("instructions") or {})
    base["dataset_prompts"] = family_style(model_type) if prompts == "vlmeval" else prompts
    if base["dataset_prompts"] not in STYLES:
        raise GenerationSettingsError(
            f"dataset_prompts {prompts!r} is unknown; allowed: vlmeval, {', '.join(STYLES)}"
        )
    return GenerationConfig(**base)


def study_generation(
    model_type: str,
    settings: Mapping[str, Any] | None,
    *,
    processor: Any,
    batch_size: int,
    max_new_tokens: int,
) -> GenerationConfig:
    """The one resolution of a study's ``[objectives.generation]`` for a loaded checkpoint: the proxy's
    worker and promotion's built-in backend both call it, so a promoted score is decoded exactly as the
    proxy was (same stop strings, eos ids, penalty, pixel bounds, system prompt, instructions).

    ``settings`` empty or None: the preset ``"none"`` with ``max_new_tokens`` (an older caller's fields);
    ``processor``: the checkpoint's, whose tokenizer turns the family's eos token strings into ids.
    """
    return resolve_generation(
        model_type,
        dict(settings or {}) or {"preset": "none"},
        tokenizer=getattr(processor, "tokenizer", None),
        batch_size=batch_size,
        fallback_max_new_tokens=max_new_tokens,
    )
