"""Answer extraction and matching: a table of realistic responses, VLMEvalKit's prefetch rules, bounded evaluation."""

from __future__ import annotations

import time

import pytest

from objectives.answers import judge
from objectives.answers.extract import extract_answer
from objectives.answers.latex import evaluate, expressions_equal
from objectives.answers.vlmeval_rules import can_infer, prefetch_mathvision, prefetch_mathvista
from objectives.datasets import Item

MC4 = ["3/11", "8/11", "6/11", "3/5"]


def mv_int(answer: str, **kw) -> Item:
    return Item(index="1", question="q", answer=answer, kind="mathvista", answer_type="integer", **kw)


def mv_float(answer: str, precision: int, **kw) -> Item:
    return Item(
        index="1",
        question="q",
        answer=answer,
        kind="mathvista",
        answer_type="float",
        precision=precision,
        **kw,
    )


def mv_mc(answer: str, option: str, choices: list[str]) -> Item:
    return Item(index="1", question="q", answer=answer, kind="mathvista", question_type="multi_choice",
                answer_type="text", answer_option=option, choices=choices)  # fmt: skip


def mv_list(answer: str, precision: int | None = None) -> Item:
    return Item(
        index="1", question="q", answer=answer, kind="mathvista", answer_type="list", precision=precision
    )


def mv_text(answer: str) -> Item:
    return Item(index="1", question="q", answer=answer, kind="mathvista", answer_type="text")


def mvis(answer: str, choices: list[str] | None = None) -> Item:
    return Item(index="1", question="q", answer=answer, kind="mathvision", choices=choices or [],
                question_type="multi_choice" if choices else "free_form")  # fmt: skip


COT = (
    "First, count the objects on the left: there are 3 red and 4 blue, so 7 in total. "
    "On the right there are 2 more, giving 9. "
)

# (response, item, expected extracted answer, expected correct)
TABLE: list[tuple[str, Item, str | None, bool]] = [
    # --- the toy world's chains: the answer after the last '=' wins
    ("3 plus 4 = 7 ; 7 plus 2 = 9", mv_int("9"), "9", True),
    ("3 plus 4 = 7 ; 7 plus 2 = 9", mv_int("7"), "9", False),
    ("3 plus 4 = 7 ; 7 plus 2 = 9", mvis("9"), "9", True),
    ("5 plus 5 = 10 ; 10 plus 8 = 18", mvis("18"), "18", True),
    ("7", mv_int("7"), "7", True),
    ("what number ? = 4", mv_int("4"), "4", True),
    # --- boxed answers, the last committed one wins
    (COT + "So the answer is \\boxed{9}.", mv_int("9"), "9", True),
    (
        "\\boxed{7} Wait, I forgot the right side. Recount: 7 + 2 = 9. The answer is 9.",
        mv_int("9"),
        "9",
        True,
    ),
    ("The answer is 7. Hmm, let me double check: actually \\boxed{9}", mv_int("9"), "9", True),
    ("We get \\boxed{\\frac{3}{4}}", mvis("0.75"), "\\frac{3}{4}", True),
    ("Thus $\\boxed{2\\sqrt{3}}$.", mvis("2\\sqrt{3}"), "2\\sqrt{3}", True),
    ("Thus $\\boxed{2\\sqrt{3}}$.", mvis("\\sqrt{12}"), "2\\sqrt{3}", True),
    ("Thus $\\boxed{2\\sqrt{3}}$.", mvis("3\\sqrt{2}"), "2\\sqrt{3}", False),
    (
        "The final answer is $\\boxed{\\dfrac{\\sqrt{3}}{2}}$",
        mvis("\\frac{\\sqrt{3}}{2}"),
        "\\dfrac{\\sqrt{3}}{2}",
        True,
    ),
    ("\\boxed{x^2+2x+1}", mvis("(x+1)^2"), "x^2+2x+1", True),
    ("\\boxed{x^2+1}", mvis("(x+1)^2"), "x^2+1", False),
    ("\\boxed{\\pi/2}", mvis("\\frac{\\pi}{2}"), "\\pi/2", True),
    ("\\boxed{90^\\circ}", mvis("90"), "90^\\circ", True),
    ("\\boxed{12 \\text{ cm}^2}", mvis("12"), "12 \\text{ cm}^2", True),
    ("\\fbox{5}", mv_int("5"), "5", True),
    # --- answer markers
    ("The answer is 14.", mv_int("14"), "14", True),
    ("The number missing in the sequence is 14. Answer: 14", mv_int("14"), "14", True),
    (COT + "Final answer: 9", mv_int("9"), "9", True),
    (COT + "Final Answer: 10", mv_int("9"), "10", False),
    ("The correct answer is 3,000.", mv_int("3000"), "3,000", True),
    (
        "There are 12 apples in the first basket and 15 in the second; the answer is 27 apples.",
        mv_int("27"),
        "27 apples",
        True,
    ),
    ("Answer: 45%", mv_int("45"), "45%", True),
    ("Answer: 45%", mvis("0.45"), "45%", True),
    ("answer is -3", mv_int("-3"), "-3", True),
    ("So the answer should be 1/2", mvis("0.5"), "1/2", True),
    ("The answer is $1.45.", mv_float("1.45", 2), "$1.45", True),
    ("The answer is 1.449", mv_float("1.45", 2), "1.449", True),
    ("The answer is 1.44", mv_float("1.45", 2), "1.44", False),
    ("The fraction is 0.6, which means six out of ten. Answer: 0.6", mv_float("0.6", 1), "0.6", True),
    ("Answer: 0.57", mv_float("0.6", 1), "0.57", True),
    ("Answer: 0.66", mv_float("0.6", 1), "0.66", False),
    ("The answer is 2.0", mv_int("2"), "2.0", True),
    ("**Answer:** 12", mv_int("12"), "12", True),
    ("The answer is: **B**", mv_mc("8/11", "B", MC4), "B", True),
    ("Answer: The shaded area is 12 square units.", mv_int("12"), "The shaded area is 12 square units", True),
    ("Final answer:\n\n42", mv_int("42"), "42", True),
    # --- no marker: last number / whole response
    (COT + "Adding the last group gives 12 in all", mv_int("12"), "12", True),
    ("There were 5 cars, then 3 left, leaving 2", mv_int("3"), "2", False),
    ("14", mv_int("14"), "14", True),
    ("1.45", mv_float("1.45", 2), "1.45", True),
    ("Yes", mv_text("Yes"), "Yes", True),
    ("no.", mv_text("Yes"), "no", False),
    ("", mv_int("3"), None, False),
    (
        "I cannot determine this from the picture.",
        mv_int("3"),
        "I cannot determine this from the picture",
        False,
    ),
    # --- lists
    (
        "The line peaks between 2007 and 2008, so the answer is [2007, 2008]",
        mv_list("[2007, 2008]"),
        "[2007, 2008]",
        True,
    ),
    ("Answer: [2007, 2009]", mv_list("[2007, 2008]"), "[2007, 2009]", False),
    ("Answer: [2007,2008]", mv_list("[2007, 2008]"), "[2007,2008]", True),
    ("There were 1,250 visitors in 2007, so the answer is 1,250", mv_int("1250"), "1,250", True),
    ("Answer: [1.25, 3.5]", mv_list("[1.2, 3.5]", 1), "[1.25, 3.5]", True),
    # --- multiple choice: letters, parentheses, option text, last commitment
    ("B", mv_mc("8/11", "B", MC4), "B", True),
    ("(B)", mv_mc("8/11", "B", MC4), "B", True),
    ("The correct answer is (B) 8/11.", mv_mc("8/11", "B", MC4), "B", True),
    ("Answer: C", mv_mc("8/11", "B", MC4), "C", False),
    ("8/11", mv_mc("8/11", "B", MC4), "B", True),
    (
        "The blue part is 8 out of 11 squares, i.e. 8/11 of the shape, so the answer is 8/11.",
        mv_mc("8/11", "B", MC4),
        "B",
        True,
    ),
    (
        "Counting squares: 3 of 11 are red, the remaining 8 of 11 are blue. So the answer is option B.",
        mv_mc("8/11", "B", MC4),
        "B",
        True,
    ),
    (
        "I first thought (A) but the shading shows more blue. The answer is (B).",
        mv_mc("8/11", "B", MC4),
        "B",
        True,
    ),
    ("<think>Maybe A? No: 8 blue of 11 squares.</think>The answer is B.", mv_mc("8/11", "B", MC4), "B", True),
    ("\\boxed{D}", mv_mc("3/5", "D", MC4), "D", True),
    ("Answer: 0.6", mv_mc("3/5", "D", MC4), "D", True),
    ("Answer: (A) 3/11", mv_mc("8/11", "B", MC4), "A", False),
    (
        "The angle is obtuse, so the answer is obtuse",
        mv_mc("obtuse", "B", ["acute", "obtuse", "right"]),
        "B",
        True,
    ),
    ("I am not sure.", mv_mc("8/11", "B", MC4), None, False),
    (
        "Eight of the eleven squares are blue.\nA quick check confirms 8/11.",
        mv_mc("8/11", "B", MC4),
        "B",
        True,
    ),
    # --- MathVision multiple choice (answer is the letter)
    ("\\boxed{C}", mvis("C", ["1", "2", "3", "4", "5"]), "C", True),
    ("The answer is E", mvis("C", ["1", "2", "3", "4", "5"]), "E", False),
    ("So there are 3 triangles. Answer: 3", mvis("C", ["1", "2", "3", "4", "5"]), "C", True),
    ("Clearly the answer is (D).", mvis("D", ["A", "B", "C", "D", "E"]), "D", True),
    # --- MathVision free form
    ("\\boxed{14}", mvis("14"), "14", True),
    ("The perimeter is 2 \\cdot 7 = 14.", mvis("14"), "14", True),
    ("Hence the area is $\\frac{1}{3}$.", mvis("\\frac{1}{3}"), "\\frac{1}{3}", True),
    ("So the probability is 0.333", mvis("\\frac{1}{3}"), "0.333", False),
]


@pytest.mark.parametrize(("response", "item", "extracted", "correct"), TABLE)
def test_extraction_table(response: str, item: Item, extracted: str | None, correct: bool) -> None:
    verdict = judge(response, item)
    assert (verdict.extracted, verdict.correct) == (extracted, correct), verdict.why
    assert verdict.why


def test_table_is_large_and_mixed() -> None:
    assert len(TABLE) >= 60
    assert sum(c for *_, c in TABLE) >= 20 and sum(not c for *_, c in TABLE) >= 15


# VLMEvalKit rule-based prefetch, decisive cases derived by hand from open-compass/VLMEvalKit
# vlmeval/utils/matching_util.py (can_infer, after PR #1175), vlmeval/dataset/utils/mathvista.py and
# vlmeval/dataset/utils/mathv.py (post_check with prefetch=True). None = the rules defer to the GPT judge.
CHOICES = {"A": "3/11", "B": "8/11", "C": "6/11", "D": "3/5"}
CAN_INFER: list[tuple[str, str | None]] = [
    ("The correct answer is B because 8 of 11 squares are blue here.", "B"),  # one letter token, early enough
    ("B", None),  # a letter among the last 5 tokens does not count; "b" contains no option text
    ("The answer is B", None),
    ("A triangle has three sides, so we choose option C after all of this.", None),  # two letter tokens
    ("8/11", "B"),  # option text, exactly one contained
    ("3/11 or 8/11", None),  # two option texts
    ("Cannot determine the answer", "Z"),  # refusal list
    ("It is Z for sure, nothing else fits here at all.", "Z"),  # no option letter, a Z token
    ("The shaded part is 3/5 of the figure as computed above in detail", None),  # longer than 2x option texts
]


@pytest.mark.parametrize(("response", "letter"), CAN_INFER)
def test_can_infer_matches_vlmevalkit(response: str, letter: str | None) -> None:
    assert can_infer(response, dict(CHOICES)) == letter


# (response, item, VLMEvalKit's prefetch decision: None = defer, else correct?)
PREFETCH: list[tuple[str, Item, bool | None]] = [
    ("14", mv_int("14"), True),  # int(response) == int(answer)
    (" 14 ", mv_int("14"), True),  # int() strips whitespace
    ("14.", mv_int("14"), None),  # int('14.') fails -> judge
    ("The answer is 14", mv_int("14"), None),
    ("15", mv_int("14"), None),  # a wrong number is not decided by rules (the judge re-extracts)
    ("1.45", mv_float("1.45", 2), True),
    ("1.450", mv_float("1.45", 2), True),  # float equality
    ("1.449", mv_float("1.45", 2), None),
    ("Yes", mv_text("Yes"), None),  # text answers never prefetch (str(None) comparison)
    ("The correct answer is B because 8 of 11 squares are blue here.", mv_mc("8/11", "B", MC4), True),
    ("The correct answer is C because 6 of 11 squares are blue here.", mv_mc("8/11", "B", MC4), False),
    ("8/11", mv_mc("8/11", "B", MC4), True),
    ("\\boxed{14}", mvis("14"), True),  # MathVision: first \boxed{} replaces the response
    ("\\boxed{\\frac{1}{2}}", mvis("0.5"), None),  # nested braces: [^}]* stops early -> no match -> judge
    ("0.5", mvis("1/2"), True),  # numeric equality within 1e-6
    ("\\boxed{7}", mvis("9"), None),
    (
        "The answer is \\boxed{C} since it has three small squares here.",
        mvis("C", ["1", "2", "3", "4", "5"]),
        None,
    ),
    (
        "I pick C because it has exactly three small squares in it.",
        mvis("C", ["1", "2", "3", "4", "5"]),
        True,
    ),
]


@pytest.mark.parametrize(("response", "item", "decision"), PREFETCH)
def test_prefetch_decisions(response: str, item: Item, decision: bool | None) -> None:
    if item.kind == "mathvista":
        pre = prefetch_mathvista(response, question_type=item.question_type, answer_type=item.answer_type,
                                 answer=item.answer, answer_option=item.answer_option, choices=item.choices)  # fmt: skip
    else:
        pre = prefetch_mathvision(response, answer=item.answer, choices=item.choices)
    assert (None if pre is None else pre.correct) == decision
    if decision is not None:  # where the rules decide, our verdict is theirs
        verdict = judge(response, item)
        assert verdict.correct == decision and verdict.why.startswith("vlmeval-prefetch")


def test_boxed_content_of_mathvision_is_used_for_options() -> None:
    # mathv.py: '\boxed{C}' -> response 'C' -> can_infer('C') defers (last-5-token rule), our extractor reads C
    item = mvis("C", ["1", "2", "3", "4", "5"])
    assert prefetch_mathvision("\\boxed{C}", answer="C", choices=item.choices) is None
    assert judge("\\boxed{C}", item).correct


@pytest.mark.parametrize(
    ("text", "value"),
    [("\\frac{3}{4}", 0.75), ("2\\sqrt{3}", 2 * 3**0.5), ("45%", 0.45), ("1,234", 1234.0), ("\\frac12", 0.5),
     ("3\\pi", 3 * 3.141592653589793), ("2^{10}", 1024.0), ("\\sqrt[3]{27}", 3.0), ("-(1+2)*3", -9.0),
     ("7!", 5040.0), ("$\\frac{\\sqrt{3}}{2}$", 3**0.5 / 2), ("12 cm", None), ("x+1", None), ("", None),
     ("2^1000", None), ("1/0", None), ("__import__('os')", None)],
)  # fmt: skip
def test_evaluate(text: str, value: float | None) -> None:
    got = evaluate(text)
    if value is None:
        assert got is None
    else:
        assert got == pytest.approx(value, rel=1e-12)


def test_expressions_equal_by_numeric_identity() -> None:
    assert expressions_equal("x^2+2x+1", "(x+1)^2")
    assert expressions_equal("\\frac{1}{x}", "x^{-1}")
    assert not expressions_equal("x+y", "2x")
    assert not expressions_equal("x^2", "x^3")


def test_evaluation_is_bounded_on_hostile_input() -> None:
    hostile = ["9^9^9^9^9", "(" * 5000 + "1" + ")" * 5000, "1" * 10_000, "\\sqrt{" * 300 + "2" + "}" * 300,
               "x" * 150, "99999999999999999999!"]  # fmt: skip
    start = time.perf_counter()
    for text in hostile:
        assert evaluate(text) is None
        judge(f"\\boxed{{{text}}}", mvis("1"))
    assert time.perf_counter() - start < 0.5


def test_extraction_reports_how() -> None:
    assert extract_answer("So \\boxed{4}").how == "boxed"
    assert extract_answer("The answer is 4").how == "marker"
    assert extract_answer("3 plus 1 = 4").how == "equals"
    assert extract_answer("4").how == "whole"
    assert extract_answer(COT + "and that was all we needed to count here 12").how == "last-number"


def test_judge_never_raises_on_random_text() -> None:
    import random

    rng = random.Random(0)
    alphabet = "0123456789 .,;:=+-*/^()[]{}\\$%!ABCDEabcxyz\n" + "\\boxed{" * 2 + "\\frac" + "answer is "
    items = [mv_int("3"), mv_float("1.5", 1), mv_mc("8/11", "B", MC4), mv_list("[1, 2]"), mv_text("Yes"),
             mvis("\\frac{1}{2}"), mvis("C", ["1", "2", "3"])]  # fmt: skip
    for _ in range(800):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        for item in items:
            verdict = judge(text, item)
            assert isinstance(verdict.correct, bool) and verdict.why
