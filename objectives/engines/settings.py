"""The study's generation settings, one to one, as vLLM's ``SamplingParams`` and processor kwargs.

=========================  ==========================================================================
GenerationConfig            vLLM
=========================  ==========================================================================
greedy (always)             ``temperature=0`` (vLLM's greedy), ``n=1``
``max_new_tokens``          ``max_tokens``
``repetition_penalty``      ``repetition_penalty`` (None: 1.0, off — HF's default too)
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

from typing import Any


def sampling_kwargs(config: Any) -> dict[str, Any]:
    """``SamplingParams(**sampling_kwargs(config))`` decodes as the HF generator does (table above)."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": int(config.max_new_tokens),
        "skip_special_tokens": True,
    }
    penalty = getattr(config, "repetition_penalty", None)
    if penalty is not None:
        kwargs["repetition_penalty"] = float(penalty)
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
