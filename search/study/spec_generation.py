"""A study's ``[objectives.generation]`` table → the generation settings every worker resolves for its VLM.

Layout (every field optional; an absent field takes the preset's value, see
:mod:`objectives.generation_defaults`)::

    [objectives.generation]
    preset = "vlmeval"          # VLMEvalKit's settings for the VLM's family; "none": the processor's and
                                # the model's own (the default for the toy world)
    max_new_tokens = 2048
    min_pixels = 1003520        # 1280 * 28 * 28
    max_pixels = 12845056       # 16384 * 28 * 28
    repetition_penalty = 1.0    # 1.0 = none
    stop_strings = []           # a response is cut before the first of these
    eos_token_ids = []          # added to the model's eos ids
    system_prompt = "..."       # "" = no system message
    instructions = { "*" = "...", mathvista = "...", MathVista_MINI = "..." }   # by dataset, kind, "*"
    dataset_prompts = "vlmeval" # VLMEvalKit's dataset-specific prompt of the family (objectives.dataset_prompts);
                                # "none": the TSV's question as it is (the default of the preset "none")

``[objectives] max_new_tokens`` is the same field (older study files); setting both is an error.
The result is plain data, ``{"preset": ..., <field>: value}``, validated here and resolved by the worker
with ``objectives.generation_defaults.resolve_generation`` once it knows the VLM's family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from objectives.dataset_prompts import STYLES
from objectives.generation_defaults import PRESETS

if TYPE_CHECKING:
    from search.study.spec_reader import TableReader


def _number(t: TableReader, k: str, *, minimum: float, strict: bool) -> float | None:
    v = t.get(k)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise t.fail(k, f"must be a number, got {v!r}")
    if v < minimum or (strict and v == minimum):
        raise t.fail(k, f"must be {'>' if strict else '>='} {minimum}, got {v}")
    return float(v)


def _int_list(t: TableReader, k: str) -> list[int] | None:
    v = t.get(k)
    if v is None:
        return None
    if not isinstance(v, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v
    ):
        raise t.fail(k, f"must be a list of token ids (integers >= 0), got {v!r}")
    return list(dict.fromkeys(v))


def parse_generation(objectives: TableReader, toy: bool) -> dict[str, Any]:
    """The validated ``objectives.generation`` table (plus a legacy ``objectives.max_new_tokens``) as
    ``{"preset": ..., <field set>: value}``; a :class:`search.study.spec.StudySpecError` names the bad field."""
    legacy = objectives.data.get("max_new_tokens")
    t = objectives.table("generation")
    out: dict[str, Any] = {"preset": t.str_("preset", "none" if toy else "vlmeval", PRESETS)}
    if legacy is not None and "max_new_tokens" in t.data:
        raise objectives.fail(
            "max_new_tokens",
            "is also set in objectives.generation; keep one (objectives.generation.max_new_tokens)",
        )
    if legacy is not None:
        out["max_new_tokens"] = objectives.int_("max_new_tokens", None, 1)
    for key in ("max_new_tokens", "min_pixels", "max_pixels"):
        value = t.int_(key, None, 1)
        if value is not None:
            out[key] = value
    if "min_pixels" in out and "max_pixels" in out and out["min_pixels"] > out["max_pixels"]:
        raise t.fail("min_pixels", f"({out['min_pixels']}) is above max_pixels ({out['max_pixels']})")
    penalty = _number(t, "repetition_penalty", minimum=0.0, strict=True)
    if penalty is not None:
        out["repetition_penalty"] = penalty
    if "stop_strings" in t.data:
        stops = t.list_str("stop_strings")
        if any(not s for s in stops):
            raise t.fail("stop_strings", "has an empty string; remove it")
        out["stop_strings"] = list(stops)
    eos = _int_list(t, "eos_token_ids")
    if eos is not None:
        out["eos_token_ids"] = eos
    prompts = t.str_("dataset_prompts", None, ("vlmeval", *STYLES))
    if prompts is not None:
        out["dataset_prompts"] = prompts
    system = t.str_("system_prompt")
    if system is not None:
        out["system_prompt"] = system
    raw = t.get("instructions")
    if raw is not None:
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise t.fail(
                "instructions", f"must be a table of strings (dataset name, kind or '*' = text), got {raw!r}"
            )
        out["instructions"] = dict(raw)
    t.finish()
    return out
