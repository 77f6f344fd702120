"""Reading a study file's TOML tables: typed field access whose every error names the file and the field.

The study file's parsers (``search.study.spec`` and the table parsers it calls: generation, constraints, warm
starts) share these three pieces, so none of them needs to import ``search.study.spec`` back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from merge_core.errors import MergesearchError


class StudySpecError(MergesearchError):
    """A study file is missing, unreadable, or has a missing / unknown / out-of-range field."""



@dataclass(frozen=True)
class Param:
    """One searched numeric field: fixed (low == high), or a range with optional step / log scale."""

    low: float
    high: float
    step: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def grid_values(self) -> list[float]:
        """Values a grid sampler enumerates: low, low+step, ..., high (needs a step unless fixed)."""
        if self.fixed:
            return [int(self.low) if self.integer else self.low]
        assert self.step is not None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        vals = [self.low + i * self.step for i in range(n + 1)]
        return [int(round(v)) for v in vals] if self.integer else [round(v, 10) for v in vals]



class TableReader:
    """Typed access to one TOML table that remembers the dotted path for error messages."""

    def __init__(self, data: dict[str, Any], prefix: str, src: str) -> None:
        self.data = dict(data)
        self.prefix = prefix
        self.src = src
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def fail(self, k: str, msg: str) -> StudySpecError:
        return StudySpecError(f"{self.src}: field `{self.key(k)}` {msg}")

    def get(self, k: str, default: Any = None) -> Any:
        self.used.add(k)
        return self.data.get(k, default)

    def str_(self, k: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        v = self.get(k, default)
        if v is None:
            return None
        if not isinstance(v, str):
            raise self.fail(k, f"must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(k, f"is {v!r}; allowed: {', '.join(choices)}")
        return v

    def int_(self, k: str, default: int | None = None, minimum: int | None = None) -> int | None:
        v = self.get(k, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(k, f"must be an integer, got {v!r}")
        if minimum is not None and v < minimum:
            raise self.fail(k, f"must be >= {minimum}, got {v}")
        return v

    def bool_(self, k: str, default: bool) -> bool:
        v = self.get(k, default)
        if not isinstance(v, bool):
            raise self.fail(k, f"must be true or false, got {v!r}")
        return v

    def list_str(
        self, k: str, default: tuple[str, ...] = (), choices: tuple[str, ...] | None = None
    ) -> tuple[str, ...]:
        v = self.get(k, list(default))
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(k, f"must be a list of strings, got {v!r}")
        if choices is not None:
            bad = [x for x in v if x not in choices]
            if bad:
                raise self.fail(k, f"has {bad!r}; allowed: {', '.join(choices)}")
        if len(set(v)) != len(v):
            raise self.fail(k, f"has duplicates: {v!r}")
        return tuple(v)

    def table(self, k: str) -> TableReader:
        v = self.get(k, {})
        if not isinstance(v, dict):
            raise self.fail(k, f"must be a table, got {v!r}")
        return TableReader(v, f"{self.key(k)}.", self.src)

    def param(
        self,
        k: str,
        default: Param,
        *,
        lo: float | None = None,
        hi: float | None = None,
        integer: bool = False,
    ) -> Param:
        """A number (fixed), ``[low, high]``, or ``{low, high, step, log}``; checked against [lo, hi]."""
        v = self.get(k, None)
        if v is None:
            return default
        step = None
        log = False
        if isinstance(v, bool):
            raise self.fail(k, f"must be a number, [low, high] or {{low, high, step, log}}, got {v!r}")
        if isinstance(v, (int, float)):
            low = high = v
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            low, high = v
        elif isinstance(v, dict):
            t = TableReader(v, f"{self.key(k)}.", self.src)
            low, high = t.get("low"), t.get("high")
            step, log = t.get("step"), t.bool_("log", False)
            t.finish()
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
                raise self.fail(k, "needs numeric `low` and `high`")
            if step is not None and (not isinstance(step, (int, float)) or step <= 0):
                raise self.fail(k, f"step must be a positive number, got {step!r}")
        else:
            raise self.fail(k, f"must be a number, [low, high] or {{low, high, step, log}}, got {v!r}")
        if low > high:
            raise self.fail(k, f"has low {low} > high {high}")
        if lo is not None and low < lo or hi is not None and high > hi:
            raise self.fail(k, f"range [{low}, {high}] is outside the allowed [{lo}, {hi}]")
        if log and low <= 0:
            raise self.fail(k, "log scale needs low > 0")
        if integer:
            if int(low) != low or int(high) != high or (step is not None and int(step) != step):
                raise self.fail(k, f"must be integers, got {v!r}")
            return Param(int(low), int(high), int(step) if step else None, log, True)
        return Param(float(low), float(high), float(step) if step else None, log, False)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise StudySpecError(
                f"{self.src}: unknown field `{self.prefix}{unknown[0]}`"
                + (f" (and {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
                + "; check the spelling against studies/toy.toml"
            )
