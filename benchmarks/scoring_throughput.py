"""Extraction + matching throughput on one core, beside a process-per-item baseline measured in the same run.

VLMEvalKit's MathVision ``is_equal`` runs under ``timeout_decorator`` in a fresh process per call (~83 ms per
item on the machines in docs/notes). This script times ``objectives.answers.judge`` over a realistic mixed
response set (long chains of thought with several numbers, boxed LaTeX, option letters and option text, toy
chains, floats at a precision, lists, refusals), then times the same judgments each run in its own spawned
process, and prints both and their ratio. Target: >= 10,000 items/s.

    .venv/bin/python benchmarks/scoring_throughput.py [--items 20000] [--baseline-items 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import time

from objectives.answers import judge
from objectives.datasets import Item

VLMEVAL_MS_PER_ITEM = 83.0  # platform notes: MathVision is_equal, one process per call

FILLER = (
    "Let's analyze the figure carefully. The bar for 2007 reaches about 35 units while the bar for 2008 "
    "reaches 42 units; the difference is 42 - 35 = 7. The axis is labelled in thousands, and there are "
    "5 bars in total. Considering the triangle with sides 3, 4 and 5, its area is 1/2 * 3 * 4 = 6. "
)


def response_set(n: int, seed: int = 0) -> list[tuple[str, Item]]:
    """``n`` (response, item) pairs drawn deterministically from realistic templates."""
    rng = random.Random(seed)
    mc = ["3/11", "8/11", "6/11", "3/5"]
    out: list[tuple[str, Item]] = []
    for k in range(n):
        a, b, c = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)
        s = a + b + c
        kind = k % 10
        if kind in (0, 1, 2):  # long chain of thought ending in a boxed answer
            resp = (
                FILLER * rng.randint(2, 6)
                + f"Therefore the total is {s}. The final answer is $\\boxed{{{s}}}$."
            )
            item = Item(
                index=str(k), question="q", answer=str(s if rng.random() < 0.6 else s + 1), kind="mathvision"
            )
        elif kind in (3, 4):  # multiple choice, letter or option text, sometimes a long rationale
            pick = rng.randrange(4)
            resp = rng.choice([
                f"The correct answer is ({chr(65 + pick)}) {mc[pick]}.",
                f"{FILLER}So the shaded fraction is {mc[pick]}.",
                chr(65 + pick),
                f"Answer: {mc[pick]}",
            ])  # fmt: skip
            item = Item(index=str(k), question="q", answer=mc[1], answer_option="B", choices=mc,
                        question_type="multi_choice", kind="mathvista")  # fmt: skip
        elif kind in (5, 6):  # the toy world's chains
            resp = f"{a} plus {b} = {a + b} ; {a + b} plus {c} = {s}"
            item = Item(index=str(k), question="q", answer=str(s), answer_type="integer", kind="mathvista")
        elif kind == 7:  # float at a precision, with a unit
            v = rng.uniform(0, 10)
            resp = f"Luca needs ${v:.3f} in total, so the answer is {v:.2f} dollars."
            item = Item(
                index=str(k),
                question="q",
                answer=f"{v:.2f}",
                answer_type="float",
                precision=2,
                kind="mathvista",
            )
        elif kind == 8:  # LaTeX fractions and roots, free form
            resp = rng.choice(
                ["Hence the ratio is $\\frac{\\sqrt{3}}{2}$.", "\\boxed{\\dfrac{1}{3}}", "x = 2\\sqrt{3}"]
            )
            item = Item(index=str(k), question="q", answer="\\frac{\\sqrt{3}}{2}", kind="mathvision")
        else:  # lists and refusals
            resp = rng.choice(
                [
                    "The peak is between 2007 and 2008, so the answer is [2007, 2008]",
                    "I cannot tell from the image.",
                ]
            )
            item = Item(
                index=str(k), question="q", answer="[2007, 2008]", answer_type="list", kind="mathvista"
            )
        out.append((resp, item))
    return out


def _judge_one(pair: tuple[str, Item]) -> bool:
    return judge(*pair).correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--baseline-items", type=int, default=20)
    args = parser.parse_args()
    pairs = response_set(args.items)
    judge(*pairs[0])  # warm regex caches
    start = time.perf_counter()
    correct = sum(judge(r, it).correct for r, it in pairs)
    elapsed = time.perf_counter() - start
    ours = args.items / elapsed

    ctx = mp.get_context("fork")  # what timeout_decorator gets on Linux
    sample = pairs[: args.baseline_items]
    start = time.perf_counter()
    for pair in sample:  # like timeout_decorator's process-per-call mode: start, run, join
        proc = ctx.Process(target=_judge_one, args=(pair,))
        proc.start()
        proc.join()
    per_item_proc = (time.perf_counter() - start) / len(sample)

    mean_chars = sum(len(r) for r, _ in pairs) / len(pairs)
    print(f"items: {args.items} (mean response {mean_chars:.0f} chars), correct: {correct}")
    print(f"objectives.answers.judge, in process, one core: {ours:,.0f} items/s ({1e6 / ours:.1f} us/item)")
    print(f"same judgments, one forked process per item (measured now): {1e3 * per_item_proc:.1f} ms/item "
          f"-> ratio {per_item_proc * ours:,.0f}x")  # fmt: skip
    print(f"VLMEvalKit MathVision is_equal, process per item (platform notes): {VLMEVAL_MS_PER_ITEM:.0f} ms/item "
          f"-> ratio {VLMEVAL_MS_PER_ITEM / 1e3 * ours:,.0f}x")  # fmt: skip
    print(f"target >= 10,000 items/s: {'met' if ours >= 10_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
