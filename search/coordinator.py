"""The coordinator: the single Optuna writer that feeds Ray workers asynchronously.

Loop: every idle worker gets a new trial at once (``study.ask`` → recipe); each remote call scores one
proxy step (one chunk of every dataset); after each step the coordinator reports the running objective
and asks the pruner; the last step completes the trial (``study.tell``). ``ray.wait`` returns whichever
worker finishes first, so there is no generation barrier.

Workers do not wait for bookkeeping. Each worker holds up to ``PIPELINE`` calls: the next steps are
queued behind the running one whenever no pruning decision can come between them
(``search.pruners.may_prune``: warm-up steps, startup trials, steps between rungs, no pruner), and the
next trial's first steps are queued behind a trial's last step.
At successive halving's rungs the worker decides itself (``search.gate``): the rung step carries the
pruner and the study's rung records, the trial's next step is queued on condition that it goes on, and the
next trial's first step on condition that it stops, so the worker never waits for a verdict. With the
other pruners a step after which the pruner may act waits for its verdict on the coordinator's copy of the
study (``search.prune_view``).

The loop's thread never touches the store. Asking (the sampler), reports, tells, user attributes, records,
heartbeats, orphan scans and progress counts are jobs run in submission order on one store thread
(``search.store_queue``): a trial's reports before its tell, its tell before the next ask. So the loop
answers a worker in the time of a Ray round trip, whatever the store costs, and SQLite never has two
writers in one process (whose lock waits sleep in steps of up to 100 ms). The idle time of every worker
between two calls is measured on the worker's own clock (``RunSummary.worker_idle_s``).

Reliability:

* A trial whose merge or scoring raises is told FAIL with ``fail_reason``; the study goes on.
* A worker that dies: its trial is told FAIL, the actor is restarted, and the trial's parameters are
  enqueued again (``retry_of``), at most ``max_retries`` times.
* Resume: each coordinator registers itself in the study (``coordinator/<id>`` user attribute: host,
  pid, heartbeat) and tags its trials. RUNNING trials whose coordinator is gone (same host and its pid
  is dead, or its heartbeat is older than ``grace_s``) are told FAIL and re-enqueued with identical
  parameters — at start and periodically, so a second coordinator also recovers a crashed first one.
  Optuna's own heartbeat only works inside ``study.optimize``, not with ask/tell.
* Budget: COMPLETE + PRUNED + RUNNING trials of the whole study (all coordinators) stop at ``n_trials``;
  a trial asked in a race beyond the budget (the higher trial number loses) is failed as ``surplus``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from merge_core.errors import MergesearchError
from objectives.engines.choice import choose_engine
from search.baseline_points import enqueue_baselines, register_params
from search.gate import RUNG_PREFIX, Gate, When, gates
from search.item_reports import items_before, per_item, report_items
from search.objective_values import dataset_weights, objective_values, running_scores, short_name
from search.progress import ProgressView, Tally
from search.prune_view import StudyView, local_decision
from search.recipe_cache import SCORING_KEY_ATTR, cache_key, stale_note, trial_cache_key
from search.resolve import Resolved
from search.space import SearchSpace
from search.spec import StudySpec, merge_components
from search.storage import open_study, trials_read_once, write_trial_attrs
from search.store_queue import StoreQueue
from search.warm_start import add_warm_starts, added_count
from search.worker import WorkerConfig, remote_worker_class

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# calls queued on a worker at most: the one it runs and two behind it, so a result the coordinator
# handles late (it shares the CPU with the workers on a small host) still finds the next step waiting
PIPELINE = 3
# stops after which trials already asked ahead still run: they are inside the budget (a timeout or a run of
# failures starts nothing more; those trials are failed and re-enqueued for the next run)
BUDGET_STOPS = ("n_trials reached", "grid exhausted")
# the store thread's nice value (search.store_queue): CPU workers on the same cores come before the store
STORE_NICE = 10
RESERVED_ATTRS = ("baseline", "recipe")  # a baseline's trial carries its recipe; sampled ones derive it


class WorkerStartError(MergesearchError):
    """A worker could not load the models or datasets."""


@dataclass
class RunningTrial:
    """A trial in flight on one worker."""

    trial: optuna.Trial
    recipe: dict[str, Any]
    recipe_id: str
    label: str
    k: int = 0  # steps whose results arrived
    next_k: int = 0  # steps submitted
    done: bool = False  # told (COMPLETE / PRUNED / FAIL): results still in flight are dropped
    intermediate: dict[int, float] = field(default_factory=dict)  # running objective after each step
    system_attrs: dict[str, Any] = field(default_factory=dict)  # what the pruner recorded (rung values)
    baseline: str | None = None  # a reference point: run in full, whatever the pruner says
    gates: list[int] = field(default_factory=list)  # steps after which the worker decides, verdicts pending
    tagged: bool = False  # its worker is recorded (user attribute "worker")
    gated_out: bool = False  # stopped by a worker's gate: its calls still queued return unrun
    reported: int = 0  # steps written with trial.report
    records: list[dict[str, Any]] = field(default_factory=list)
    merge_s: float = 0.0
    eval_s: float = 0.0
    worker: str = ""


@dataclass
class Slot:
    """One worker actor: the trial it is being fed and its calls in flight, oldest first."""

    index: int
    actor: Any
    info: dict[str, Any]
    feeding: RunningTrial | None = None
    # the next trial, its first step sent on condition that the gate in flight stops ``feeding`` (search.gate)
    following: RunningTrial | None = None
    inflight: deque[tuple[RunningTrial, int, Any]] = field(default_factory=deque)
    last_end: float | None = None  # the worker clock at the end of its previous call

    def trials(self) -> list[RunningTrial]:
        """The distinct unfinished trials this worker holds (in flight, being fed or following)."""
        out: list[RunningTrial] = []
        held = [r for r in (self.feeding, self.following) if r is not None]
        for r in [e[0] for e in self.inflight] + held:
            if not r.done and all(r is not o for o in out):
                out.append(r)
        return out


@dataclass
class RunSummary:
    """What one ``run`` did (this coordinator's share) and the study's state at the end."""

    study_name: str
    finished_here: int
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    stop_reason: str
    wall_s: float
    loop_s: float = 0.0  # from the first dispatch to the last result (wall_s minus Ray and model start-up)
    worker_busy_s: float = 0.0  # sum over calls of their time on the worker
    worker_idle_s: float = 0.0  # sum over workers of the gaps between consecutive calls (worker clock)
    worker_cpu_s: float = 0.0  # sum over calls of their CPU time on the worker (busy minus pre-emption)
    worker_waits: int = (
        0  # calls sent to a worker that had nothing queued (it waited for a decision or a trial)
    )
    skipped_calls: int = 0  # calls queued on a gate's verdict that returned unrun (search.gate)
    loop_cpu_s: float = 0.0  # CPU time of the coordinator process (every thread) during the loop
    store_cpu_s: float = 0.0  # of which the store thread's jobs (asks, tells, writes, reads)
    dispatch_cpu_s: float = 0.0  # of which the loop's own thread (results, decisions, dispatch)
    optuna_cpu_s: float = 0.0  # of the store thread's: Optuna's ask and sampler, report and tell


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Coordinator:
    """Runs one study until its budget is met; see the module docstring for the rules."""

    def __init__(
        self,
        spec: StudySpec,
        resolved: Resolved,
        *,
        storage: str | None = None,
        ray_address: str | None = None,
        workers: int | None = None,
        console: Any = None,
        live: bool | None = None,
        grace_s: float = 600.0,
        beat_s: float = 10.0,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.resolved = resolved
        self.storage = storage
        self.ray_address = ray_address
        self.n_workers = workers or spec.workers
        self.space = SearchSpace(spec, resolved.models())
        self.grace_s = grace_s
        self.beat_s = beat_s
        self.worker_env = dict(worker_env or {})
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.view = ProgressView(console, live=live, title=f"study {spec.name}")
        self.tally = Tally(n_trials=spec.n_trials, timeout=spec.timeout)
        self.study: optuna.Study | None = None
        self.slots: list[Slot] = []
        self.generation: dict[str, Any] | None = None  # the workers' effective generation settings
        # every storage call of the dispatch loop runs on its thread, which yields the CPU to the workers
        self.store = StoreQueue(nice=STORE_NICE)
        self._ready: deque[RunningTrial] = deque()  # asked ahead on the store thread
        self._ready_cv = threading.Condition()
        self._asks_pending = 0  # ask jobs submitted and not yet run
        self._asked = 0  # ask jobs ended (the loop looks for a new trial only when this moves)
        self._mine: set[int] = set()  # numbers of the trials this coordinator asked and has not told
        self._owns_ray = False
        self._stop: str | None = None
        self._fails_in_row = 0
        self._cache: dict[str, FrozenTrial | int] = {}  # recipe_cache.cache_key → its COMPLETE trial (or id)
        self.scoring_key: str | None = None  # how the workers score (search.recipe_cache)
        self._n_complete = 0
        self._last_counted = 0  # COMPLETE + PRUNED + RUNNING at the last count, plus trials asked since
        self._counted_at = -1e9
        # the last ask's read of the study: when, the trials, the number of the trial it asked
        self._read_at_ask: tuple[float, list[FrozenTrial], int] | None = None
        self._busy = 0.0
        self._idle = 0.0
        self._worker_cpu = 0.0
        self._waits = 0
        self._skipped = 0
        self._optuna_cpu_s = 0.0  # CPU time in Optuna's ask, sampler, report and tell (RunSummary)
        self._constraints: Any = None  # constrained mode: search.constrained.ConstraintTracker

    # ------------------------------------------------------------------ study bookkeeping (single writer)

    def open(self) -> optuna.Study:
        """Open the study, register this coordinator, recover orphans, enqueue the baselines once."""
        from search.samplers import make_sampler

        self.study = open_study(self.spec, storage=self.storage)
        prior = len(self.study.get_trials(deepcopy=False))
        others = sum(1 for k in self.study.user_attrs if k.startswith("coordinator/"))
        if prior or others:  # a resumed or second coordinator: fresh draws, still determined by the history
            self.study.sampler = make_sampler(self.spec, salt=prior + 7919 * others)
        self._view = StudyView(self.study, auto_refresh=False)  # refreshed by store jobs (see _loop)
        self._view.refresh(force=True)
        self._beat()
        self.recover_orphans()
        self._enqueue_baselines()
        if self.spec.objectives.constrained is not None:
            from search.constrained import ConstraintTracker

            self._constraints = ConstraintTracker(self.spec, self.study)
        for line in add_warm_starts(self.study, self.space, self.spec.warm_start):  # once per study
            self.view.event(line)
        if self.spec.warm_start and self.spec.n_trials is not None:  # n_trials counts this study's own
            self.spec = self.spec.replace(n_trials=self.spec.n_trials + added_count(self.study))
            self.tally.n_trials = self.spec.n_trials
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self._n_complete += 1
            if "recipe_id" in t.user_attrs:  # keyed on how it was scored too (search.recipe_cache)
                self._cache.setdefault(trial_cache_key(t.user_attrs), t)
        return self.study

    def _beat(self) -> None:
        """This coordinator is alive (read by ``_owner_alive`` of other coordinators)."""
        assert self.study is not None
        self.study.set_user_attr(
            f"coordinator/{self.id}", {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()}
        )

    def _owner_alive(self, t: FrozenTrial, coordinators: dict[str, Any]) -> bool:
        owner = t.user_attrs.get("coordinator")
        if owner == self.id:
            return True
        rec = coordinators.get(f"coordinator/{owner}") if owner else None
        now = time.time()
        if not rec:  # died between ask and tagging: judge by the trial's age
            start = t.datetime_start.timestamp() if t.datetime_start else 0.0
            return now - start < self.grace_s
        if rec.get("stopped"):
            return False
        if rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1))):
            return False
        return now - float(rec.get("beat", 0.0)) < self.grace_s

    def recover_orphans(self) -> list[int]:
        """Fail and re-enqueue RUNNING trials whose coordinator is gone; returns their numbers."""
        assert self.study is not None
        mine = set(self._mine)
        coordinators = self.study.user_attrs
        recovered = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in mine or self._owner_alive(t, coordinators):
                continue
            owner = t.user_attrs.get("coordinator", "unknown")
            if self._fail(t.number, f"orphaned: its coordinator {owner} stopped before the trial finished"):
                self._requeue(t, "orphan")
                recovered.append(t.number)
        if recovered:
            self.view.event(f"re-enqueued trials {recovered} left RUNNING by a stopped coordinator")
        return recovered

    def _enqueue_baselines(self) -> None:
        assert self.study is not None
        if self.study.user_attrs.get("baselines_enqueued") or not self.spec.baselines:
            return
        self.study.set_user_attr("baselines_enqueued", [b.name for b in self.spec.baselines])
        enqueue_baselines(self.study, self.space, self.spec.baselines)  # with params where in the space

    def _fail(self, number: int, reason: str) -> bool:
        """Tell FAIL with ``fail_reason``; False when another writer finished the trial first."""
        assert self.study is not None
        try:
            trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(
                self.study._study_id, number
            )
            self.study._storage.set_trial_user_attr(trial_id, "fail_reason", reason[:2000])
            self.study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False
        finally:
            self._mine.discard(number)
        return True

    def _requeue(self, t: FrozenTrial, why: str) -> bool:
        """Enqueue ``t``'s parameters again (identical recipe), unless it was retried too often."""
        assert self.study is not None
        retries = int(t.user_attrs.get("retries", 0)) + 1
        if retries > self.spec.max_retries:
            self.view.event(
                f"trial {t.number}: not retried ({why}); max_retries={self.spec.max_retries} reached"
            )
            return False
        attrs = {
            k: t.user_attrs[k] for k in RESERVED_ATTRS if k in t.user_attrs and "baseline" in t.user_attrs
        }
        attrs.update({"retry_of": t.number, "retries": retries, "retry_why": why})
        self.study.enqueue_trial(dict(t.params), user_attrs=attrs)
        return True

    def _counted(self, trials: list[FrozenTrial] | None = None) -> tuple[int, dict[str, int]]:
        """COMPLETE + PRUNED + RUNNING trials of the whole study, and the count of every state (of ``trials``,
        a read just made, or of a new read)."""
        assert self.study is not None
        if trials is None:
            trials = self.study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return sum(counts.get(s.name, 0) for s in COUNTED), counts

    def _budget_left(self) -> bool:
        if self._stop:
            return False
        if self.spec.timeout is not None and time.monotonic() - self.tally.started >= self.spec.timeout:
            self._stop = "timeout"
            return False
        n = self.spec.n_trials
        # the count is a query: this coordinator's own asks keep the estimate current, other coordinators'
        # trials are read once a second (_refresh_tally; here, when that is late), and a budget that looks
        # spent is always counted again (a failed trial frees its place); a race at the very end is settled
        # by _surplus
        if n is not None and (self._last_counted >= n or time.monotonic() - self._counted_at > 2.0):
            self._last_counted, _ = self._counted()
            self._counted_at = time.monotonic()
        if n is not None and self._last_counted >= n:
            self._stop = "n_trials reached"
            return False
        sampler = self.study.sampler if self.study else None
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
            self._stop = "grid exhausted"
            return False
        return True

    def _surplus(self, number: int) -> bool:
        """True when lower-numbered counted trials already fill the budget (a race between coordinators)."""
        if self.spec.n_trials is None or number < self.spec.n_trials:
            return False  # trial numbers count every trial before this one: fewer than n_trials exist
        if self._last_counted + 8 < self.spec.n_trials:
            return False  # far from the end of the budget: no race can overfill it (skips a query)
        assert self.study is not None
        counted = self.study.get_trials(deepcopy=False, states=COUNTED)
        self._last_counted, self._counted_at = len(counted), time.monotonic()  # a fresh count, for free
        return sum(1 for t in counted if t.number < number) >= self.spec.n_trials

    def _new_trial(self) -> RunningTrial | None:
        """Ask for the next trial and turn it into a validated recipe; None when the budget is spent."""
        from merge_core import Recipe

        assert self.study is not None
        while self._budget_left():
            # one read of the trials for the ask and the sampler
            with self._optuna_time(), trials_read_once(self.study) as read:
                trial = self.study.ask()
                self._mine.add(trial.number)
                baseline = trial.user_attrs.get("baseline")
                if baseline:
                    recipe: dict[str, Any] = dict(trial.user_attrs["recipe"])
                    register_params(self.space, trial)  # a point of the space: its params, for the sampler
                else:
                    recipe = self.space.suggest(trial)
            self._last_counted += 1
            if read:  # the study as it was before this ask: the next tally may take it instead of a read
                self._read_at_ask = (time.monotonic(), read[0], trial.number)
            if self._surplus(trial.number):  # a fresh count: the race it settles is with other coordinators
                self._fail(trial.number, "surplus: another coordinator filled n_trials first")
                self._stop = "n_trials reached"
                return None
            attrs: dict[str, Any] = {"coordinator": self.id, "recipe": recipe}
            if self.generation is not None:
                attrs["generation"] = self.generation
            attrs[SCORING_KEY_ATTR] = self.scoring_key
            try:
                recipe_id = attrs["recipe_id"] = Recipe.from_dict(recipe).id
            except MergesearchError as err:
                write_trial_attrs(self.study, {trial._trial_id: (attrs, {})})
                self._fail(trial.number, f"invalid recipe: {err}")
                self._note_fail(trial.number, f"invalid recipe: {err}")
                continue
            label = baseline or _describe(recipe)
            ckey = cache_key(recipe_id, self.scoring_key)
            cached = self._cache.get(ckey)
            if isinstance(cached, int):
                cached = self._cache[ckey] = self.study._storage.get_trial(cached)
            if cached is not None:  # same recipe already scored: the result is deterministic, reuse it
                keys = ("scores", "merge_s", "eval_s", "worker", "n_items")
                attrs.update({k: cached.user_attrs[k] for k in keys if k in cached.user_attrs})
                attrs["cached_from"] = cached.number
            write_trial_attrs(self.study, {trial._trial_id: (attrs, {})})  # one transaction, not one each
            if cached is not None:
                self.study.tell(trial, cached.values)
                self._mine.discard(trial.number)
                self._n_complete += 1
                self.tally.finished_here += 1
                self.view.event(
                    f"trial {trial.number} COMPLETE {cached.values} (same recipe as trial {cached.number})"
                )
                continue
            return RunningTrial(
                trial=trial, recipe=recipe, recipe_id=recipe_id, label=label, baseline=baseline
            )
        return None

    # ------------------------------------------------------------------ asking ahead

    def _request_asks(self) -> None:
        """Keep one trial per worker asked ahead: ask jobs go to the store thread behind the writes
        submitted before them (so the sampler sees every result told so far)."""
        if not self.store.threaded:
            return
        # a trial following one on a worker counts as asked ahead: the next ask waits until it starts, so the
        # sampler sees the verdict on the trial before it, as when trials were taken only once a worker was free
        following = sum(1 for s in self.slots if s.following is not None)
        with self._ready_cv:
            while not self._stop and len(self._ready) + self._asks_pending + following < max(
                1, len(self.slots)
            ):
                self._asks_pending += 1
                self.store.submit(self._ask_job)

    def _ask_job(self) -> None:
        """Store thread: ask one trial (None when the budget is spent) and hand it to the loop."""
        nxt = None
        try:
            if not self._stop:
                nxt = self._new_trial()
        finally:
            with self._ready_cv:
                self._asks_pending -= 1
                if nxt is not None:
                    self._ready.append(nxt)
                self._asked += 1
                self._ready_cv.notify_all()

    def _ready_list(self) -> list[RunningTrial]:
        with self._ready_cv:
            return list(self._ready)

    def _starts_ready(self) -> bool:
        """Whether trials asked ahead may still start (see ``BUDGET_STOPS``)."""
        return self._stop is None or self._stop in BUDGET_STOPS

    def _take_next(self, wait: bool = True) -> RunningTrial | None:
        """The next trial asked ahead (waiting for an ask in progress, if ``wait``); without the store thread
        (tests, inline use) one asked here. None when the budget is spent, the study stopped, or nothing is
        ready and not ``wait``."""
        if not self._starts_ready():
            return None
        if not self.store.threaded:
            if self._ready:
                return self._ready.popleft()
            return None if self._stop else self._new_trial()
        with self._ready_cv:
            while wait and not self._ready and self._asks_pending and self.store.error is None:
                self._ready_cv.wait(0.05)
            return self._ready.popleft() if self._ready else None

    # ------------------------------------------------------------------ workers

    def _start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if self.ray_address:
            try:
                ray.init(address=self.ray_address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise WorkerStartError(
                    f"--ray-address {self.ray_address}: cannot join the Ray cluster ({err}); "
                    "check that `ray start --head` runs there and the port is right"
                ) from None
        else:
            # address="local": never attach to a cluster left on this machine by another run
            ray.init(
                address="local",
                num_cpus=max(self.n_workers, 1),
                object_store_memory=200 * 1024 * 1024,
                **kwargs,
            )
        self._owns_ray = True

    def _worker_config(self, device: str) -> WorkerConfig:
        obj = self.spec.objectives
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "LMUData", "MERGESEARCH_CACHE"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(self.worker_env)
        return WorkerConfig(
            vlm=self.resolved.vlm,
            llm=self.resolved.llm,
            base=self.resolved.base,
            datasets=self.resolved.datasets,
            data_dir=self.resolved.data_dir,
            device=device,
            dtype=self.spec.models.dtype,
            trust_remote_code=self.spec.models.trust_remote_code,
            chunk_size=obj.chunk_size,
            max_new_tokens=obj.max_new_tokens,
            batch_size=obj.batch_size,
            limit=obj.limit,
            env=env,
            sources=self.spec.models.sources,
            components=merge_components(self.spec),
            generation=dict(obj.generation),
            engine=choose_engine(obj.engine, self.resolved.vlm, device),  # "auto" resolved once, here
            vllm=obj.vllm.to_dict(),
        )

    def _resources(self) -> tuple[str, dict[str, float], int]:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        device = self.spec.models.device
        if device == "auto":
            device = "cuda" if gpus > 0 else "cpu"
        if device.startswith("cuda"):
            if not gpus:
                raise WorkerStartError(
                    f"models.device = {device!r} but the Ray cluster has no GPU; use device = 'auto' or 'cpu'"
                )
            if self.n_workers > gpus:
                raise WorkerStartError(
                    f"{self.n_workers} workers asked on {device!r} but the Ray cluster has {gpus} GPU(s) and a "
                    f"worker needs one of its own; set workers (or --workers) <= {gpus}"
                )
            return device, {"num_gpus": 1, "num_cpus": 1}, self.n_workers
        return device, {"num_gpus": 0, "num_cpus": 1}, self.n_workers

    def _spawn(self, index: int) -> Slot:
        import ray

        cls = remote_worker_class(**self._res)
        actor = cls.remote(self._wcfg)
        try:
            info = ray.get(actor.info.remote())
        except ray.exceptions.RayError as err:
            raise WorkerStartError(f"worker {index} could not start: {_cause(err)}") from None
        return Slot(index=index, actor=actor, info=info)

    def _start_workers(self) -> None:
        import ray

        device, self._res, n = self._resources()
        self._wcfg = self._worker_config(device)
        cls = remote_worker_class(**self._res)
        actors = [cls.remote(self._wcfg) for _ in range(n)]
        infos = []
        for i, a in enumerate(actors):
            try:
                infos.append(ray.get(a.info.remote()))
            except ray.exceptions.RayError as err:
                raise WorkerStartError(f"worker {i} could not start: {_cause(err)}") from None
        self.slots = [Slot(i, a, info) for i, (a, info) in enumerate(zip(actors, infos, strict=True))]
        self.steps = infos[0]["steps"]
        self.generation = infos[0].get("generation")  # every trial records what it was decoded with
        self.scoring_key = infos[0].get("scoring_key")
        if note := stale_note(self._cache, self.scoring_key):  # a resume with edited settings or items
            self.view.event(note)
        self.datasets = tuple(infos[0]["datasets"])
        items = sum(n for step in self.steps for _, n in step)
        self.view.event(
            f"{n} worker(s) on {device}: {', '.join(s.info['worker'] for s in self.slots)}; "
            f"{items} proxy items in {len(self.steps)} steps"
        )
        if self.spec.pruner.name in ("hyperband", "successive_halving") and self.study is not None:
            from search.pruners import make_pruner

            self.study.pruner = make_pruner(self.spec, n_steps=len(self.steps))

    # ------------------------------------------------------------------ dispatch

    def _may_prune(self, step: int) -> bool:
        """Whether the pruner could stop a trial after ``step`` steps (single objective only)."""
        from search.pruners import may_prune

        if self.spec.multi_objective or step >= len(self.steps):
            return False
        assert self.study is not None
        return may_prune(self.study.pruner, step, self._n_complete)

    def _dispatch(self, slot: Slot, r: RunningTrial, when: When | None = None) -> None:
        """Queue ``r``'s next step on ``slot``'s worker (on condition ``when``); with a gate when the worker
        decides after it (successive halving's rungs, ``search.gate``)."""
        if r.next_k == 0:
            r.worker = slot.info["worker"]
        if not slot.inflight and slot.last_end is not None:
            self._waits += 1
        gate = None
        assert self.study is not None
        if gates(self.study.pruner, self.spec.multi_objective) and self._may_prune(r.next_k + 1):
            r.gates.append(r.next_k + 1)
            gate = Gate(
                pruner=self.study.pruner,
                direction=self.study.direction,
                number=r.trial.number,
                trial_id=r.trial._trial_id,
                step=r.next_k + 1,
                weights=dataset_weights(self.spec, self.datasets),
                rungs=self._view.rung_records(RUNG_PREFIX),
                binding=r.baseline is None,
            )
        ref = slot.actor.run_step.remote(r.recipe, r.recipe_id, r.next_k, gate, when)
        slot.inflight.append((r, r.next_k, ref))
        r.next_k += 1

    def _top_up(self, slot: Slot) -> list[RunningTrial]:
        """Give ``slot``'s worker its next calls (at most ``PIPELINE`` in flight) without waiting for
        anything that a result could change; returns the trials started here (their ``worker`` attribute
        is written later, off the workers' critical path)."""
        started: list[RunningTrial] = []
        while len(slot.inflight) < PIPELINE:
            r = slot.feeding
            if r is None or r.done or r.next_k >= len(self.steps):
                # a new trial: at once on an idle worker, or queued behind a trial's last step, or behind
                # the calls of a trial a gate stopped (they return unrun); not behind a failed one's leftovers
                tail = slot.inflight[-1][0] if slot.inflight else None
                if tail is not None and (
                    r is None
                    or (tail.done and not tail.gated_out)
                    or (not r.done and r.next_k < len(self.steps))
                    or (r.done and not r.gated_out)
                ):
                    return started
                # a worker that still has calls queued does not hold up the loop waiting for the asker
                nxt = self._next_for(slot, wait=not slot.inflight)
                if nxt is None:
                    return started
                slot.feeding = r = nxt
                started.append(nxt)
            elif r.gates and r.next_k > r.gates[-1]:
                # the worker decides after a step in flight; the step behind it runs if the trial goes on,
                # the next trial's first step (behind that) if it stops; nothing more before the verdict
                self._follow(slot, When(r.trial._trial_id, r.gates[-1], True), started)
                return started
            elif r.k < r.next_k and self._may_prune(r.next_k):
                if not r.gates or r.gates[-1] != r.next_k:
                    return started  # the coordinator decides after the step in flight: the next one waits
                # on the verdict; a step that is a rung itself carries its own gate, and what follows it
                # waits on that one (a verdict exists only where the step before ran)
                self._dispatch(slot, r, When(r.trial._trial_id, r.gates[-1], False))
                continue
            self._dispatch(slot, r)
        return started

    def _next_for(self, slot: Slot, wait: bool) -> RunningTrial | None:
        """The trial ``slot``'s worker starts next: the one following (unless its conditional first step is
        still out: it comes back skipped) or a new one."""
        f = slot.following
        if f is not None and f.done:  # its conditional first step raised: it is told FAIL already
            slot.following = f = None
        if f is None:
            return self._take_next(wait=wait)
        if f.next_k or not self._starts_ready():
            return None
        slot.following = None
        return f

    def _follow(self, slot: Slot, when: When, started: list[RunningTrial]) -> None:
        """Queue the next trial's first step on condition ``when`` (the trial being fed stops), if one is
        asked already and the worker has room."""
        if len(slot.inflight) >= PIPELINE:
            return
        nxt = slot.following
        if nxt is None:
            nxt = self._take_next(wait=False)
            if nxt is None:
                return
            slot.following = nxt
            started.append(nxt)
        elif nxt.next_k:
            return  # its first step is out already, on this gate's verdict
        self._dispatch(slot, nxt, when)

    # ------------------------------------------------------------------ results

    def _note_fail(self, number: int, reason: str) -> None:
        self._fails_in_row += 1
        self.view.event(f"trial {number} FAIL: {reason}")
        limit = max(5, 2 * len(self.slots))
        if self._fails_in_row >= limit:
            self._stop = f"{self._fails_in_row} trials failed in a row (last: {reason})"

    def _on_result(self, slot: Slot, r: RunningTrial, k: int, res: dict[str, Any]) -> None:
        """Step ``k`` of ``r`` is done: decide (prune or not) when the pruner may act, refill the worker,
        then hand the bookkeeping to the store thread."""
        assert self.study is not None
        if slot.last_end is not None:
            self._idle += max(0.0, res["t_start"] - slot.last_end)
        slot.last_end = res["t_end"]
        self._busy += res["t_end"] - res["t_start"]
        self._worker_cpu += res.get("cpu_s", 0.0)
        if res.get("skipped"):  # its condition failed on the worker (search.gate): nothing ran
            self._skipped += 1
            if not r.done and r.next_k == k + 1:  # a following trial's first step: sent again (with its
                r.next_k = k  # gate) once the worker is free
                if k + 1 in r.gates:
                    r.gates.remove(k + 1)
            self._tag_started(self._top_up(slot))
            return
        if r is slot.following:  # its conditional first step ran: the trial before it stopped
            slot.feeding, slot.following = r, None
        if r.done:  # told FAIL while this step was queued: drop it
            self._tag_started(self._top_up(slot))
            return
        r.records.extend(res["records"])
        r.merge_s += res["merge_s"]
        r.eval_s += res["eval_s"]
        r.worker = res["worker"]
        r.k = k + 1
        scores = running_scores(r.records, self.datasets)
        values = objective_values(scores, self.spec, self.datasets)
        if r.k >= len(self.steps):
            self._n_complete += (
                1  # before refilling: with one more COMPLETE trial the pruner may decide sooner
            )
            started = self._top_up(slot)
            self._finish(r, TrialState.COMPLETE, scores, values)
        elif res.get("gate") is None and r.next_k > r.k:
            # the next step is already queued: no decision was possible here
            started = self._top_up(slot)
            r.intermediate[r.k] = values[0]
            if not self.spec.multi_objective and self._report_here(r.k):
                self.store.submit(self._report, r, r.k, values[0])
        else:  # a verdict: the worker's gate, or the pruner on the coordinator's copy of the study
            if res.get("gate") is not None:
                pruned = self._take_verdict(slot, r, values[0], res["gate"])
            else:
                pruned = r.done = self._decide(r, values[0])  # before refilling: the worker moves on
            started = self._top_up(slot)
            self.store.submit(self._report, r, r.k, values[0])
            if pruned:  # the pruner's records (rung values) go with the trial's last attributes
                self._finish(r, TrialState.PRUNED, scores, values)
            else:
                self.store.submit(self._view.flush)
        self._tag_started(started)

    def _take_verdict(self, slot: Slot, r: RunningTrial, value: float, verdict: dict[str, Any]) -> bool:
        """A worker's gate decided after ``r.k`` steps: keep the rung records the pruner made there (flushed
        with this coordinator's own), and when it stopped the trial, the following trial is the one fed (its
        conditional first step runs now). Returns whether ``r`` stops."""
        if r.k in r.gates:
            r.gates.remove(r.k)
        r.intermediate[r.k] = value
        self._view.record(r.trial._trial_id, verdict["attrs"])
        r.system_attrs.update(verdict["attrs"])
        pruned = bool(verdict["pruned"]) and r.baseline is None
        r.done = r.gated_out = pruned
        if pruned and slot.following is not None and slot.following.next_k:
            slot.feeding, slot.following = slot.following, None
        return pruned

    def _decide(self, r: RunningTrial, value: float) -> bool:
        """The pruner's verdict after ``r.k`` steps: from the coordinator's copy of the study where the pruner
        allows it (``search.prune_view``), else through the store (report first, then ``should_prune``, on
        the store thread, waiting for it). A baseline is never pruned (it is a reference point), though the
        pruner records it as usual."""
        assert self.study is not None
        r.intermediate[r.k] = value
        pruner = self.study.pruner
        if local_decision(pruner):
            verdict = self._view.decide(
                pruner, r.trial.number, r.trial._trial_id, r.intermediate, r.system_attrs
            )
            self._n_complete = max(self._n_complete, self._view.n_complete)
        else:
            step = r.k

            def report_and_ask() -> bool:
                self._report(r, step, value)
                return r.trial.should_prune()

            verdict = self.store.call(report_and_ask)
        return verdict and r.baseline is None

    @contextmanager
    def _optuna_time(self) -> Iterator[None]:
        """Adds the CPU time the block takes on this thread to ``optuna_cpu_s``: what a trial costs the
        coordinator before any bookkeeping of its own (benchmarks/search_throughput.py)."""
        t0 = time.thread_time()
        try:
            yield
        finally:
            self._optuna_cpu_s += time.thread_time() - t0

    def _report_here(self, step: int) -> bool:
        from search.pruners import reports_step

        assert self.study is not None
        return reports_step(self.study.pruner, step, self._n_complete)

    def _report(self, r: RunningTrial, step: int, value: float) -> None:
        """Store thread: ``trial.report(value, step)`` once per step (Optuna ignores a second report)."""
        if r.reported < step:
            with self._optuna_time():
                if per_item(self.study.pruner):  # WilcoxonPruner: every item of the new steps (item_reports)
                    first, last = items_before(self.steps, r.reported), items_before(self.steps, step)
                    report_items(r.trial, r.records, first, last, dataset_weights(self.spec, self.datasets))
                else:
                    r.trial.report(value, step)
            r.reported = step

    def _tag_started(self, started: list[RunningTrial]) -> None:
        for r in started:  # where it runs, while it runs (once: a following trial may be sent twice)
            if not r.tagged:
                r.tagged = True
                self.store.submit(r.trial.set_user_attr, "worker", r.worker)

    def _finish(
        self, r: RunningTrial, state: TrialState, scores: dict[str, float], values: list[float]
    ) -> None:
        """The trial is over: no more of its results count; its records, attributes and state are written
        on the store thread."""
        r.done = True
        self.store.submit(self._write_finish, r, state, scores, values)

    def _write_finish(
        self, r: RunningTrial, state: TrialState, scores: dict[str, float], values: list[float]
    ) -> None:
        assert self.study is not None
        trial = r.trial
        attrs = {
            "scores": {short_name(d): v for d, v in scores.items()},
            "n_items": len(r.records),
            "merge_s": round(r.merge_s, 4),
            "eval_s": round(r.eval_s, 4),
        }
        self._view.flush({trial._trial_id: attrs})  # with the pruner's rung records, one transaction
        self._write_records(trial.number, r.records)
        if self._constraints is not None:  # Optuna reads them at the tell (search.constrained)
            self._constraints.at_tell(self.study, trial, r.baseline, scores, state == TrialState.COMPLETE)
        if state == TrialState.PRUNED:
            with self._optuna_time():
                self.study.tell(trial, state=TrialState.PRUNED)
        else:
            with self._optuna_time():
                self.study.tell(trial, values if self.spec.multi_objective else values[0])
            self._cache.setdefault(cache_key(r.recipe_id, self.scoring_key), trial._trial_id)  # read if it recurs
            if isinstance(self.study.pruner, optuna.pruners.PercentilePruner):
                self._view.refresh(force=True)  # the next decision compares with this trial
        self._mine.discard(trial.number)
        self._fails_in_row = 0
        self.tally.finished_here += 1
        shown = ", ".join(f"{v:.4f}" for v in values)
        self.view.event(
            f"trial {trial.number} {state.name} [{shown}] after {r.k}/{len(self.steps)} steps "
            f"({r.label}; merge {r.merge_s:.1f}s eval {r.eval_s:.1f}s on {r.worker})"
        )

    def _write_records(self, number: int, records: list[dict[str, Any]]) -> None:
        """Per-item records as JSON lines under output_dir/records (written to a temp file, then renamed)."""
        out = self.spec.output_dir / "records"
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".trial_{number}.{os.getpid()}.tmp"
        tmp.write_text("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records), encoding="utf-8")
        os.replace(tmp, out / f"trial_{number}.jsonl")

    def _on_error(self, slot: Slot, r: RunningTrial, err: Exception) -> None:
        import ray

        assert self.study is not None
        if isinstance(err, ray.exceptions.RayTaskError):  # the trial raised; the worker lives on
            if not r.done:
                r.done = True
                self.store.submit(self._fail_and_note, r.trial.number, f"{_cause(err)}", None)
            self._tag_started(self._top_up(slot))
            return
        # the worker process died (killed, OOM-killed, crashed): fail and retry every trial it held,
        # restart the worker
        lost = ([r] if not r.done else []) + [t for t in slot.trials() if t is not r]
        slot.inflight.clear()
        slot.feeding, slot.following, slot.last_end = None, None, None
        reason = f"worker {slot.info.get('worker')} died during the trial: {type(err).__name__}"
        for t in lost:
            t.done = True
            self.store.submit(self._fail_and_note, t.trial.number, reason, "worker died")
        new = self._spawn(slot.index)
        slot.actor, slot.info = new.actor, new.info
        self.view.event(f"worker {slot.index} restarted as {slot.info['worker']}")

    def _fail_and_note(self, number: int, reason: str, retry_why: str | None) -> None:
        """Store thread: tell FAIL, enqueue the same parameters again when ``retry_why``, count the failure."""
        assert self.study is not None
        frozen = self.study._storage.get_trial(
            self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        )
        if self._fail(number, reason) and retry_why:
            self._requeue(frozen, retry_why)
        self._note_fail(number, reason)

    # ------------------------------------------------------------------ main loop

    def _refresh_tally(self, fresh: bool = False) -> None:
        """Store thread (1 Hz, see ``_periodic``): one read of the study serves the progress panel (counts,
        best trial), the budget's count and the pruner's copy of the study. Unless ``fresh``, the read the
        last ask made serves when it is under a second old (trials that end within a second are asked for
        more often than that), with the trial that ask took counted RUNNING."""
        assert self.study is not None
        self._view.flush()  # the pruner's records to the store (the view keeps its own copy of them too)
        at_ask, self._read_at_ask = self._read_at_ask, None
        if not fresh and at_ask is not None and time.monotonic() - at_ask[0] < 1.0:
            at, trials, asked = at_ask
        else:
            at, trials, asked = time.monotonic(), self.study.get_trials(deepcopy=False), None
        self._view.refresh(trials=trials)
        counted, counts = self._counted(trials)
        if asked is not None:  # not in that read (a new trial), or WAITING there (an enqueued one)
            if any(t.number == asked and t.state == TrialState.WAITING for t in trials):
                counts["WAITING"] -= 1
            counts["RUNNING"] = counts.get("RUNNING", 0) + 1
            counted += 1
        self._last_counted, self._counted_at = counted, at
        t = self.tally
        t.complete, t.pruned = counts.get("COMPLETE", 0), counts.get("PRUNED", 0)
        self._n_complete = max(self._n_complete, t.complete)  # other coordinators' trials count too
        t.failed, t.running, t.waiting = (
            counts.get("FAIL", 0),
            counts.get("RUNNING", 0),
            counts.get("WAITING", 0),
        )
        if t.complete and not self.spec.multi_objective:
            done = [x for x in trials if x.state == TrialState.COMPLETE and x.value is not None]
            sign = 1.0 if self.study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
            best = max(done, key=lambda x: (sign * x.value, -x.number))  # the first of equal bests
            t.best, t.best_trial = best.value, best.number
            t.best_label = best.user_attrs.get("baseline") or _describe(best.user_attrs.get("recipe", {}))
        self.view.update(t)

    def run(self) -> RunSummary:
        """Run until the budget is met (n_trials / timeout) or every worker is idle with nothing to ask."""
        wall0 = time.perf_counter()
        if self.study is None:
            self.open()
        if self._budget_left():  # a finished study resumes without starting Ray or loading models
            self._start_ray()
            try:
                self._start_workers()
                loop0, cpu0, own0 = time.perf_counter(), time.process_time(), time.thread_time()
                with self.view:
                    self._loop()
                self._loop_s = time.perf_counter() - loop0
                self._loop_cpu_s = time.process_time() - cpu0
                self._dispatch_cpu_s = time.thread_time() - own0
            finally:
                self._shutdown()
        else:
            self.view.event(f"nothing to do: {self._stop}")
        _, counts = self._counted()
        best_value = best_trial = None
        if counts.get("COMPLETE") and not self.spec.multi_objective:
            assert self.study is not None
            best_value, best_trial = self.study.best_value, self.study.best_trial.number
        return RunSummary(
            study_name=self.spec.name,
            finished_here=self.tally.finished_here,
            counts=counts,
            best_value=best_value,
            best_trial=best_trial,
            stop_reason=self._stop or "done",
            wall_s=time.perf_counter() - wall0,
            loop_s=getattr(self, "_loop_s", 0.0),
            worker_busy_s=self._busy,
            worker_idle_s=self._idle,
            worker_cpu_s=self._worker_cpu,
            worker_waits=self._waits,
            skipped_calls=self._skipped,
            loop_cpu_s=getattr(self, "_loop_cpu_s", 0.0),
            store_cpu_s=self.store.cpu_s,
            dispatch_cpu_s=getattr(self, "_dispatch_cpu_s", 0.0),
            optuna_cpu_s=self._optuna_cpu_s,
        )

    def _loop(self) -> None:
        """Wait for whichever call ends first, act on it; everything that touches the store is a job on the
        store thread (``search.store_queue``), so this thread only decides and dispatches."""
        import gc

        # what start-up left (torch, transformers, Ray, Optuna: ~10^6 objects) goes to the permanent
        # generation: a full collection over it stalled every thread of the loop for 300-350 ms
        gc.collect()
        gc.freeze()
        self.store.start()
        try:
            self._dispatch_until_done()
            self.store.call(self._refresh_tally, True)  # the final counts on the panel
        finally:
            gc.unfreeze()
        if self.store.error is not None:
            raise self.store.error

    def _dispatch_until_done(self) -> None:
        import ray

        while True:
            for slot in self.slots:
                self._tag_started(self._top_up(slot))
            # only now, the workers fed: an ask is a burst of Python on the store thread, and the GIL it
            # holds would delay the dispatch
            self._request_asks()
            if self.store.error is not None:
                raise self.store.error
            heads = {s.inflight[0][2]: s for s in self.slots if s.inflight}
            if not heads:
                with self._ready_cv:  # an ask in progress may still add a trial: run it before ending
                    while self._asks_pending and not self._ready and self.store.error is None:
                        self._ready_cv.wait(0.05)
                if self.store.error is None and self._ready_list() and self._starts_ready():
                    continue
                return
            # a worker whose trial waits on a gate wants the next trial queued behind it: look again as soon as
            # the ask in progress may have brought one, not only at the next result
            wanting = self._asks_pending and any(
                s.feeding is not None and s.feeding.gates and s.following is None for s in self.slots
            )
            asked = self._asked
            ready, _ = ray.wait(list(heads), num_returns=1, timeout=0.02 if wanting else 1.0)
            while wanting and not ready and asked == self._asked and self._asks_pending:
                # nothing came back and no ask ended: wait again without going over every worker
                self._periodic()
                ready, _ = ray.wait(list(heads), num_returns=1, timeout=0.02)
            for ref in ready:
                slot = heads[ref]
                r, k, _ = slot.inflight.popleft()
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as err:
                    self._on_error(slot, r, err)
                    continue
                self._on_result(slot, r, k, res)
            self._periodic()

    def _periodic(self) -> None:
        """Heartbeat, orphan scan, and the study read once a second (progress panel, budget, the pruner's
        copy of the study), as store jobs."""
        self.store.every("beat", self.beat_s, self._beat)
        self.store.every("orphans", max(self.grace_s / 2, 5.0), self.recover_orphans)
        self.store.every("tally", 1.0, self._refresh_tally)  # also the budget's count and the pruner's view

    def _shutdown(self) -> None:
        """Interrupted trials are failed and re-enqueued (so a rerun finishes them); Ray is stopped."""
        import ray

        if self.study is not None:
            self.store.close()  # what is queued is written first; from here on the store is used inline
            pending = [t for s in self.slots for t in s.trials()] + [
                r for r in self._ready_list() if not r.done
            ]
            for r in pending:
                r.done = True
                frozen = self.study._storage.get_trial(r.trial._trial_id)
                if self._fail(r.trial.number, "interrupted: the coordinator stopped"):
                    self._requeue(frozen, "interrupted")
            for slot in self.slots:
                slot.inflight.clear()
                slot.feeding = slot.following = None
            self._ready.clear()
            try:
                self.study.set_user_attr(
                    f"coordinator/{self.id}",
                    {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time(), "stopped": True},
                )
            except Exception:  # the store may be what failed; nothing more to record then
                pass
        for slot in self.slots:
            try:
                ray.kill(slot.actor)
            except Exception:
                pass
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()


def _cause(err: Exception) -> str:
    """The original exception of a Ray error, as 'Type: message' on one line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return " ".join(text.split())[:2000]


def _describe(recipe: dict[str, Any]) -> str:
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
