"""The worker pool: Ray start-up, where workers go (placement), their start and their restarts.

Thread: the main thread starts and closes the pool (``Coordinator.start`` / ``close``); during the run only
the loop thread touches it, to restart a worker whose process died (``WorkerPool.restart``). The store
thread never does.

Placement: ``models.device = "auto"`` means one GPU per worker when the Ray cluster has GPUs, else CPU
workers; a CUDA device on a cluster without GPUs, or more workers than GPUs, is a :class:`WorkerStartError`
before any actor starts. Each worker is a Ray actor (``search.engine.worker``) that loads the models once; its
``info`` gives the step plan (per step, ``[dataset, items]`` of each chunk), the dataset order and the
generation settings every trial records, the same for every worker.
"""

from __future__ import annotations

import os
from typing import Any

from merge_core.errors import MergesearchError
from objectives.engines.choice import choose_engine
from search.engine.dispatch import Slot
from search.engine.worker import WorkerConfig, remote_worker_class
from search.study.resolve import Resolved
from search.study.spec import StudySpec, merge_components

# what a worker reads from the coordinator's environment (offline mode, caches, the data folder)
PASSED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "LMUData", "MERGESEARCH_CACHE")


class WorkerStartError(MergesearchError):
    """A worker could not load the models or datasets."""


def ray_error_cause(err: Exception) -> str:
    """The original exception of a Ray error, as 'Type: message' on one line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return " ".join(text.split())[:2000]


def placement(spec: StudySpec, n_workers: int) -> tuple[str, dict[str, float], int]:
    """(device, Ray resources of one worker, number of workers) on the Ray cluster joined."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = spec.models.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if not gpus:
            raise WorkerStartError(
                f"models.device = {device!r} but the Ray cluster has no GPU; use device = 'auto' or 'cpu'"
            )
        if n_workers > gpus:
            raise WorkerStartError(
                f"{n_workers} workers asked on {device!r} but the Ray cluster has {gpus} GPU(s) and a "
                f"worker needs one of its own; set workers (or --workers) <= {gpus}"
            )
        return device, {"num_gpus": 1, "num_cpus": 1}, n_workers
    return device, {"num_gpus": 0, "num_cpus": 1}, n_workers


def worker_config(
    spec: StudySpec, resolved: Resolved, device: str, worker_env: dict[str, str] | None = None
) -> WorkerConfig:
    """What every worker of ``spec`` loads and how it scores: one thread per library (the workers are the
    parallelism), the coordinator's offline and cache settings, then ``worker_env``."""
    obj = spec.objectives
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in PASSED_ENV:
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(worker_env or {})
    return WorkerConfig(
        vlm=resolved.vlm,
        llm=resolved.llm,
        base=resolved.base,
        datasets=resolved.datasets,
        data_dir=resolved.data_dir,
        device=device,
        dtype=spec.models.dtype,
        trust_remote_code=spec.models.trust_remote_code,
        chunk_size=obj.chunk_size,
        max_new_tokens=obj.max_new_tokens,
        batch_size=obj.batch_size,
        limit=obj.limit,
        env=env,
        sources=spec.models.sources,
        components=merge_components(spec),
        generation=dict(obj.generation),
        engine=choose_engine(obj.engine, resolved.vlm, device),  # "auto" resolved once, here
        vllm=obj.vllm.to_dict(),
    )


class WorkerPool:
    """Ray (joined at ``ray_address`` or started locally) and ``n_workers`` worker actors.

    After :meth:`start`: ``slots`` (one per actor), ``device``, and the first worker's plan: ``steps``,
    ``datasets`` and ``generation``."""

    def __init__(
        self,
        spec: StudySpec,
        resolved: Resolved,
        *,
        n_workers: int,
        ray_address: str | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.resolved = resolved
        self.n_workers = n_workers
        self.ray_address = ray_address
        self.worker_env = dict(worker_env or {})
        self.slots: list[Slot] = []
        self.device = ""
        self.steps: list[Any] = []
        self.datasets: tuple[str, ...] = ()
        self.generation: dict[str, Any] | None = None
        self.scoring_key: str | None = None  # how every worker scores (search.engine.recipe_cache)
        self._resources: dict[str, float] = {}
        self._config: WorkerConfig | None = None
        self._owns_ray = False

    def start_ray(self) -> None:
        """Join the cluster at ``ray_address``, or start a local Ray sized for the workers (never one left
        on this machine by another run)."""
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
            ray.init(
                address="local",
                num_cpus=max(self.n_workers, 1),
                object_store_memory=200 * 1024 * 1024,
                **kwargs,
            )
        self._owns_ray = True

    def start(self) -> list[Slot]:
        """Ray, then every worker at once (they load in parallel); returns the slots once all have loaded."""
        import ray

        self.start_ray()
        self.device, self._resources, n = placement(self.spec, self.n_workers)
        self._config = worker_config(self.spec, self.resolved, self.device, self.worker_env)
        cls = remote_worker_class(**self._resources)
        actors = [cls.remote(self._config) for _ in range(n)]
        infos = []
        for i, a in enumerate(actors):
            try:
                infos.append(ray.get(a.info.remote()))
            except ray.exceptions.RayError as err:
                raise WorkerStartError(f"worker {i} could not start: {ray_error_cause(err)}") from None
        self.slots = [Slot(i, a, info) for i, (a, info) in enumerate(zip(actors, infos, strict=True))]
        self.steps = infos[0]["steps"]
        self.generation = infos[0].get("generation")
        self.scoring_key = infos[0].get("scoring_key")
        self.datasets = tuple(infos[0]["datasets"])
        return self.slots

    def restart(self, slot: Slot) -> None:
        """A new actor in ``slot`` (its process died); the slot's dispatch state is the caller's."""
        import ray

        assert self._config is not None, "restart before start"
        actor = remote_worker_class(**self._resources).remote(self._config)
        try:
            info = ray.get(actor.info.remote())
        except ray.exceptions.RayError as err:
            raise WorkerStartError(f"worker {slot.index} could not start: {ray_error_cause(err)}") from None
        slot.actor, slot.info = actor, info

    def close(self) -> None:
        """Kill the actors; stop Ray if this pool started it."""
        import ray

        for slot in self.slots:
            try:
                ray.kill(slot.actor)
            except Exception:  # already dead, or Ray went first: nothing left to stop
                pass
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
