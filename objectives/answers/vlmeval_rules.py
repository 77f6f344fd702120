"""VLMEvalKit's rule-based "prefetch" for MathVista and MathVision, reproduced without eval() or processes.

Before asking its GPT judge, VLMEvalKit tries rules; where a rule decides, the judge is never consulted, so
our verdict must be the same there. Sources (open-compass/VLMEvalKit):

* ``vlmeval/utils/matching_util.py`` — ``can_infer_option`` / ``can_infer_text`` / ``can_infer``, as changed by
  PR #1175 (merged 2025-07-23): an option letter counts only when exactly one option letter is a token of the
  response and its first occurrence is more than 5 tokens before the end; option text counts only when the
  response is at most twice as long as all option texts together and exactly one option text occurs in it.
* ``vlmeval/dataset/utils/mathvista.py`` ``post_check(line, prefetch=True)``: multi_choice -> the can_infer letter
  (right or wrong, it is final); integer -> ``int(response) == int(answer)``; float -> ``float(response) ==
  float(answer)``; anything else never matches (the rule compares ``str(None)``).
* ``vlmeval/dataset/utils/mathv.py`` ``post_check``: the first ``\\boxed{...}`` (no nested braces) replaces the
  response; with choices -> the can_infer letter compared to the answer by ``is_equal``; free form ->
  ``is_equal(response, answer)`` (equal lower-cased strings, or numerically equal within 1e-6 —
  VLMEvalKit uses ``eval`` / latex2sympy there; we use the bounded evaluator of :mod:`.latex`).

A prefetch that does not decide returns None: VLMEvalKit then asks its judge, we use our own extractor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .latex import evaluate

_OPTION_PUNCT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_REJECTS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_MATHV_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


@dataclass(frozen=True)
class Prefetch:
    """A decision of VLMEvalKit's rules: what it extracted and whether it counts as correct."""

    extracted: str
    correct: bool
    rule: str


def choices_dict(choices: list[str]) -> dict[str, str]:
    """``['3', '5']`` -> ``{'A': '3', 'B': '5'}`` (VLMEvalKit's ``list_to_dict``)."""
    return {chr(65 + i): str(v) for i, v in enumerate(choices)}


def can_infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """The option letter VLMEvalKit reads off ``answer`` by tokens, ``'Z'`` for a refusal, or None."""
    if "Failed to obtain answer via API" in answer:
        return None
    for reject in _REJECTS:
        if reject in answer:
            return "Z"
    splits = [x.strip() for x in answer.translate(_OPTION_PUNCT).split()]
    present = [c for c in choices if c in splits]
    if len(present) == 1:
        ch = present[0]
        if splits.index(ch) < len(splits) - 5:
            return ch
        return None
    if not present and "Z" in splits:
        return "Z"
    return None


def can_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """The option whose text (lower-cased) is the only one contained in ``answer``, or None."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    return cands[0] if len(cands) == 1 else None


def can_infer(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer``: option letter by tokens, else by option text; None when neither decides."""
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def _py_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _py_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def is_equal(response: str, answer: str) -> bool:
    """MathVision's ``is_equal``: same lower-cased string, or both evaluate to numbers within 1e-6."""
    a, b = str(response).lower().strip(), str(answer).lower().strip()
    if a == b:
        return True
    va, vb = evaluate(a), evaluate(b)
    return va is not None and vb is not None and abs(va - vb) < 1e-6


def prefetch_mathvista(response: str, *, question_type: str, answer_type: str, answer: str,
                       answer_option: str | None, choices: list[str]) -> Prefetch | None:  # fmt: skip
    """MathVista ``post_check(prefetch=True)``; None where VLMEvalKit would ask its judge."""
    if question_type == "multi_choice":
        letter = can_infer(response, choices_dict(choices))
        if letter is None:
            return None
        return Prefetch(letter, letter == (answer_option or answer), "vlmeval-prefetch: can_infer option")
    if answer_type == "integer":
        res, ans = _py_int(response), _py_int(answer)
        if res is not None and ans is not None and res == ans and res != 0:
            return Prefetch(str(res), True, "vlmeval-prefetch: int(response) == answer")
        return None
    if answer_type == "float":
        res, ans = _py_float(response), _py_float(answer)
        if res is not None and ans is not None and res == ans and res != 0:
            return Prefetch(response.strip(), True, "vlmeval-prefetch: float(response) == answer")
    return None


def prefetch_mathvision(response: str, *, answer: str, choices: list[str]) -> Prefetch | None:
    """MathVision ``post_check(prefetch=True)``; None where VLMEvalKit would ask its judge."""
    match = _MATHV_BOXED.search(response)
    if match:
        response = match.group(1)
    if choices:
        letter = can_infer(response, choices_dict(choices))
        if letter is None:
            return None
        return Prefetch(letter, is_equal(letter, answer), "vlmeval-prefetch: can_infer option")
    if response and is_equal(response, answer):
        return Prefetch(response.strip(), True, "vlmeval-prefetch: is_equal(response, answer)")
    return None
