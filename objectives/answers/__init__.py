"""Answer extraction and matching without a judge model: ``judge(response, item) -> Verdict``.

Order of decisions for one item:

1. VLMEvalKit's rule-based prefetch (:mod:`.vlmeval_rules`) — where it decides, VLMEvalKit never consults its
   judge, so our verdict is its verdict;
2. otherwise our extractor (:mod:`.extract`: the last committed answer wins) and matcher (:mod:`.match`),
   standing in for VLMEvalKit's GPT answer extraction.

Everything is pure Python with regexes and a bounded evaluator: no eval(), no subprocess, no timeouts needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .extract import Extraction, committed_answer, extract_answer, strip_reasoning
from .match import match_list, match_number, match_text, option_letter
from .vlmeval_rules import prefetch_mathvision, prefetch_mathvista

__all__ = ["Verdict", "judge", "extract_answer", "Extraction"]


@dataclass(frozen=True)
class Verdict:
    """What was extracted from a response (None if nothing), whether it is correct, and why."""

    extracted: str | None
    correct: bool
    why: str


def _judge_option(response: str, item: Any) -> Verdict:
    gold = item.correct_option
    committed = committed_answer(response)
    text = strip_reasoning(response).strip()
    sources = []
    if committed:
        sources.append((committed.text, committed.how))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines:
        sources.append((lines[-1], "last line"))
    if not committed and len(text) <= 200:
        sources.append((text, "whole"))
    for source, where in sources:
        letter, how = option_letter(source, item.choices)
        if letter:
            ok = letter == gold
            return Verdict(letter, ok, f"{where}, {how}: {letter} {'==' if ok else '!='} {gold}")
    return Verdict(None, False, "no option found")


def judge(response: str, item: Any) -> Verdict:
    """Grade one response against one item (an :class:`objectives.datasets.Item`).

    Returns ``Verdict(extracted, correct, why)``; ``why`` names the rule that decided (``vlmeval-prefetch:...``,
    ``boxed``, ``marker``, ``equals``, ``whole``, ``last-number``, ``last line``) and the comparison made.
    """
    response = "" if response is None else str(response)
    kind = getattr(item, "kind", "")
    if kind == "mathvista":
        pre = prefetch_mathvista(response, question_type=item.question_type, answer_type=item.answer_type,
                                 answer=item.answer, answer_option=item.answer_option, choices=item.choices)  # fmt: skip
    elif kind == "mathvision":
        pre = prefetch_mathvision(response, answer=item.answer, choices=item.choices)
    else:
        pre = None
    if pre is not None:
        return Verdict(pre.extracted, pre.correct, pre.rule)
    if item.choices:
        return _judge_option(response, item)
    ext = extract_answer(response)
    if ext is None:
        return Verdict(None, False, "empty response")
    if item.answer_type == "integer":
        ok, detail = match_number(ext.text, item.answer, integer=True, precision=None, unit=item.unit)
    elif item.answer_type == "float":
        ok, detail = match_number(
            ext.text, item.answer, integer=False, precision=item.precision, unit=item.unit
        )
    elif item.answer_type == "list":
        ok, detail = match_list(ext.text, item.answer, item.precision)
    else:
        ok, detail = match_text(ext.text, item.answer, item.unit)
    return Verdict(ext.text, ok, f"{ext.how}: {detail}")
