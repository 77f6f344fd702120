"""Warm starts: the COMPLETE trials of other studies as known points of this one.

``warm_start = [{ storage = "sqlite:///runs/toy_small/study.db", study = "toy_small" }]`` in a study file
adds, once, every COMPLETE trial of each named study whose parameters this study's space can draw
(``optuna.Study.add_trials``): a cheap study (fewer items, a smaller pair of the same family) seeding an
expensive one, or a search resumed on a new space. A trial fits when :meth:`SearchSpace.suggest` on an
``optuna.trial.FixedTrial`` of its params asks for no parameter it lacks, uses every one it has, and each
value lies in this space's distribution; it is then added with this space's distributions and its own
objective value(s). Others are skipped and reported with the reason.

What a warm-started trial is: a point the sampler learns from, not a result of this study. It carries
``warm_start`` (``"<study>#<number>"``) and no ``recipe`` or ``recipe_id``, so the recipe cache never
reuses its value, and the ranking, ``status``'s best, promotion and export leave it out (they read trials
with a recipe, ``search.study.trials.complete_trials``). ``n_trials`` counts this study's own trials: the
coordinator raises its budget by the trials added (:func:`added_count`). Adding is idempotent: the study
user attribute ``warm_start/<study>@<storage>`` records what was added, and a resumed study adds nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from merge_core.errors import MergesearchError
from search.study.db_url import mask_url

if TYPE_CHECKING:
    import optuna

    from search.study.space import SearchSpace

ATTR_PREFIX = "warm_start/"
TRIAL_ATTR = "warm_start"


class WarmStartError(MergesearchError):
    """A warm-start source cannot be read (no such storage or study), or does not fit this study at all."""


@dataclass(frozen=True)
class WarmStart:
    """One source of known points: an Optuna storage URL and a study name in it."""

    storage: str
    study: str


def parse_warm_start(raw: Any, src: str) -> tuple[WarmStart, ...]:
    """``warm_start`` of a study file: a list of ``{storage, study}`` tables (absent: none)."""
    from search.study.spec_reader import StudySpecError

    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise StudySpecError(
            f'{src}: field `warm_start` must be a list of tables, e.g. [{{ storage = "sqlite:///a.db", study = "a" }}]'
        )
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or set(t) != {"storage", "study"}:
            raise StudySpecError(
                f"{src}: field `warm_start[{i}]` must be a table with exactly `storage` and `study`"
            )
        storage, study = t["storage"], t["study"]
        if not isinstance(storage, str) or "://" not in storage:
            raise StudySpecError(
                f"{src}: field `warm_start[{i}].storage` must be a database URL (sqlite:///path.db, ...)"
            )
        if not isinstance(study, str) or not study:
            raise StudySpecError(f"{src}: field `warm_start[{i}].study` must be a study name")
        out.append(WarmStart(storage, study))
    return tuple(out)


def fit(space: SearchSpace, params: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``(distributions, "")`` when this space draws exactly ``params``, else ``(None, reason)``."""
    import optuna

    fixed = optuna.trial.FixedTrial(params)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-range values are reported below, by name
            space.suggest(fixed)
    except ValueError as err:  # a parameter this space draws and the trial lacks, or a choice not offered
        return None, str(err).split(". Please")[0]
    unused = sorted(set(params) - set(fixed.params))
    if unused:
        return None, f"this space does not draw {', '.join(unused)}"
    for name, dist in fixed.distributions.items():
        value = params[name]
        if not dist._contains(dist.to_internal_repr(value)):
            return None, f"{name} = {value!r} is outside this space's {dist}"
    return dict(fixed.distributions), ""


def _key(source: WarmStart) -> str:
    return f"{ATTR_PREFIX}{source.study}@{mask_url(source.storage)}"


def add_warm_starts(study: optuna.Study, space: SearchSpace, sources: tuple[WarmStart, ...]) -> list[str]:
    """Add each source's fitting COMPLETE trials to ``study`` (once; see the module docstring); returns
    one line per source saying what was added and what was skipped, and why."""
    import optuna
    from optuna.trial import TrialState, create_trial

    lines = []
    for source in sources:
        key = _key(source)
        if key in study.user_attrs:  # added when the study started: a resume adds nothing
            continue
        try:
            other = optuna.load_study(study_name=source.study, storage=source.storage)
        except KeyError:
            raise WarmStartError(
                f"warm_start: no study {source.study!r} in {_key(source).split('@', 1)[1]}; "
                "check the name with `optuna studies --storage URL`"
            ) from None
        if len(other.directions) != len(study.directions):
            raise WarmStartError(
                f"warm_start: study {source.study!r} has {len(other.directions)} objective(s), this one "
                f"{len(study.directions)}; warm-start from a study of the same objectives.mode"
            )
        added, skipped = [], {}
        for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            dists, why = fit(space, t.params)
            if dists is None:
                skipped[str(t.number)] = why
                continue
            added.append(
                create_trial(
                    params=dict(t.params), distributions=dists, values=list(t.values),
                    user_attrs={TRIAL_ATTR: f"{source.study}#{t.number}"},
                )
            )  # fmt: skip
        study.add_trials(added)
        study.set_user_attr(key, {"added": len(added), "skipped": skipped})
        line = f"warm start from {source.study!r}: {len(added)} trial(s) added"
        if skipped:
            shown = "; ".join(f"trial {n}: {why}" for n, why in list(skipped.items())[:5])
            more = f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else ""
            line += f", {len(skipped)} skipped ({shown}{more})"
        lines.append(line)
    return lines


def added_count(study: optuna.Study) -> int:
    """Trials added by warm starts so far (the coordinator adds them to ``n_trials``)."""
    return sum(int(v.get("added", 0)) for k, v in study.user_attrs.items() if k.startswith(ATTR_PREFIX))


def summary_lines(study: optuna.Study) -> list[str]:
    """For ``status``: per source, the trials added and skipped."""
    out = []
    for k, v in study.user_attrs.items():
        if k.startswith(ATTR_PREFIX):
            out.append(
                f"warm start {k[len(ATTR_PREFIX):]}: {v.get('added', 0)} added, {len(v.get('skipped', {}))} skipped"
            )
    return out
