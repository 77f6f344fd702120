"""Live progress of a study: trials done / running / pruned / failed, best so far, rate and ETA.

On a terminal this is a rich live panel; elsewhere (logs, CI) one plain line per finished trial.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class Tally:
    """What the panel shows; counts are the whole study's (all coordinators), rate is this run's."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    best: float | None = None
    best_trial: int | None = None
    best_label: str = ""
    n_trials: int | None = None
    timeout: float | None = None
    finished_here: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.complete + self.pruned

    def rate_per_hour(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.finished_here * 3600.0 / elapsed

    def eta_s(self) -> float | None:
        """Seconds left: remaining trials / this run's rate, capped by the timeout."""
        elapsed = time.monotonic() - self.started
        eta = None
        rate = self.rate_per_hour()
        if self.n_trials is not None and rate > 0:
            eta = max(self.n_trials - self.done, 0) * 3600.0 / rate
        if self.timeout is not None:
            left = max(self.timeout - elapsed, 0.0)
            eta = left if eta is None else min(eta, left)
        return eta


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressView:
    """Shows a :class:`Tally`; ``live`` None picks a live panel only on a terminal."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None, title: str = "") -> None:
        self.console = console or Console()
        self.title = title
        use_live = self.console.is_terminal if live is None else live
        self._live: Live | None = (
            Live(console=self.console, refresh_per_second=2, transient=False) if use_live else None
        )

    def __enter__(self) -> ProgressView:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def render(self, t: Tally) -> Table:
        table = Table(title=self.title or None, show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        total = f"/{t.n_trials}" if t.n_trials is not None else ""
        table.add_row(
            "trials",
            f"{t.done}{total} done ({t.complete} complete, {t.pruned} pruned), "
            f"{t.running} running, {t.failed} failed, {t.waiting} queued",
        )
        best = "-" if t.best is None else f"{t.best:.4f} (trial {t.best_trial}) {t.best_label}"
        table.add_row("best", best)
        table.add_row("rate", f"{t.rate_per_hour():.1f} trials/h   ETA {_fmt_s(t.eta_s())}")
        return table

    def update(self, t: Tally) -> None:
        if self._live is not None:
            self._live.update(self.render(t))

    def event(self, text: str) -> None:
        """One line about a trial (printed above the live panel, or plainly)."""
        if self._live is not None:
            self._live.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False, soft_wrap=True)
