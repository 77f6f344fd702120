"""What the sampler knows besides the study's own sampled trials: baselines that are points of the space
(``search.study.baseline_points``) and warm-started trials (``search.study.warm_start``), as ``status`` and the report
show them."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from search.study.baseline_points import summary_line
from search.study.warm_start import summary_lines

if TYPE_CHECKING:
    import optuna


def status_lines(study: optuna.Study) -> list[str]:
    """Which baselines the sampler learns from (and why the others stay fixed recipes); warm starts."""
    line = summary_line(study)
    return ([line] if line else []) + summary_lines(study)


def report_html(study: optuna.Study) -> str:
    """:func:`status_lines` as a paragraph of the report ("" when there is nothing to say)."""
    lines = status_lines(study)
    return "".join(f"<p class='known-points'>{html.escape(x)}</p>" for x in lines)
