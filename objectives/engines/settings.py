"""The study's generation settings, one to one, as vLLM's ``SamplingParams`` and processor kwargs.

=========================  ==========================================================================
GenerationConfig            vLLM
=========================  ==========================================================================
greedy (always)             ``temperature=0`` (vLLM's greedy), ``n=1``
``max_new_tokens``          ``max_tokens``
``repetition_penalty``      ``repetition_penalty``, always set: :func:`resolve_repetition_penalty`, the one
                            rule both engines apply (None: the model's generation_config.json, else 1.0)
``stop_strings``            ``stop``; ``include_stop_str_in_output=True``, so the token ids hold the
                            stop text and the shared decoding step cuts before it, as the HF one does
``eos_token_ids``           ``stop_token_ids`` (the model's own EOS from generation_config.json stops
                            both engines as well)
``min_pixels/max_pixels``   ``mm_processor_kwargs`` = the same resolved ``size`` bounds the HF
                            generator passes to the same processor (``generation._pixel_kwargs``)
``system_prompt``,          the prompt text: both engines take ``Generator.prompt`` (the processor's
``instructions``            chat template over ``generation.build_messages``)
``batch_size``              none: vLLM batches continuously
=========================  ==========================================================================

The text of a completion is the HF tokenizer's decoding of the generated ids with special tokens
skipped, stripped — the HF generator's own step — so equal ids give equal responses.
Fields the tree's GenerationConfig does not have yet read as their defaults (``getattr``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def resolve_repetition_penalty(setting: float | None, model_default: float | None = None) -> float:
    """The repetition penalty ``p`` both engines apply: ``setting`` (the study's, resolved by
    ``objectives.generation_defaults``; every preset records one), else the model's own
    ``generation_config.json`` value ``model_default``, else 1.0 (none).

    Rule (transformers' and vLLM's alike): for each distinct token id ``t`` among the row's prompt tokens
    (its left padding excluded: ``objectives.generation.RowRepetitionPenalty``) and the tokens it generated
    so far, ``logit[t] <- logit[t] / p`` if ``logit[t] > 0`` else ``logit[t] * p``; once per id.
    Why one function: left unset, transformers ``generate`` used the model's generation config while vLLM,
    given explicit ``SamplingParams``, used 1.0, so the engines disagreed on e.g. Qwen2-VL-7B-Instruct
    (``repetition_penalty = 1.05`` in its generation_config.json).
    """
    for value in (setting, model_default):
        if value is not None:
            value = float(value)
            if not value > 0:
                raise ValueError(f"repetition_penalty must be > 0, got {value}")
            return value
    return 1.0


def model_repetition_penalty(model_dir: str | Path) -> float | None:
    """``repetition_penalty`` of ``model_dir``'s generation_config.json (None without one): the
    ``model_default`` of :func:`resolve_repetition_penalty` for an engine that has no HF model loaded."""
    path = Path(model_dir).expanduser() / "generation_config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("repetition_penalty")
    except (OSError, ValueError, AttributeError):
        return None
    return None if value is None else float(value)


def sampling_kwargs(config: Any, model_default_penalty: float | None = None) -> dict[str, Any]:
    """``SamplingParams(**sampling_kwargs(config))`` decodes as the HF generator does (table above);
    ``model_default_penalty``: the VLM's generation_config.json penalty (:func:`model_repetition_penalty`)."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": int(config.max_new_tokens),
        "skip_special_tokens": True,
        "repetition_penalty": resolve_repetition_penalty(
            getattr(config, "repetition_penalty", None), model_default_penalty
        ),
    }
    stops = tuple(getattr(config, "stop_strings", ()) or ())
    if stops:
        kwargs["stop"] = list(stops)
        kwargs["include_stop_str_in_output"] = True
    eos = tuple(getattr(config, "eos_token_ids", ()) or ())
    if eos:
        kwargs["stop_token_ids"] = [int(t) for t in eos]
    return kwargs


def processor_kwargs(processor: Any, config: Any) -> dict[str, Any]:
    """vLLM's ``mm_processor_kwargs``: the image size bounds the HF generator gives the same processor."""
    from objectives.generation import _pixel_kwargs

    return dict(_pixel_kwargs(processor, config))
