"""LaTeX-ish answer normalisation and a bounded, eval-free arithmetic evaluator.

Model output is never passed to ``eval()`` or to a process. :func:`evaluate` parses a small grammar
(numbers, + - * / ^, parentheses and braces, implicit multiplication, ``\\frac``, ``\\sqrt``, ``\\pi``,
percent, single-letter variables, a few functions) with a recursive-descent parser. Its cost is bounded by
construction: inputs longer than :data:`MAX_CHARS` or nested deeper than :data:`MAX_DEPTH` are refused,
exponents are capped at :data:`MAX_EXPONENT`, and evaluation is linear in the input — so the "symbolic"
check runs in-process in microseconds, with no timeout machinery.

Two expressions with variables are compared by evaluating both at fixed points (a numeric identity test).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

MAX_CHARS = 200
MAX_DEPTH = 40
MAX_EXPONENT = 64.0
VARIABLE_POINTS = ({"_": 0.0}, {"_": 0.7}, {"_": 1.9}, {"_": -2.3})

_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname|mbox|textnormal|mathit)\s*\{([^{}]*)\}")
_DROP = (
    ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "),
    ("\\displaystyle", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cdot", "*"), ("\\times", "*"),
    ("\\div", "/"), ("\\le", "<="), ("\\ge", ">="), ("\\%", "%"), ("^{\\circ}", ""), ("^\\circ", ""),
    ("\\circ", ""), ("°", ""), ("\\$", ""), ("$", ""), ("×", "*"), ("÷", "/"), ("−", "-"), ("π", "\\pi"),
    ("√", "\\sqrt"), ("\\infty", "inf"),
)  # fmt: skip


def strip_latex(text: str) -> str:
    """Remove presentation-only LaTeX (``$``, ``\\left``, ``\\text{}``, degree signs, thin spaces...).

    ``\\dfrac``/``\\tfrac`` become ``\\frac``, ``\\cdot``/``\\times`` become ``*``; the math stays LaTeX.
    """
    s = text.strip()
    if "\\" in s or "$" in s or "°" in s or "×" in s or "π" in s or "√" in s or "−" in s or "÷" in s:
        for _ in range(3):
            s2 = _TEXT_CMD.sub(r"\1", s)
            if s2 == s:
                break
            s = s2
        for old, new in _DROP:
            if old in s:
                s = s.replace(old, new)
    return s.strip()


class _ParseError(Exception):
    pass


_FUNCS: dict[str, Callable[[float], float]] = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "ln": math.log, "log": math.log10, "exp": math.exp,
    "arcsin": math.asin, "arccos": math.acos, "arctan": math.atan,
}  # fmt: skip
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|\\(?P<cmd>[A-Za-z]+)|(?P<name>[A-Za-z]+)|(?P<op>\*\*|[-+*/^(){}\[\]%!,]))"
)


def _tokens(s: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m:
            raise _ParseError(s[pos:])
        pos = m.end()
        if m.group("num") is not None:
            out.append(("num", m.group("num")))
        elif m.group("cmd") is not None:
            out.append(("cmd", m.group("cmd")))
        elif m.group("name") is not None:
            name = m.group("name")
            if name in _FUNCS or name in ("sqrt", "pi", "inf"):
                out.append(("cmd", name))
            else:  # a run of letters is a product of single-letter variables ("xy" = x*y)
                out.extend(("var", ch) for ch in name)
        else:
            op = m.group("op")
            out.append(("op", "^" if op == "**" else op))
    return out


class _Parser:
    def __init__(self, toks: list[tuple[str, str]], env: dict[str, float]):
        self.toks, self.i, self.env, self.depth = toks, 0, env, 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (value and tok[1] != value):
            raise _ParseError(f"expected {value or kind}")
        self.i += 1
        return tok

    def expr(self) -> float:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _ParseError("too deep")
        val = self.term()
        while (tok := self.peek()) and tok in (("op", "+"), ("op", "-")):
            self.i += 1
            rhs = self.term()
            val = val + rhs if tok[1] == "+" else val - rhs
        self.depth -= 1
        return val

    def term(self) -> float:
        val = self.unary()
        while (tok := self.peek()) is not None:
            if tok in (("op", "*"), ("op", "/")):
                self.i += 1
                rhs = self.unary()
                if tok[1] == "*":
                    val *= rhs
                else:
                    if rhs == 0:
                        raise _ParseError("division by zero")
                    val /= rhs
            elif tok[0] in ("num", "cmd", "var") or tok in (("op", "("), ("op", "{")):
                val *= self.unary()  # implicit multiplication: 2\sqrt{3}, 3\pi, 2(x+1)
            else:
                break
        return val

    def unary(self) -> float:
        tok = self.peek()
        if tok in (("op", "-"), ("op", "+")):
            self.i += 1
            val = self.unary()
            return -val if tok[1] == "-" else val
        return self.power()

    def power(self) -> float:
        base = self.postfix()
        if self.peek() == ("op", "^"):
            self.i += 1
            exp = self.unary()
            if abs(exp) > MAX_EXPONENT or (base == 0 and exp < 0):
                raise _ParseError("exponent out of range")
            try:
                val = base**exp
            except (OverflowError, ZeroDivisionError) as err:
                raise _ParseError(str(err)) from err
            if isinstance(val, complex):
                raise _ParseError("complex")
            return val
        return base

    def postfix(self) -> float:
        val = self.atom()
        while (tok := self.peek()) in (("op", "%"), ("op", "!")):
            self.i += 1
            if tok[1] == "%":
                val /= 100.0
            else:
                if val < 0 or val > 20 or val != int(val):
                    raise _ParseError("factorial out of range")
                val = float(math.factorial(int(val)))
        return val

    def group(self) -> float:
        tok = self.take("op")
        close = {"(": ")", "{": "}", "[": "]"}.get(tok[1])
        if close is None:
            raise _ParseError("expected group")
        val = self.expr()
        self.take("op", close)
        return val

    def atom(self) -> float:
        tok = self.peek()
        if tok is None:
            raise _ParseError("unexpected end")
        kind, value = tok
        if kind == "num":
            self.i += 1
            return float(value)
        if kind == "var":
            if "_" not in self.env:  # a plain numeric evaluation: letters are not numbers
                raise _ParseError("variable")
            self.i += 1
            # distinct letters get distinct values so that x + y and 2x differ
            return self.env["_"] * (1.0 + (ord(value) - 97) * 0.137) + (ord(value) - 97) * 0.011
        if kind == "op" and value in "({[":
            return self.group()
        if kind == "cmd":
            self.i += 1
            if value == "pi":
                return math.pi
            if value == "frac":
                num = self.group_or_digit()
                den = self.group_or_digit()
                if den == 0:
                    raise _ParseError("division by zero")
                return num / den
            if value == "sqrt":
                index = 2.0
                if self.peek() == ("op", "["):
                    self.i += 1
                    index = self.expr()
                    self.take("op", "]")
                arg = self.group_or_digit()
                if arg < 0 or index == 0:
                    raise _ParseError("bad root")
                return arg ** (1.0 / index)
            if value in _FUNCS:
                arg = self.group_or_digit() if self.peek() and self.peek()[0] == "op" else self.unary()
                try:
                    return _FUNCS[value](arg)
                except (ValueError, OverflowError) as err:
                    raise _ParseError(str(err)) from err
        raise _ParseError(f"unexpected {value}")

    def group_or_digit(self) -> float:
        tok = self.peek()
        if tok and tok[0] == "num":  # \frac12 means \frac{1}{2}
            self.i += 1
            if len(tok[1]) > 1 and tok[1].isdigit():
                self.toks.insert(self.i, ("num", tok[1][1:]))
                return float(tok[1][0])
            return float(tok[1])
        return self.group()


def has_variables(text: str) -> bool:
    """True when the (normalised) expression contains single-letter variables."""
    try:
        return any(kind == "var" for kind, _ in _tokens(strip_latex(text)))
    except _ParseError:
        return False


_PLAIN_NUMBER = re.compile(r"\s*[-+]?\d+(?:\.\d+)?\s*")


def evaluate(text: str, env: dict[str, float] | None = None) -> float | None:
    """The value of an arithmetic / LaTeX expression, or None when it is not one (never raises, never evals).

    Examples: ``"\\frac{3}{4}"`` -> 0.75, ``"2\\sqrt{3}"`` -> 3.4641..., ``"45%"`` -> 0.45, ``"1,234"`` -> 1234.
    Bounded: > MAX_CHARS characters, nesting > MAX_DEPTH or |exponent| > MAX_EXPONENT give None.
    """
    if len(text) <= MAX_CHARS and _PLAIN_NUMBER.fullmatch(text):  # the common case: skip the parser
        value = float(text)
        return value if math.isfinite(value) else None
    if env is None:
        return _evaluate_constant(text)
    return _evaluate(text, env)


@functools.lru_cache(maxsize=1 << 16)
def _evaluate_constant(text: str) -> float | None:
    return _evaluate(text, {})


def _evaluate(text: str, env: dict[str, float]) -> float | None:
    s = strip_latex(text)
    if not s or len(s) > MAX_CHARS:
        return None
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    try:
        toks = _tokens(s)
        if not toks:
            return None
        parser = _Parser(toks, env)
        val = parser.expr()
        if parser.i != len(toks):
            return None
    except (_ParseError, RecursionError, OverflowError, ValueError, ZeroDivisionError):
        return None
    if isinstance(val, complex) or math.isnan(val) or math.isinf(val):
        return None
    return float(val)


def expressions_equal(a: str, b: str, tol: float = 1e-6) -> bool:
    """Numeric identity test: both sides evaluate (at several variable assignments) to within ``tol``.

    |a - b| <= tol * max(1, |b|) at every point; False if either side does not parse.
    """
    points = VARIABLE_POINTS if (has_variables(a) or has_variables(b)) else ({},)
    for env in points:
        va, vb = evaluate(a, env), evaluate(b, env)
        if va is None or vb is None or abs(va - vb) > tol * max(1.0, abs(vb)):
            return False
    return True
