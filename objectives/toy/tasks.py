"""Item generators of the toy world: generic skills, worked chains, reasoning chains, image variants.

An :class:`Example` is one chat exchange: an optional leading image (a digit 0..9 drawn as a picture, or the
blank canvas), the user's words and the assistant's words. Generators draw from a numpy Generator only, so a
seed fixes every stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from objectives.toy.render import BLANK
from objectives.toy.vocab import MAX_NUMBER


@dataclass(frozen=True)
class Example:
    """``[image] question`` -> ``answer``; ``image`` is a digit code 0..9, :data:`BLANK`, or None (text only)."""

    question: str
    answer: str
    image: int | None = None


Triple = tuple[int, int, int]

# ---- generic skills: (question, answer), the first word always a number so it can become an image ----


def _what(rng: np.random.Generator) -> tuple[str, str]:
    d = int(rng.integers(0, 10))
    return f"{d} what number ?", f"{d}"


def _plus(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(v) for v in rng.integers(0, 10, size=2))
    return f"{a} plus {b} =", f"{a + b}"


def _minus(rng: np.random.Generator) -> tuple[str, str]:
    a, b = sorted(int(v) for v in rng.integers(0, 10, size=2))
    return f"{b} minus {a} =", f"{b - a}"


def _count(rng: np.random.Generator) -> tuple[str, str]:
    d, n = int(rng.integers(0, 10)), int(rng.integers(1, 6))
    return " ".join([str(d)] * n) + " count", f"{n}"


def _copy(rng: np.random.Generator) -> tuple[str, str]:
    words = " ".join(str(int(v)) for v in rng.integers(0, 10, size=int(rng.integers(1, 4))))
    return f"{words} copy", words


def _next(rng: np.random.Generator) -> tuple[str, str]:
    a = int(rng.integers(0, MAX_NUMBER))
    return f"{a} next is", f"{a + 1}"


def _parity(rng: np.random.Generator) -> tuple[str, str]:
    a = int(rng.integers(0, MAX_NUMBER + 1))
    return f"{a} odd even ?", "odd" if a % 2 else "even"


GENERIC_TASKS: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "what": _what,
    "plus": _plus,
    "minus": _minus,
    "count": _count,
    "copy": _copy,
    "next": _next,
    "parity": _parity,
}
_GENERIC_NAMES = tuple(GENERIC_TASKS)


def generic(rng: np.random.Generator) -> Example:
    """A text example of a uniformly drawn generic skill."""
    q, a = GENERIC_TASKS[_GENERIC_NAMES[int(rng.integers(0, len(_GENERIC_NAMES)))]](rng)
    return Example(q, a)


def with_first_image(example: Example) -> Example | None:
    """The example with its first word, a digit, shown as an image instead (None when it is not a digit)."""
    first, _, rest = example.question.partition(" ")
    if not first.isdigit() or int(first) > 9:
        return None
    return Example(rest, example.answer, image=int(first))


def generic_image(rng: np.random.Generator) -> Example:
    """A generic example whose first number is replaced by its image (redrawn until it is a digit)."""
    while True:
        shown = with_first_image(generic(rng))
        if shown is not None:
            return shown


def large_plus(rng: np.random.Generator) -> Example:
    """``A plus B =`` with A in 10..18: the second step of every chain."""
    a, b = int(rng.integers(10, 19)), int(rng.integers(0, 10))
    return Example(f"{a} plus {b} =", f"{a + b}")


def chain_words(t: Triple) -> str:
    """The reasoning chain of a triple: ``X plus Y = S1 ; S1 plus Z = S``."""
    x, y, z = t
    return f"{x} plus {y} = {x + y} ; {x + y} plus {z} = {x + y + z}"


def worked_chain(t: Triple) -> Example:
    """Pretraining text: a chain whose last sum is the answer (teaches reading a chain, not writing one)."""
    x, y, z = t
    return Example(f"{x} plus {y} = {x + y} ; {x + y} plus {z} =", f"{x + y + z}")


def reasoning(t: Triple) -> Example:
    """The reasoning task: ``X plus Y plus Z =`` answered by its chain of thought."""
    x, y, z = t
    return Example(f"{x} plus {y} plus {z} =", chain_words(t))


def split_triples(seed: int, n_train: int) -> tuple[list[Triple], list[Triple]]:
    """All 1000 digit triples, permuted by ``seed``: the first ``n_train`` train, the rest are held out."""
    triples = [(x, y, z) for x in range(10) for y in range(10) for z in range(10)]
    order = np.random.default_rng([seed, 7]).permutation(len(triples))
    shuffled = [triples[i] for i in order]
    return shuffled[:n_train], shuffled[n_train:]


def base_mix(rng: np.random.Generator, train_triples: list[Triple]) -> Example:
    """Base pretraining mix: 10% worked chains (training triples), 12% large plus, 78% generic skills."""
    u = rng.random()
    if u < 0.10:
        return worked_chain(train_triples[int(rng.integers(0, len(train_triples)))])
    if u < 0.22:
        return large_plus(rng)
    return generic(rng)


def vlm_mix(rng: np.random.Generator) -> Example:
    """VLM language stage: 75% generic with the first digit as an image, 15% text replay,
    10% text after a blank canvas (so a blank image reads as "no picture", as for MATH-V text items)."""
    u = rng.random()
    if u < 0.75:
        return generic_image(rng)
    ex = generic(rng)
    return ex if u < 0.90 else Example(ex.question, ex.answer, image=BLANK)


def perception(rng: np.random.Generator) -> Example:
    """Stage-1 vision alignment: ``<img> what number ?``."""
    d = int(rng.integers(0, 10))
    return Example("what number ?", f"{d}", image=d)
