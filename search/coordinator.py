"""The coordinator: the single Optuna writer that feeds Ray workers asynchronously.

Loop: every idle worker gets a new trial at once (``study.ask`` → recipe); each remote call scores one
proxy chunk; after each chunk the coordinator reports the running objective and asks the pruner; the
last chunk completes the trial (``study.tell``). ``ray.wait`` returns whichever worker finishes first,
so there is no generation barrier.

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
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from merge_core.errors import MergesearchError
from search.progress import ProgressView, Tally
from search.resolve import Resolved
from search.space import SearchSpace
from search.spec import StudySpec
from search.storage import open_study
from search.worker import WorkerConfig, remote_worker_class

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
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
    k: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    merge_s: float = 0.0
    eval_s: float = 0.0
    worker: str = ""
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Slot:
    """One worker actor and what it is doing."""

    index: int
    actor: Any
    info: dict[str, Any]
    running: RunningTrial | None = None
    ref: Any = None


@dataclass
class RunSummary:
    """What one ``run`` did (this coordinator's share) and the study's state at the end."""

    study_name: str
    finished_here: int
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    stop_reason: str
    overhead_s: float
    trial_s: float
    wall_s: float
    loop_s: float = 0.0  # from the first dispatch to the last result (wall_s minus Ray and model start-up)


def running_scores(records: list[dict[str, Any]], datasets: tuple[str, ...]) -> dict[str, float]:
    """Accuracy per dataset over the records so far: correct / scored items (datasets with items only)."""
    n: dict[str, int] = {}
    c: dict[str, int] = {}
    for r in records:
        n[r["dataset"]] = n.get(r["dataset"], 0) + 1
        c[r["dataset"]] = c.get(r["dataset"], 0) + int(bool(r["correct"]))
    return {d: c[d] / n[d] for d in datasets if n.get(d)}


def objective_values(scores: dict[str, float], spec: StudySpec, datasets: tuple[str, ...]) -> list[float]:
    """``weighted``: [sum_d w_d·acc_d / sum_d w_d] over datasets in ``scores``; ``multi``: [acc_d per dataset]."""
    obj = spec.objectives
    if obj.mode == "multi":
        return [scores.get(d, 0.0) for d in datasets]  # complete after the last chunk; only then told
    names = [d for d in datasets if d in scores]
    wsum = sum(obj.weight(_short(d)) for d in names)
    return [sum(obj.weight(_short(d)) * scores[d] for d in names) / wsum] if wsum > 0 else [0.0]


def _short(name: str) -> str:
    """A dataset's name as the study file writes it (TSV paths → stem)."""
    return Path(name).stem if name.endswith(".tsv") else name


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
        self._ready: list[RunningTrial] = []  # asked ahead while all workers were busy
        self._owns_ray = False
        self._stop: str | None = None
        self._fails_in_row = 0
        self._cache: dict[str, FrozenTrial] = {}
        self._overhead = 0.0
        self._trial_time = 0.0
        self._last_beat = 0.0
        self._last_scan = 0.0

    # ------------------------------------------------------------------ study bookkeeping (single writer)

    def open(self) -> optuna.Study:
        """Open the study, register this coordinator, recover orphans, enqueue the baselines once."""
        from search.samplers import make_sampler

        self.study = open_study(self.spec, storage=self.storage)
        prior = len(self.study.get_trials(deepcopy=False))
        others = sum(1 for k in self.study.user_attrs if k.startswith("coordinator/"))
        if prior or others:  # a resumed or second coordinator: fresh draws, still determined by the history
            self.study.sampler = make_sampler(self.spec, salt=prior + 7919 * others)
        self._beat(force=True)
        self.recover_orphans()
        self._enqueue_baselines()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if "recipe_id" in t.user_attrs:
                self._cache.setdefault(t.user_attrs["recipe_id"], t)
        return self.study

    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat >= self.beat_s:
            assert self.study is not None
            self.study.set_user_attr(
                f"coordinator/{self.id}", {"host": socket.gethostname(), "pid": os.getpid(), "beat": now}
            )
            self._last_beat = now

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
        mine = {s.running.trial.number for s in self.slots if s.running}
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
        self._last_scan = time.time()
        return recovered

    def _enqueue_baselines(self) -> None:
        assert self.study is not None
        if self.study.user_attrs.get("baselines_enqueued") or not self.spec.baselines:
            return
        self.study.set_user_attr("baselines_enqueued", [b.name for b in self.spec.baselines])
        for b in self.spec.baselines:
            self.study.enqueue_trial(
                {}, user_attrs={"baseline": b.name, "recipe": self.space.baseline(b.fields)}
            )

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

    def _counted(self) -> tuple[int, dict[str, int]]:
        assert self.study is not None
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
        counted, _ = self._counted()
        self._last_counted = counted
        if self.spec.n_trials is not None and counted >= self.spec.n_trials:
            self._stop = "n_trials reached"
            return False
        sampler = self.study.sampler if self.study else None
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study):
            self._stop = "grid exhausted"
            return False
        return True

    def _surplus(self, number: int) -> bool:
        """True when lower-numbered counted trials already fill the budget (a race between coordinators)."""
        if self.spec.n_trials is None:
            return False
        if getattr(self, "_last_counted", 0) + 8 < self.spec.n_trials:
            return False  # far from the end of the budget: no race can overfill it (skips a query)
        assert self.study is not None
        before = sum(1 for t in self.study.get_trials(deepcopy=False, states=COUNTED) if t.number < number)
        return before >= self.spec.n_trials

    def _new_trial(self) -> RunningTrial | None:
        """Ask for the next trial and turn it into a validated recipe; None when the budget is spent."""
        from merge_core import Recipe

        assert self.study is not None
        while self._budget_left():
            trial = self.study.ask()
            trial.set_user_attr("coordinator", self.id)
            if self._surplus(trial.number):
                self._fail(trial.number, "surplus: another coordinator filled n_trials first")
                self._stop = "n_trials reached"
                return None
            baseline = trial.user_attrs.get("baseline")
            recipe: dict[str, Any] = (
                dict(trial.user_attrs["recipe"]) if baseline else self.space.suggest(trial)
            )
            trial.set_user_attr("recipe", recipe)
            try:
                recipe_id = Recipe.from_dict(recipe).id
            except MergesearchError as err:
                self._fail(trial.number, f"invalid recipe: {err}")
                self._note_fail(trial.number, f"invalid recipe: {err}")
                continue
            trial.set_user_attr("recipe_id", recipe_id)
            label = baseline or _describe(recipe)
            cached = self._cache.get(recipe_id)
            if cached is not None:  # same recipe already scored: the result is deterministic, reuse it
                for key in ("scores", "merge_s", "eval_s", "worker", "n_items"):
                    if key in cached.user_attrs:
                        trial.set_user_attr(key, cached.user_attrs[key])
                trial.set_user_attr("cached_from", cached.number)
                self.study.tell(trial, cached.values)
                self.tally.finished_here += 1
                self.view.event(
                    f"trial {trial.number} COMPLETE {cached.values} (same recipe as trial {cached.number})"
                )
                continue
            return RunningTrial(trial=trial, recipe=recipe, recipe_id=recipe_id, label=label)
        return None

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
            n = min(self.n_workers, gpus)
            if gpus and n < self.n_workers:
                self.view.event(f"{self.n_workers} workers asked, {gpus} GPU(s) in the cluster: using {n}")
            return device, {"num_gpus": 1, "num_cpus": 1}, n
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
        self.chunk_plan = infos[0]["chunks"]
        self.datasets = tuple(infos[0]["datasets"])
        self.view.event(
            f"{n} worker(s) on {device}: {', '.join(s.info['worker'] for s in self.slots)}; "
            f"{sum(c[1] for c in self.chunk_plan)} proxy items in {len(self.chunk_plan)} chunks"
        )
        if self.spec.pruner.name == "hyperband" and self.study is not None:
            from search.pruners import make_pruner

            self.study.pruner = make_pruner(self.spec, n_steps=len(self.chunk_plan))

    def _submit(self, slot: Slot) -> None:
        r = slot.running
        assert r is not None
        slot.ref = slot.actor.run_chunk.remote(r.recipe, r.recipe_id, r.k)

    # ------------------------------------------------------------------ results

    def _note_fail(self, number: int, reason: str) -> None:
        self._fails_in_row += 1
        self.view.event(f"trial {number} FAIL: {reason}")
        limit = max(5, 2 * len(self.slots))
        if self._fails_in_row >= limit:
            self._stop = f"{self._fails_in_row} trials failed in a row (last: {reason})"

    def _on_result(self, slot: Slot, res: dict[str, Any]) -> None:
        r = slot.running
        assert r is not None and self.study is not None
        t0 = time.perf_counter()
        r.records.extend(res["records"])
        r.merge_s += res["merge_s"]
        r.eval_s += res["eval_s"]
        r.worker = res["worker"]
        r.k += 1
        scores = running_scores(r.records, self.datasets)
        values = objective_values(scores, self.spec, self.datasets)
        last = r.k >= len(self.chunk_plan)
        if not last and not self.spec.multi_objective:
            r.trial.report(values[0], r.k)
            if r.trial.should_prune():
                self._finish(slot, TrialState.PRUNED, scores, values)
                self._overhead += time.perf_counter() - t0
                return
        if last:
            self._finish(slot, TrialState.COMPLETE, scores, values)
        else:
            self._submit(slot)
        self._overhead += time.perf_counter() - t0

    def _finish(self, slot: Slot, state: TrialState, scores: dict[str, float], values: list[float]) -> None:
        r = slot.running
        assert r is not None and self.study is not None
        trial = r.trial
        trial.set_user_attr("scores", {_short(d): v for d, v in scores.items()})
        trial.set_user_attr("n_items", len(r.records))
        trial.set_user_attr("merge_s", round(r.merge_s, 4))
        trial.set_user_attr("eval_s", round(r.eval_s, 4))
        trial.set_user_attr("worker", r.worker)
        self._write_records(trial.number, r.records)
        if state == TrialState.PRUNED:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, values if self.spec.multi_objective else values[0])
            self._cache.setdefault(r.recipe_id, self.study._storage.get_trial(trial._trial_id))
        self._trial_time += time.perf_counter() - r.started
        self._fails_in_row = 0
        self.tally.finished_here += 1
        shown = ", ".join(f"{v:.4f}" for v in values)
        self.view.event(
            f"trial {trial.number} {state.name} [{shown}] after {r.k}/{len(self.chunk_plan)} chunks "
            f"({r.label}; merge {r.merge_s:.1f}s eval {r.eval_s:.1f}s on {r.worker})"
        )
        slot.running = None
        slot.ref = None

    def _write_records(self, number: int, records: list[dict[str, Any]]) -> None:
        """Per-item records as JSON lines under output_dir/records (written to a temp file, then renamed)."""
        out = self.spec.output_dir / "records"
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".trial_{number}.{os.getpid()}.tmp"
        tmp.write_text("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records), encoding="utf-8")
        os.replace(tmp, out / f"trial_{number}.jsonl")

    def _on_error(self, slot: Slot, err: Exception) -> None:
        import ray

        r = slot.running
        assert r is not None and self.study is not None
        slot.running, slot.ref = None, None
        self._trial_time += time.perf_counter() - r.started
        if isinstance(err, ray.exceptions.RayTaskError):  # the trial raised; the worker lives on
            reason = f"{_cause(err)}"
            self._fail(r.trial.number, reason)
            self._note_fail(r.trial.number, reason)
            return
        # the worker process died (killed, OOM-killed, crashed): fail, retry the trial, restart the worker
        reason = f"worker {slot.info.get('worker')} died during the trial: {type(err).__name__}"
        frozen = self.study._storage.get_trial(r.trial._trial_id)
        if self._fail(r.trial.number, reason):
            self._requeue(frozen, "worker died")
        self._note_fail(r.trial.number, reason)
        new = self._spawn(slot.index)
        slot.actor, slot.info = new.actor, new.info
        self.view.event(f"worker {slot.index} restarted as {slot.info['worker']}")

    # ------------------------------------------------------------------ main loop

    def _refresh_tally(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - getattr(self, "_last_tally", 0.0) < 1.0:  # a panel needs no more than 1 Hz
            return
        self._last_tally = now
        _, counts = self._counted()
        t = self.tally
        t.complete, t.pruned = counts.get("COMPLETE", 0), counts.get("PRUNED", 0)
        t.failed, t.running, t.waiting = (
            counts.get("FAIL", 0),
            counts.get("RUNNING", 0),
            counts.get("WAITING", 0),
        )
        if t.complete and self.study is not None and not self.spec.multi_objective:
            best = self.study.best_trial
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
                loop0 = time.perf_counter()
                with self.view:
                    self._loop()
                self._loop_s = time.perf_counter() - loop0
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
            overhead_s=self._overhead,
            trial_s=self._trial_time,
            wall_s=time.perf_counter() - wall0,
            loop_s=getattr(self, "_loop_s", 0.0),
        )

    def _loop(self) -> None:
        import ray

        while True:
            t0 = time.perf_counter()
            for slot in self.slots:
                if slot.running is None:
                    nxt = self._ready.pop(0) if self._ready else (None if self._stop else self._new_trial())
                    if nxt is None:
                        break
                    slot.running = nxt
                    nxt.started = time.perf_counter()
                    nxt.trial.set_user_attr("worker", slot.info["worker"])  # where it runs, while it runs
                    self._submit(slot)
            if not self._ready and not self._stop and all(s.running for s in self.slots):
                # ask for the next trial while every worker is busy, so a worker that frees up starts at once
                nxt = self._new_trial()
                if nxt is not None:
                    self._ready.append(nxt)
            self._overhead += time.perf_counter() - t0
            busy = {s.ref: s for s in self.slots if s.ref is not None}
            if not busy and not self._ready:
                self._refresh_tally(force=True)
                break
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=1.0)
            for ref in ready:
                slot = busy[ref]
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as err:
                    self._on_error(slot, err)
                    continue
                self._on_result(slot, res)
            t1 = time.perf_counter()
            self._beat()
            if time.time() - self._last_scan > max(self.grace_s / 2, 5.0):
                self.recover_orphans()
            self._refresh_tally()
            self._overhead += time.perf_counter() - t1

    def _shutdown(self) -> None:
        """Interrupted trials are failed and re-enqueued (so a rerun finishes them); Ray is stopped."""
        import ray

        if self.study is not None:
            pending = [s.running for s in self.slots if s.running is not None] + self._ready
            for r in pending:
                frozen = self.study._storage.get_trial(r.trial._trial_id)
                if self._fail(r.trial.number, "interrupted: the coordinator stopped"):
                    self._requeue(frozen, "interrupted")
            for slot in self.slots:
                slot.running = None
            self._ready = []
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
