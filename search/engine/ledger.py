"""The study's ledger: every read and write of the Optuna study a run makes, on the store thread.

Thread: :class:`StudyLedger` belongs to the store thread (``search.engine.store_queue``). The loop thread never
calls it directly: it submits its methods as store jobs, in the order it decided them (a trial's reports
before its tell, a tell before the next ask, so the sampler sees every result told so far). Before the
store thread starts and after it stops (opening the study, the final shutdown, tests) the same methods run
inline on the caller's thread, the only thread running then.

What the ledger owns: the study; ask (the sampler and the validated recipe), report, tell, FAIL with its
reason and the retry of the same parameters (one path, :meth:`StudyLedger.fail`); the orphan scan and this
coordinator's heartbeat; the budget (COMPLETE + PRUNED + RUNNING trials of the whole study, every
coordinator's, stop at ``n_trials``; the surplus rule settles a race at the end); the recipe cache (a
recipe scored before is told its result again, not rerun) and the counters (the progress tally, trials
failed in a row, the COMPLETE count, Optuna's CPU time).

What crosses to the loop thread goes through two thread-safe objects, each written by one side:

* :class:`Handoff` (written here, read by the loop): trials asked ahead, the ask jobs in flight, why the
  budget stopped, the COMPLETE count of the study at the last count;
* ``StudyView`` (``search.engine.prune_view``, behind its own lock): the pruner's copy of the study, refreshed and
  flushed here, read by the loop to decide and to build the workers' gates.

Orphans and resume: each coordinator registers itself in the study (``coordinator/<id>`` user attribute:
host, pid, heartbeat) and tags its trials. RUNNING trials whose coordinator is gone (same host and its pid
is dead, or its heartbeat is older than ``grace_s``) are told FAIL and enqueued again with identical
parameters, at start and periodically, so a second coordinator also recovers a crashed first one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from merge_core.atomic import write_text_atomic
from merge_core.errors import MergesearchError
from search.engine.dispatch import RunningTrial
from search.engine.item_reports import items_before, per_item, report_items
from search.engine.progress import ProgressView, Tally
from search.engine.prune_view import StudyView
from search.engine.recipe_cache import SCORING_KEY_ATTR, cache_key, stale_note, trial_cache_key
from search.study import optuna_private as op
from search.study.baseline_points import enqueue_baselines, register_params
from search.study.objective_values import dataset_weights, short_name
from search.study.space import SearchSpace
from search.study.spec import StudySpec
from search.study.storage import open_study, trials_read_once, write_trial_attrs
from search.study.warm_start import add_warm_starts, added_count

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# stops after which trials already asked ahead still run: they are inside the budget (a timeout or a run of
# failures starts nothing more; those trials are failed and re-enqueued for the next run)
BUDGET_STOPS = ("n_trials reached", "grid exhausted")
RESERVED_ATTRS = ("baseline", "recipe")  # a baseline's trial carries its recipe; sampled ones derive it


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_recipe(recipe: dict[str, Any]) -> str:
    """A short label of a recipe for progress lines."""
    if not recipe:
        return "?"
    m = recipe.get("method", "?")
    parts = [m]
    for k in ("weight", "vlm_weight", "llm_weight", "density"):
        if k in recipe:
            parts.append(
                f"{k}={recipe[k]:.3g}" if isinstance(recipe[k], (int, float)) else f"{k}={recipe[k]}"
            )
    if "components" in recipe:
        parts.append("+".join(recipe["components"]))
    sched = recipe.get("schedule") or {}
    if sched.get("shape", "constant") != "constant":
        parts.append(sched["shape"] + (f"@{sched['start']}" if "start" in sched else ""))
    return " ".join(parts)


class Handoff:
    """What the store thread hands the loop thread, behind one condition variable.

    Written by the store thread (the ledger): :meth:`deliver` (an ask ended), :meth:`set_stop`,
    :meth:`set_n_complete`. Written by the loop thread: :meth:`requested` (an ask job submitted), :meth:`take`
    (a trial asked ahead starts). ``stop`` (why the budget ended, None while it lasts) and ``n_complete``
    (COMPLETE trials of the study at the ledger's last count) are read by the loop."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._ready: deque[RunningTrial] = deque()
        self._pending = 0  # ask jobs submitted and not yet ended
        self._asked = 0  # ask jobs ended (the loop looks for a new trial only when this moves)
        self._stop: str | None = None
        self._n_complete = 0

    @property
    def stop(self) -> str | None:
        with self._cv:
            return self._stop

    @property
    def n_complete(self) -> int:
        with self._cv:
            return self._n_complete

    @property
    def pending(self) -> int:
        with self._cv:
            return self._pending

    @property
    def asked(self) -> int:
        with self._cv:
            return self._asked

    def may_start(self) -> bool:
        """Whether trials asked ahead may still start (see ``BUDGET_STOPS``)."""
        with self._cv:
            return self._stop is None or self._stop in BUDGET_STOPS

    def ready(self) -> list[RunningTrial]:
        """The trials asked ahead that no worker took yet."""
        with self._cv:
            return list(self._ready)

    def set_stop(self, reason: str) -> None:
        """The budget is over (store thread), for ``reason``; a later reason replaces it (a run of failures
        after ``n_trials`` was reached also stops the trials asked ahead)."""
        with self._cv:
            self._stop = reason
            self._cv.notify_all()

    def set_n_complete(self, n: int) -> None:
        """The study has at least ``n`` COMPLETE trials (store thread; the count never goes down)."""
        with self._cv:
            self._n_complete = max(self._n_complete, n)

    def requested(self, room: int) -> int:
        """Loop thread: how many ask jobs to submit so that ready + pending reach ``room`` (none once the
        budget stopped); they count as pending from here."""
        with self._cv:
            if self._stop:
                return 0
            n = max(0, room - len(self._ready) - self._pending)
            self._pending += n
            return n

    def deliver(self, r: RunningTrial | None) -> None:
        """Store thread: an ask job ended, with a trial or with None (the budget is spent)."""
        with self._cv:
            self._pending -= 1
            if r is not None:
                self._ready.append(r)
            self._asked += 1
            self._cv.notify_all()

    def put(self, r: RunningTrial) -> None:
        """A trial asked inline (no store thread) that the loop will start next."""
        with self._cv:
            self._ready.append(r)

    def take(self, wait: bool, alive: Callable[[], bool] = lambda: True) -> RunningTrial | None:
        """The oldest trial asked ahead; if ``wait``, waits for an ask in progress while ``alive()``."""
        with self._cv:
            while wait and not self._ready and self._pending and alive():
                self._cv.wait(0.05)
            return self._ready.popleft() if self._ready else None

    def settle(self, alive: Callable[[], bool]) -> bool:
        """Wait until no ask is in progress (while ``alive()``); whether a trial is ready then."""
        with self._cv:
            while self._pending and not self._ready and alive():
                self._cv.wait(0.05)
            return bool(self._ready)

    def clear(self) -> list[RunningTrial]:
        """Empty the trials asked ahead; returns them."""
        with self._cv:
            out = list(self._ready)
            self._ready.clear()
            return out


class StudyLedger:
    """The study's bookkeeping; every method runs on the store thread (or inline before it starts)."""

    def __init__(
        self,
        spec: StudySpec,
        space: SearchSpace,
        *,
        coordinator_id: str,
        panel: ProgressView,
        handoff: Handoff,
        storage_url: str | None = None,
        grace_s: float = 600.0,
    ) -> None:
        self.spec = spec
        self.space = space
        self.coordinator_id = coordinator_id
        self.panel = panel  # progress lines and the counts panel
        self.handoff = handoff
        self.storage_url = storage_url
        self.grace_s = grace_s
        self.tally = Tally(n_trials=spec.n_trials, timeout=spec.timeout)
        self.study: optuna.Study | None = None
        self.study_view: StudyView | None = None  # the pruner's copy of the study (search.engine.prune_view)
        # what the workers' plan gives (use_plan): the steps, the dataset order, the effective generation
        self.steps: list[Any] = []
        self.datasets: tuple[str, ...] = ()
        self.generation: dict[str, Any] | None = None
        self.n_workers = 0
        self.recipe_cache: dict[str, FrozenTrial | int] = {}  # recipe_cache.cache_key → COMPLETE trial (or id)
        self.scoring_key: str | None = None  # how the workers score (search.engine.recipe_cache)
        self.n_complete = 0  # COMPLETE trials of the study, as far as this ledger knows
        self.last_counted = 0  # COMPLETE + PRUNED + RUNNING at the last count, plus trials asked since
        self.counted_at = -1e9
        self.fails_in_row = 0
        self.optuna_cpu_s = 0.0  # CPU time in Optuna's ask, sampler, report and tell (RunSummary)
        self._mine: set[int] = set()  # numbers of the trials this coordinator asked and has not told
        # the last ask's read of the study: when, the trials, the number of the trial it asked
        self._read_at_ask: tuple[float, list[FrozenTrial], int] | None = None
        self._constraints: Any = None  # constrained mode: search.engine.constraint_tracker.ConstraintTracker

    @property
    def stop(self) -> str | None:
        """Why the budget ended (None while it lasts)."""
        return self.handoff.stop

    def _study(self) -> optuna.Study:
        assert self.study is not None, "the ledger's study is not open (call open first)"
        return self.study

    # ------------------------------------------------------------------ opening

    def open(self) -> optuna.Study:
        """Open the study, register this coordinator, recover orphans, enqueue the baselines once."""
        from search.study.samplers import make_sampler

        study = self.study = open_study(self.spec, storage=self.storage_url)
        prior = len(study.get_trials(deepcopy=False))
        others = sum(1 for k in study.user_attrs if k.startswith("coordinator/"))
        if prior or others:  # a resumed or second coordinator: fresh draws, still determined by the history
            study.sampler = make_sampler(self.spec, salt=prior + 7919 * others)
        self.study_view = StudyView(study, auto_refresh=False)  # refreshed by store jobs (refresh)
        self.study_view.refresh(force=True)
        self.beat()
        self.recover_orphans()
        self._enqueue_baselines()
        if self.spec.objectives.constrained is not None:
            from search.engine.constraint_tracker import ConstraintTracker

            self._constraints = ConstraintTracker(self.spec, study)
        for line in add_warm_starts(study, self.space, self.spec.warm_start):  # once per study
            self.panel.event(line)
        if self.spec.warm_start and self.spec.n_trials is not None:  # n_trials counts this study's own
            self.spec = self.spec.replace(n_trials=self.spec.n_trials + added_count(study))
            self.tally.n_trials = self.spec.n_trials
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self.n_complete += 1
            if "recipe_id" in t.user_attrs:  # keyed on how it was scored too (search.engine.recipe_cache)
                self.recipe_cache.setdefault(trial_cache_key(t.user_attrs), t)
        self.handoff.set_n_complete(self.n_complete)
        return study

    def use_plan(
        self,
        steps: list[Any],
        datasets: tuple[str, ...],
        generation: dict[str, Any] | None,
        n_workers: int,
        scoring_key: str | None = None,
    ) -> None:
        """The workers' step plan, dataset order, generation settings and scoring key (what reports and
        trials record, and what the recipe cache matches); successive halving and Hyperband are sized to the
        number of steps."""
        self.steps, self.datasets, self.generation, self.n_workers = steps, datasets, generation, n_workers
        self.scoring_key = scoring_key
        if note := stale_note(self.recipe_cache, scoring_key):  # a resume with edited settings or items
            self.panel.event(note)
        if self.spec.pruner.name in ("hyperband", "successive_halving") and self.study is not None:
            from search.study.pruners import make_pruner

            self.study.pruner = make_pruner(self.spec, n_steps=len(steps))

    def _enqueue_baselines(self) -> None:
        study = self._study()
        if study.user_attrs.get("baselines_enqueued") or not self.spec.baselines:
            return
        study.set_user_attr("baselines_enqueued", [b.name for b in self.spec.baselines])
        enqueue_baselines(study, self.space, self.spec.baselines)  # with params where in the space

    # ------------------------------------------------------------------ liveness and orphans

    def beat(self, stopped: bool = False) -> None:
        """This coordinator is alive (read by the orphan scan of other coordinators), or stopped."""
        rec: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()}
        if stopped:
            rec["stopped"] = True
        self._study().set_user_attr(f"coordinator/{self.coordinator_id}", rec)

    def _owner_alive(self, t: FrozenTrial, coordinators: dict[str, Any]) -> bool:
        owner = t.user_attrs.get("coordinator")
        if owner == self.coordinator_id:
            return True
        rec = coordinators.get(f"coordinator/{owner}") if owner else None
        now = time.time()
        if not rec:  # died between ask and tagging: judge by the trial's age
            start = t.datetime_start.timestamp() if t.datetime_start else 0.0
            return now - start < self.grace_s
        if rec.get("stopped"):
            return False
        if rec.get("host") == socket.gethostname() and not pid_alive(int(rec.get("pid", -1))):
            return False
        return now - float(rec.get("beat", 0.0)) < self.grace_s

    def recover_orphans(self) -> list[int]:
        """Fail and re-enqueue RUNNING trials whose coordinator is gone; returns their numbers."""
        study = self._study()
        mine = set(self._mine)
        coordinators = study.user_attrs
        recovered = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in mine or self._owner_alive(t, coordinators):
                continue
            owner = t.user_attrs.get("coordinator", "unknown")
            reason = f"orphaned: its coordinator {owner} stopped before the trial finished"
            if self._tell_fail(t.number, reason):
                self._requeue(t, "orphan")
                recovered.append(t.number)
        if recovered:
            self.panel.event(f"re-enqueued trials {recovered} left RUNNING by a stopped coordinator")
        return recovered

    # ------------------------------------------------------------------ failure: one path

    def fail(self, number: int, reason: str, retry: str | None = None, counts: bool = True) -> bool:
        """Tell trial ``number`` FAIL with ``fail_reason`` = ``reason``; when ``retry`` (why), enqueue its
        parameters again (``retry_of``, at most ``max_retries`` times); when ``counts``, it is a failure of
        this run: a progress line, and ``max(5, 2 x workers)`` of them in a row stop the study. Returns
        False when another writer had finished the trial first (nothing retried then)."""
        frozen = self._frozen(number) if retry else None
        told = self._tell_fail(number, reason)
        if told and frozen is not None and retry:
            self._requeue(frozen, retry)
        if counts:
            self.fails_in_row += 1
            self.panel.event(f"trial {number} FAIL: {reason}")
            if self.fails_in_row >= max(5, 2 * self.n_workers):
                self.handoff.set_stop(f"{self.fails_in_row} trials failed in a row (last: {reason})")
        return told

    def _frozen(self, number: int) -> FrozenTrial:
        study = self._study()
        storage = op.storage_of(study)
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(op.study_id(study), number))

    def _tell_fail(self, number: int, reason: str) -> bool:
        study = self._study()
        try:
            trial_id = op.storage_of(study).get_trial_id_from_study_id_trial_number(op.study_id(study), number)
            op.storage_of(study).set_trial_user_attr(trial_id, "fail_reason", reason[:2000])
            study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False
        finally:
            self._mine.discard(number)
        return True

    def _requeue(self, t: FrozenTrial, why: str) -> bool:
        """Enqueue ``t``'s parameters again (identical recipe), unless it was retried too often."""
        retries = int(t.user_attrs.get("retries", 0)) + 1
        if retries > self.spec.max_retries:
            self.panel.event(
                f"trial {t.number}: not retried ({why}); max_retries={self.spec.max_retries} reached"
            )
            return False
        attrs = {
            k: t.user_attrs[k] for k in RESERVED_ATTRS if k in t.user_attrs and "baseline" in t.user_attrs
        }
        attrs.update({"retry_of": t.number, "retries": retries, "retry_why": why})
        self._study().enqueue_trial(dict(t.params), user_attrs=attrs)
        return True

    # ------------------------------------------------------------------ budget

    def counted(self, trials: list[FrozenTrial] | None = None) -> tuple[int, dict[str, int]]:
        """COMPLETE + PRUNED + RUNNING trials of the whole study, and the count of every state (of ``trials``,
        a read just made, or of a new read)."""
        if trials is None:
            trials = self._study().get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return sum(counts.get(s.name, 0) for s in COUNTED), counts

    def budget_left(self) -> bool:
        """Whether more trials may be asked; once not, ``stop`` says why."""
        if self.stop:
            return False
        if self.spec.timeout is not None and time.monotonic() - self.tally.started >= self.spec.timeout:
            self.handoff.set_stop("timeout")
            return False
        n = self.spec.n_trials
        # the count is a query: this coordinator's own asks keep the estimate current, other coordinators'
        # trials are read once a second (refresh; here, when that is late), and a budget that looks spent
        # is always counted again (a failed trial frees its place); a race at the very end is settled by
        # surplus
        if n is not None and (self.last_counted >= n or time.monotonic() - self.counted_at > 2.0):
            self.last_counted, _ = self.counted()
            self.counted_at = time.monotonic()
        if n is not None and self.last_counted >= n:
            self.handoff.set_stop("n_trials reached")
            return False
        sampler = self.study.sampler if self.study else None
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
            self.handoff.set_stop("grid exhausted")
            return False
        return True

    def surplus(self, number: int) -> bool:
        """True when lower-numbered counted trials already fill the budget (a race between coordinators)."""
        if self.spec.n_trials is None or number < self.spec.n_trials:
            return False  # trial numbers count every trial before this one: fewer than n_trials exist
        if self.last_counted + 8 < self.spec.n_trials:
            return False  # far from the end of the budget: no race can overfill it (skips a query)
        counted = self._study().get_trials(deepcopy=False, states=COUNTED)
        self.last_counted, self.counted_at = len(counted), time.monotonic()  # a fresh count, for free
        return sum(1 for t in counted if t.number < number) >= self.spec.n_trials

    # ------------------------------------------------------------------ ask

    @contextmanager
    def _optuna_time(self) -> Iterator[None]:
        """Adds the CPU time the block takes on this thread to ``optuna_cpu_s``: what a trial costs the
        coordinator before any bookkeeping of its own (benchmarks/search_throughput.py)."""
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.optuna_cpu_s += time.thread_time() - t0

    def ask(self) -> RunningTrial | None:
        """The next trial as a validated recipe, None once the budget is spent. A recipe scored before is
        told its result at once and the next one asked; an invalid one is failed with the reason."""
        from merge_core import Recipe

        study = self._study()
        while self.budget_left():
            # one read of the trials for the ask and the sampler
            with self._optuna_time(), trials_read_once(study) as read:
                trial = study.ask()
                self._mine.add(trial.number)
                baseline = trial.user_attrs.get("baseline")
                if baseline:
                    recipe: dict[str, Any] = dict(trial.user_attrs["recipe"])
                    register_params(self.space, trial)  # a point of the space: its params, for the sampler
                else:
                    recipe = self.space.suggest(trial)
            self.last_counted += 1
            if read:  # the study as it was before this ask: the next tally may take it instead of a read
                self._read_at_ask = (time.monotonic(), read[0], trial.number)
            if self.surplus(trial.number):  # a fresh count: the race it settles is with other coordinators
                self.fail(trial.number, "surplus: another coordinator filled n_trials first", counts=False)
                self.handoff.set_stop("n_trials reached")
                return None
            attrs: dict[str, Any] = {"coordinator": self.coordinator_id, "recipe": recipe}
            if self.generation is not None:
                attrs["generation"] = self.generation
            attrs[SCORING_KEY_ATTR] = self.scoring_key
            try:
                recipe_id = attrs["recipe_id"] = Recipe.from_dict(recipe).id
            except MergesearchError as err:
                write_trial_attrs(study, {op.trial_id(trial): (attrs, {})})
                self.fail(trial.number, f"invalid recipe: {err}")
                continue
            label = baseline or describe_recipe(recipe)
            ckey = cache_key(recipe_id, self.scoring_key)
            cached = self.recipe_cache.get(ckey)
            if isinstance(cached, int):
                cached = self.recipe_cache[ckey] = op.storage_of(study).get_trial(cached)
            if cached is not None:  # same recipe already scored: the result is deterministic, reuse it
                keys = ("scores", "merge_s", "eval_s", "worker", "n_items")
                attrs.update({k: cached.user_attrs[k] for k in keys if k in cached.user_attrs})
                attrs["cached_from"] = cached.number
            write_trial_attrs(study, {op.trial_id(trial): (attrs, {})})  # one transaction, not one each
            if cached is not None:
                study.tell(trial, cached.values)
                self._mine.discard(trial.number)
                self.n_complete += 1
                self.handoff.set_n_complete(self.n_complete)
                self.tally.finished_here += 1
                self.panel.event(
                    f"trial {trial.number} COMPLETE {cached.values} (same recipe as trial {cached.number})"
                )
                continue
            return RunningTrial(
                number=trial.number,
                trial_id=op.trial_id(trial),
                trial=trial,
                recipe=recipe,
                recipe_id=recipe_id,
                label=label,
                baseline=baseline,
            )
        return None

    def ask_ahead(self) -> None:
        """Store job: ask one trial and hand it to the loop (nothing once the budget is spent)."""
        nxt = None
        try:
            if not self.stop:
                nxt = self.ask()
        finally:
            self.handoff.deliver(nxt)

    # ------------------------------------------------------------------ during a trial

    def tag_worker(self, r: RunningTrial) -> None:
        """Where ``r`` runs, while it runs (user attribute ``worker``)."""
        r.trial.set_user_attr("worker", r.worker)

    def report(self, r: RunningTrial, step: int, value: float) -> None:
        """``trial.report(value, step)`` once per step (Optuna ignores a second report); for a per-item pruner
        (Wilcoxon) every item of the steps since the last report."""
        if r.reported < step:
            with self._optuna_time():
                if per_item(self._study().pruner):
                    first, last = items_before(self.steps, r.reported), items_before(self.steps, step)
                    report_items(r.trial, r.records, first, last, dataset_weights(self.spec, self.datasets))
                else:
                    r.trial.report(value, step)
            r.reported = step

    def report_and_ask(self, r: RunningTrial, step: int, value: float) -> bool:
        """The pruner's verdict through the store (pruners that read the whole study): report, then
        ``should_prune``."""
        self.report(r, step, value)
        return bool(r.trial.should_prune())

    def flush_rungs(self) -> None:
        """The pruner's records (rung values) the loop's decisions made, to the store."""
        assert self.study_view is not None
        self.study_view.flush()

    def finish(
        self, r: RunningTrial, state: TrialState, scores: dict[str, float], values: list[float]
    ) -> None:
        """The trial is over: its per-item records, attributes, constraints and state (COMPLETE / PRUNED)."""
        study = self._study()
        assert self.study_view is not None
        trial = r.trial
        attrs = {
            "scores": {short_name(d): v for d, v in scores.items()},
            "n_items": len(r.records),
            "merge_s": round(r.merge_s, 4),
            "eval_s": round(r.eval_s, 4),
        }
        self.study_view.flush({r.trial_id: attrs})  # with the pruner's rung records, one transaction
        self._write_records(r.number, r.records)
        if self._constraints is not None:  # Optuna reads them at the tell (search.study.constrained)
            self._constraints.at_tell(study, trial, r.baseline, scores, state == TrialState.COMPLETE)
        if state == TrialState.PRUNED:
            with self._optuna_time():
                study.tell(trial, state=TrialState.PRUNED)
        else:
            with self._optuna_time():
                study.tell(trial, values if self.spec.multi_objective else values[0])
            self.n_complete += 1
            self.handoff.set_n_complete(self.n_complete)
            # read back only if the recipe comes again, scored the same way
            self.recipe_cache.setdefault(cache_key(r.recipe_id, self.scoring_key), r.trial_id)
            if isinstance(study.pruner, optuna.pruners.PercentilePruner):
                self.study_view.refresh(force=True)  # the next decision compares with this trial
        self._mine.discard(r.number)
        self.fails_in_row = 0
        self.tally.finished_here += 1
        shown = ", ".join(f"{v:.4f}" for v in values)
        self.panel.event(
            f"trial {r.number} {state.name} [{shown}] after {r.k}/{len(self.steps)} steps "
            f"({r.label}; merge {r.merge_s:.1f}s eval {r.eval_s:.1f}s on {r.worker})"
        )

    def _write_records(self, number: int, records: list[dict[str, Any]]) -> None:
        """Per-item records as JSON lines under output_dir/records, written whole or not at all."""
        text = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records)
        write_text_atomic(self.spec.output_dir / "records" / f"trial_{number}.jsonl", text)

    # ------------------------------------------------------------------ counts and the progress panel

    def refresh(self, fresh: bool = False) -> None:
        """Once a second: one read of the study serves the progress panel (counts, best trial), the budget's
        count and the pruner's copy of the study. Unless ``fresh``, the read the last ask made serves when
        it is under a second old (trials that end within a second are asked for more often than that), with
        the trial that ask took counted RUNNING."""
        study = self._study()
        assert self.study_view is not None
        self.study_view.flush()  # the pruner's records to the store (the view keeps its own copy too)
        at_ask, self._read_at_ask = self._read_at_ask, None
        if not fresh and at_ask is not None and time.monotonic() - at_ask[0] < 1.0:
            at, trials, asked = at_ask
        else:
            at, trials, asked = time.monotonic(), study.get_trials(deepcopy=False), None
        self.study_view.refresh(trials=trials)
        counted, counts = self.counted(trials)
        if asked is not None:  # not in that read (a new trial), or WAITING there (an enqueued one)
            if any(t.number == asked and t.state == TrialState.WAITING for t in trials):
                counts["WAITING"] -= 1
            counts["RUNNING"] = counts.get("RUNNING", 0) + 1
            counted += 1
        self.last_counted, self.counted_at = counted, at
        t = self.tally
        t.complete, t.pruned = counts.get("COMPLETE", 0), counts.get("PRUNED", 0)
        self.n_complete = max(self.n_complete, t.complete)  # other coordinators' trials count too
        self.handoff.set_n_complete(self.n_complete)
        t.failed, t.running, t.waiting = (
            counts.get("FAIL", 0),
            counts.get("RUNNING", 0),
            counts.get("WAITING", 0),
        )
        if t.complete and not self.spec.multi_objective:
            done = [x for x in trials if x.state == TrialState.COMPLETE and x.value is not None]
            sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
            best = max(done, key=lambda x: (sign * x.value, -x.number))  # the first of equal bests
            t.best, t.best_trial = best.value, best.number
            t.best_label = best.user_attrs.get("baseline") or describe_recipe(
                best.user_attrs.get("recipe", {})
            )
        self.panel.update(t)

    def best(self, counts: dict[str, int]) -> tuple[float | None, int | None]:
        """The best value and trial number (single objective, once a trial is COMPLETE), else Nones."""
        if counts.get("COMPLETE") and not self.spec.multi_objective:
            study = self._study()
            return study.best_value, study.best_trial.number
        return None, None

    # ------------------------------------------------------------------ the end of a run

    def interrupt(self, trials: list[RunningTrial]) -> None:
        """Fail the trials the run leaves unfinished and enqueue them again, so a rerun finishes them."""
        for r in trials:
            r.done = True
            self.fail(r.number, "interrupted: the coordinator stopped", retry="interrupted", counts=False)

    def sign_off(self) -> None:
        """Record that this coordinator stopped (its RUNNING trials are orphans for the others at once)."""
        try:
            self.beat(stopped=True)
        except Exception:  # the store may be what failed; nothing more to record then
            pass
