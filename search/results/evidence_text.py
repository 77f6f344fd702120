"""The evidence of a study (search.results.evidence) as terminal text: the study's answer with its intervals and
paired gains, the proxy and held-out rankings side by side, and the promotion table (rich)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from search.results.evidence import VLM_ALONE, StudyEvidence

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

def html_table(css_class: str, head: list[str], cells: list[list[str]]) -> str:
    """An HTML table with header ``head`` and one row per entry of ``cells``; every cell is escaped."""
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    heads = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table class='{css_class}'><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>"


WHERE = {"proxy": "proxy", "full": "full sets", "held_out": "held-out items"}


def fmt_scores(ev: StudyEvidence, t: FrozenTrial, scope: str) -> str:
    """``"MathVista: 0.512 [0.478, 0.546], …; weighted 0.53 [0.50, 0.56]"`` (intervals at 95%)."""
    s = ev.scored(t, scope)
    parts = [f"{d}: {e.as_fraction()}" for d, e in s.per_dataset.items()]
    if s.weighted is not None and len(s.per_dataset) > 1:
        parts.append(f"weighted {s.weighted.as_fraction()}")
    return ", ".join(parts)


def fmt_gain(ev: StudyEvidence, t: FrozenTrial, baseline: FrozenTrial, scope: str) -> str:
    """``"+3.1 [-0.4, +6.5] pts p=0.09"`` (weighted, paired) or "" without per-item data."""
    if t.number == baseline.number:
        return "(itself)"
    _, g = ev.gains(t, baseline, scope)
    if g is None:
        return ""
    star = " *" if g.significant else ""
    return f"{g.gain.as_points(sign=True)} pts p={g.p_value:.2g}{star}"


def beats(ev: StudyEvidence, scope: str, baseline: str = VLM_ALONE) -> tuple[list[int], int]:
    """(trials that beat ``baseline`` at 95% in ``scope``, how many were compared): the promoted trials
    for full / held-out, every COMPLETE trial for the proxy (the other baselines included)."""
    base = ev.baselines.get(baseline)
    if base is None:
        return [], 0
    from search.study.trials import ranked_trials

    pool = ev.promoted() if scope != "proxy" else ranked_trials(ev.study)
    pool = [t for t in pool if t.number != base.number]
    won, n = [], 0
    for t in pool:
        _, g = ev.gains(t, base, scope)
        if g is None:
            continue
        n += 1
        if g.significant:
            won.append(t.number)
    return won, n


def headline(ev: StudyEvidence) -> list[str]:
    """The study's answer in plain lines: which trial and why, its scores with intervals, its paired gain
    over each baseline, and whether any recipe beat the VLM alone at 95%."""
    best, how = ev.answer()
    if best is None:
        return ["no COMPLETE trial yet"]
    scope = ev.answer_scope()
    lines = [f"best: trial {best.number} ({how})", f"  {WHERE[scope]}: {fmt_scores(ev, best, scope)}"]
    if scope != "proxy":
        lines.append(f"  proxy: {fmt_scores(ev, best, 'proxy')}")
    feas = ev.feasible(best, scope)
    if feas is not None:
        lines.append(f"  constraints ({WHERE[scope]}): {'feasible' if feas else 'INFEASIBLE'}")
    for name, base in ev.baselines.items():
        g = fmt_gain(ev, best, base, scope)
        if g and g != "(itself)":
            lines.append(f"  gain over {name} on the {WHERE[scope]} (paired, 95%): {g}")
    won, n = beats(ev, scope)
    if VLM_ALONE in ev.baselines and n:
        if not won:
            lines.append(f"no recipe beat the VLM alone at 95% on the {WHERE[scope]} ({n} compared)")
        else:
            lines.append(
                f"{len(won)} of {n} recipes beat the VLM alone at 95% on the {WHERE[scope]} "
                f"(trials {', '.join(map(str, won[:10]))}; each at 95%, not corrected for {n} comparisons)"
            )
    elif VLM_ALONE in ev.baselines:
        lines.append(f"no paired comparison with the VLM alone on the {WHERE[scope]} (no per-item records)")
    return lines


def label(t: FrozenTrial) -> str:
    """``"12"`` or ``"3 (vlm_alone)"``."""
    name = t.user_attrs.get("baseline")
    return f"{t.number} ({name})" if name else str(t.number)


def _cell(ev: StudyEvidence, t: FrozenTrial, scope: str, values: dict[int, float | None]) -> str:
    """The ranking value with its interval where there is one ("-" when unknown)."""
    w = ev.scored(t, scope).weighted
    if w is not None and not ev.target_names(scope):
        return w.as_fraction()
    v = values[t.number]
    return "-" if v is None else f"{v:.3f}"


def rankings_table(ev: StudyEvidence) -> Any:
    """Promoted trials ranked on the proxy and on the held-out items, side by side (rich Table), with the
    Spearman correlation of the two over the promoted trials as its caption."""
    from rich.table import Table

    from objectives.stats import spearman

    promoted = ev.promoted()
    scope = "held_out" if any(ev.scored(t, "held_out").outcomes for t in promoted) else "full"
    pv = {t.number: ev.rank_value(t, "proxy") for t in promoted}
    hv = {t.number: ev.rank_value(t, scope) for t in promoted}
    by_proxy = sorted(promoted, key=lambda t: (-(pv[t.number] or 0.0), t.number))
    by_held = sorted(promoted, key=lambda t: (-(hv[t.number] or 0.0), t.number))
    table = Table(title=f"promoted trials: proxy ranking | {WHERE[scope]} ranking")
    for col in ("#", "proxy: trial", "proxy score", f"{WHERE[scope]}: trial", f"{WHERE[scope]} score"):
        table.add_column(col)
    for i, (a, b) in enumerate(zip(by_proxy, by_held, strict=True), 1):
        table.add_row(str(i), label(a), _cell(ev, a, "proxy", pv), label(b), _cell(ev, b, scope, hv))
    pairs = [(pv[n], hv[n]) for n in pv if pv[n] is not None and hv[n] is not None]
    rho = spearman([p for p, _ in pairs], [h for _, h in pairs])
    table.caption = (
        f"Spearman(proxy, {WHERE[scope]}) over {len(pairs)} promoted trials: {rho[0]:.2f}"
        + (f" (p={rho[1]:.2g})" if len(pairs) >= 10 else " (too few for a p-value)")
        if rho
        else f"Spearman(proxy, {WHERE[scope]}): needs 3 promoted trials with distinct scores ({len(pairs)} here)"
    )
    return table


def promotion_table(ev: StudyEvidence, results: list[Any]) -> Any:
    """One row per promoted trial: proxy, full and held-out scores with 95% intervals, the gain over the
    VLM alone on the held-out items (paired) and, in a constrained study, feasibility (rich Table)."""
    from rich.table import Table

    from search.study.trials import get_trial

    base = ev.baselines.get(VLM_ALONE)
    table = Table(title="promotion (accuracy, 95% intervals)")
    labels = {
        str((r.full_eval or {}).get("backend", "-")): str((r.full_eval or {}).get("label", ""))
        for r in results
    }
    table.caption = "; ".join(f"{k}: {v}" for k, v in labels.items()) + " · * beat at 95% (paired bootstrap)"
    constrained = bool(ev.target_names("proxy"))
    cols = ["trial", "recipe", "status", "proxy", "full", "held-out", "gain vs vlm_alone (held-out)"]
    for col in cols + (["feasible"] if constrained else []):
        table.add_column(col, no_wrap=col in ("trial", "status"))
    for r in results:
        t = get_trial(ev.study, r.trial_number)
        name = t.user_attrs.get("baseline")
        row = [
            f"{r.trial_number}" + (f" ({name})" if name else ""),
            r.recipe_id,
            r.status,
            fmt_scores(ev, t, "proxy"),
            fmt_scores(ev, t, "full"),
            fmt_scores(ev, t, "held_out") or "no per-item records",
            fmt_gain(ev, t, base, "held_out") if base is not None else "",
        ]
        if constrained:
            f = ev.feasible(t, "held_out")
            row.append("-" if f is None else "yes" if f else "NO")
        table.add_row(*row)
    return table
