"""Pull the committed answer out of a free-text response (pure functions, regex only, no eval).

The *last committed answer wins*: a committed answer is a ``\\boxed{}`` / ``\\fbox{}``, or the text after an
answer marker ("the answer is", "Answer:", "final answer", "therefore ... is"); the one that starts last in
the response is taken. Without one, the text after the last ``=`` of the last line, then the whole response
when it is short, then the last number. Reasoning traces (``<think>...</think>``) are dropped first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_THINK_END = "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# What follows the word "answer" in a marker ("answer is", "Answer:", "final answer should be"), and the
# option markers that do not say "answer". Matched at each occurrence of the word (found with str.find,
# which is much faster on long responses than a regex scan).
_AFTER_ANSWER = re.compile(
    r"\s*(?:is\s*:?|:|=|should\s+be|would\s+be|will\s+be)\s*(?:option|choice)?\s*[:=]?\s*", re.IGNORECASE
)
_CORRECT_OPTION = re.compile(r"\bcorrect\s+(?:option|choice)\s*(?:is\s*:?|:|=)\s*", re.IGNORECASE)
_MARKER_TAIL = re.compile(
    r"(.*?)(?:\n|(?<![0-9])\.(?:\s|$)|\.$|;|,\s+(?:so|which|because|since)\b|$)", re.DOTALL
)
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?|-?\.\d+")
_SHORT = 40
_WORD = re.compile(r"[A-Za-z]{3,}")
_INLINE_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Extraction:
    """The answer text found, how it was found (``boxed``, ``marker``, ``equals``, ``whole``, ``last-number``)
    and where it starts in the (think-stripped) response."""

    text: str
    how: str
    start: int


def strip_reasoning(response: str) -> str:
    """The part after the last ``</think>`` (the whole response when there is none)."""
    cut = response.rfind(_THINK_END)
    return response[cut + len(_THINK_END) :] if cut >= 0 else response


def boxed_contents(text: str) -> list[tuple[int, str]]:
    """(start, content) of every ``\\boxed{...}`` / ``\\fbox{...}``, braces matched (nesting allowed)."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            ch = text[i]
            depth += (ch == "{") - (ch == "}")
            i += 1
        if depth == 0:
            out.append((m.start(), text[m.end() : i - 1].strip()))
    return out


def marker_answers(text: str) -> list[tuple[int, str]]:
    """(start, text) after each answer marker, up to the end of its sentence or line."""
    out: list[tuple[int, str]] = []
    low = text.lower()
    ends: list[tuple[int, int]] = []
    pos = low.find("answer")
    while pos >= 0:
        if pos == 0 or not low[pos - 1].isalnum():
            m = _AFTER_ANSWER.match(text, pos + 6)
            if m:
                ends.append((pos, m.end()))
        pos = low.find("answer", pos + 6)
    if "correct" in low:
        ends.extend((m.start(), m.end()) for m in _CORRECT_OPTION.finditer(text))
    for start, end in sorted(ends):
        tail = _MARKER_TAIL.match(text, end)
        value = tail.group(1).strip() if tail else ""
        value = value.replace("**", "").strip("*`_ \t")  # markdown emphasis around the answer
        if value:
            out.append((start, value))
    return out


def committed_answer(response: str) -> Extraction | None:
    """The last boxed or marker answer in ``response``, or None when it commits to nothing."""
    text = strip_reasoning(response)
    found = [(s, v, "boxed") for s, v in boxed_contents(text)] + [
        (s, v, "marker") for s, v in marker_answers(text)
    ]
    if not found:
        return None
    # Later start wins; at the same start a boxed answer wins over the marker that contains it.
    start, value, how = max(found, key=lambda f: (f[0], f[2] == "boxed"))
    if how == "marker":
        inner = boxed_contents(value)
        if inner:
            value, how = inner[-1][1], "boxed"
    return Extraction(value.strip().rstrip(".").strip(), how, start)


def extract_answer(response: str) -> Extraction | None:
    """The answer a response commits to (see module docstring for the order); None for an empty response."""
    text = strip_reasoning(response).strip()
    if not text:
        return None
    committed = committed_answer(text)
    if committed:
        return committed
    last_line = text.rstrip().rsplit("\n", 1)[-1]
    if "=" in last_line:
        after = last_line.rsplit("=", 1)[1].strip().rstrip(".").strip()
        if after:
            return Extraction(after, "equals", len(text) - len(last_line) + last_line.rfind("="))
    if len(text) <= _SHORT and len(_WORD.findall(text)) <= 1:
        return Extraction(text.rstrip(".").strip(), "whole", 0)
    maths = list(_INLINE_MATH.finditer(text))
    if maths:
        last = maths[-1]
        return Extraction(next(g for g in last.groups() if g is not None).strip(), "math", last.start())
    numbers = list(NUMBER.finditer(text))
    if numbers:
        last = numbers[-1]
        return Extraction(last.group(0), "last-number", last.start())
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    last_sentence = sentences[-1].strip().rstrip(".!?").strip() if sentences else text
    return Extraction(last_sentence, "last-sentence", text.rfind(last_sentence))


def last_number(text: str) -> str | None:
    """The last number-looking substring of ``text`` (``-1,234.5``, ``3/4``), or None."""
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None
