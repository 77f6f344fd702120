"""Compare an extracted answer with an item's gold answer (pure functions; no eval, no processes).

* Options: a letter (``B``, ``(B)``, ``B.``, ``Option B``) or an option's text (exactly, numerically, or as
  the only option text contained in the answer).
* Integers: numeric equality; floats: equality after rounding both to the item's ``precision`` (MathVista's
  rule), else within 1e-6; a percent sign is tried both ways (``45%`` matches 45 and 0.45).
* Lists: same length, elementwise as floats.
* Text / MathVision free form: numeric or expression equality through :mod:`.latex` (fractions, roots, pi,
  variables by a numeric identity test), else normalised string equality.
"""

from __future__ import annotations

import re

from .extract import NUMBER
from .latex import evaluate, expressions_equal, has_variables, strip_latex

# "B", "(B)", "B.", "B: 8/11", "B 8/11" — but not the article in "A triangle ..."
_LEADING_LETTER = re.compile(r"^\s*\(?([A-Z])\)?(?=\s*$|[.:)\],]|\s+[^a-z\s])")
_OPTION_WORD = re.compile(r"\b(?:option|choice)\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_UNIT_TAIL = re.compile(r"(?<![\\A-Za-z])\s*(?!pi\b|sqrt|frac|inf\b)[A-Za-z]{2,}.*$", re.DOTALL)
_PUNCT_EDGES = " \t\n.,;:!?\"'`()[]{}"


def normalize_text(text: str) -> str:
    """Lower-case, presentation LaTeX removed, spaces collapsed, edge punctuation stripped."""
    s = strip_latex(text).lower()
    s = " ".join(s.split())
    return s.strip(_PUNCT_EDGES)


def option_letter(text: str, choices: list[str]) -> tuple[str | None, str]:
    """(letter, how) for the option an answer text names, or (None, reason)."""
    n = len(choices)
    valid = {chr(65 + i) for i in range(n)}
    t = strip_latex(text).strip()
    m = _LEADING_LETTER.match(t)
    if m and m.group(1) in valid:
        return m.group(1), "option letter"
    words = [w for w in _OPTION_WORD.findall(t) if w.upper() in valid]
    if words:
        return words[-1].upper(), "option letter"
    parens = [w for w in _PAREN_LETTER.findall(t) if w in valid]
    if parens:
        return parens[-1], "option letter"
    norm = normalize_text(t)
    norm_choices = [normalize_text(c) for c in choices]
    for i, c in enumerate(norm_choices):
        if c and c == norm:
            return chr(65 + i), "option text"
    value = numeric_value(t)
    if value is not None:
        hits = [
            i
            for i, c in enumerate(choices)
            if (cv := numeric_value(c)) is not None and abs(cv - value) < 1e-6 * max(1.0, abs(cv))
        ]
        if len(hits) == 1:
            return chr(65 + hits[0]), "option value"
    contained = [
        i
        for i, c in enumerate(norm_choices)
        if c and re.search(r"(?<![\w.])" + re.escape(c) + r"(?![\w])", norm)
    ]
    if len(contained) == 1:
        return chr(65 + contained[0]), "option text contained"
    if len(contained) > 1:  # "8/11" also contains "1": the longest option text that occurs is the one meant
        contained.sort(key=lambda i: len(norm_choices[i]), reverse=True)
        if len(norm_choices[contained[0]]) > len(norm_choices[contained[1]]):
            return chr(65 + contained[0]), "option text contained (longest)"
    return None, "no option named"


def clean_numeric(text: str, unit: str | None = None) -> str:
    """Drop what surrounds a number: the part before the last ``=``, the item's unit, trailing unit words."""
    s = strip_latex(text)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    if unit:
        s = s.replace(unit, " ")
    s = _UNIT_TAIL.sub("", s)
    return s.strip().rstrip(".").strip()


def numeric_value(text: str, unit: str | None = None) -> float | None:
    """The number an answer text states (``"\\frac{3}{4} m"`` -> 0.75, ``"$1,234"`` -> 1234), or None."""
    s = clean_numeric(text, unit)
    value = evaluate(s)
    if value is not None:
        return value
    m = NUMBER.match(s)
    if m:
        return evaluate(m.group(0))
    numbers = NUMBER.findall(strip_latex(text))  # "The shaded area is 12 square units": the number in it
    return evaluate(numbers[-1]) if numbers else None


def _close(a: float, b: float, precision: int | None) -> bool:
    if precision is not None:
        return round(a, precision) == round(b, precision)
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def match_number(
    text: str, answer: str, *, integer: bool, precision: int | None, unit: str | None
) -> tuple[bool, str]:
    """(correct, detail) for a numeric gold answer."""
    gold = evaluate(answer)
    if gold is None:
        return False, f"gold answer {answer!r} is not a number"
    value = numeric_value(text, unit)
    if value is None:
        return False, f"{text[:40]!r} states no number"
    candidates = [value, value * 100.0] if "%" in text else [value]
    for v in candidates:
        if integer and abs(v - gold) < 1e-9:
            return True, f"{v:g} == {gold:g}"
        if not integer and _close(v, gold, precision):
            return True, f"{v:g} == {gold:g}" + (f" at {precision} decimals" if precision is not None else "")
    return False, f"{value:g} != {gold:g}"


def match_list(text: str, answer: str, precision: int | None) -> tuple[bool, str]:
    """(correct, detail) for a list answer such as ``[2007, 2008]``: same length, elementwise equal."""
    gold = [evaluate(x) for x in NUMBER.findall(answer)]
    got = [evaluate(x) for x in NUMBER.findall(strip_latex(text))]
    if not gold or any(g is None for g in gold):
        ok = normalize_text(text) == normalize_text(answer)
        return ok, "list compared as text"
    if len(got) != len(gold) or any(v is None for v in got):
        return False, f"list of {len(got)} != list of {len(gold)}"
    ok = all(_close(v, g, precision) for v, g in zip(got, gold, strict=True))  # type: ignore[arg-type]
    return ok, "lists equal" if ok else "lists differ"


def match_text(text: str, answer: str, unit: str | None = None) -> tuple[bool, str]:
    """(correct, detail) for text / MathVision free-form gold: number, expression, then string equality."""
    gold_value = evaluate(answer)
    if gold_value is not None:
        value = numeric_value(text, unit)
        if value is not None:
            ok = abs(value - gold_value) < 1e-6 * max(1.0, abs(gold_value))
            return ok, f"{value:g} {'==' if ok else '!='} {gold_value:g}"
    if has_variables(answer):
        cleaned = strip_latex(text)
        if "=" in cleaned and "=" not in answer:
            cleaned = cleaned.rsplit("=", 1)[1]
        if expressions_equal(cleaned, answer):
            return True, "expressions equal"
    ok = normalize_text(text) == normalize_text(answer)
    return ok, "same text" if ok else "different text"
