"""The trial worker: keeps the models resident and scores one proxy step per call.

A worker loads the VLM (``merge_core.ResidentMerger``), the processor and the proxy datasets once. Each
``run_step(recipe, recipe_id, k)`` call merges the recipe in memory if it is not the one already applied
(the first step of a trial), then scores step k of ``objectives.scorer.ProxyScorer`` (one chunk of every
dataset) and returns the per-item records. One call per step lets the coordinator (the single Optuna
writer) prune between steps; at successive halving's rungs the call carries a ``search.engine.gate.Gate`` and the
worker decides itself, and calls queued behind it carry a ``search.engine.gate.When`` condition on that verdict.
Each result carries the call's start and end on the worker's own clock, so the coordinator can measure how
long a worker sat idle between two calls.

:class:`TrialWorker` is a plain class (usable in-process); :func:`remote_worker_class` wraps it as a Ray
actor — one per GPU (``num_gpus=1``) or one per CPU core (``num_cpus=1``, one torch thread each).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from search.engine.gate import Gate, GateBook, When


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to build its resident state; plain data so it ships to any host."""

    vlm: str
    llm: str
    base: str | None
    datasets: tuple[str, ...]  # names under data_dir, or TSV paths
    data_dir: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    trust_remote_code: bool = False
    chunk_size: int = 25
    max_new_tokens: int = 64
    batch_size: int = 8
    limit: int = 0
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)
    sources: str = "auto"  # merge_core.memory_plan's tier: device | host | auto
    components: tuple[str, ...] | None = None  # what recipes may merge (None: all); held by the merger
    # [objectives.generation] (search.study.spec_generation); empty: the preset "none" with max_new_tokens above
    generation: dict[str, Any] = field(default_factory=dict)
    engine: str = "hf"  # objectives.engines: "hf" | "vllm" | "auto"
    vllm: dict[str, Any] = field(default_factory=dict)  # objectives.engines.VllmOptions fields


class TrialWorker:
    """Resident models + proxy scorer; ``run_chunk`` is the unit of work (see module docstring)."""

    def __init__(self, config: WorkerConfig | dict[str, Any]) -> None:
        cfg = config if isinstance(config, WorkerConfig) else WorkerConfig(**config)
        os.environ.update(cfg.env)
        t0 = time.perf_counter()
        import torch

        torch.set_num_threads(max(1, cfg.threads))
        from merge_core import ResidentMerger
        from objectives.datasets import load_dataset
        from objectives.engines import choose_engine, make_engine
        from objectives.generation_defaults import study_generation
        from objectives.processing import load_processor, register_image_only_processors
        from objectives.scorer import ProxyScorer

        register_image_only_processors()
        dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
        self.cfg = cfg
        self.engine_name = choose_engine(cfg.engine, cfg.vlm, cfg.device)
        self.merger = None
        if self.engine_name == "hf":
            self.merger = ResidentMerger(
                cfg.vlm,
                cfg.llm,
                cfg.base,
                device=cfg.device,
                dtype=dtype,
                trust_remote_code=cfg.trust_remote_code,
                sources=cfg.sources,
                components=cfg.components,
            )
        self.processor = load_processor(cfg.vlm, trust_remote_code=cfg.trust_remote_code)
        datasets = []
        for name in cfg.datasets:
            ds = load_dataset(name, root=cfg.data_dir)
            if cfg.limit:
                ds = dataclasses.replace(ds, items=list(ds.items[: cfg.limit]))
            datasets.append(ds)
        self.datasets = datasets
        if self.merger is not None:
            model_type = self.merger.model.config.model_type
        else:  # vLLM holds the model: the family comes from the checkpoint's config alone
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(cfg.vlm, trust_remote_code=cfg.trust_remote_code).model_type
        self.generation = study_generation(  # promotion's built-in backend resolves with the same call
            model_type, cfg.generation, processor=self.processor, batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
        )  # fmt: skip
        engine = None
        if self.merger is None:  # vLLM: its own copy of the VLM, updated per recipe (objectives.engines)
            engine = make_engine(
                self.engine_name, vlm=cfg.vlm, llm=cfg.llm, base=cfg.base, processor=self.processor,
                generation=self.generation, device=cfg.device, dtype=cfg.dtype, vllm_options=cfg.vllm,
            )  # fmt: skip
        self.scorer = ProxyScorer(
            self.merger.model if self.merger is not None else None,
            self.processor,
            datasets,
            chunk_size=cfg.chunk_size,
            generation=self.generation,
            engine=engine,
        )
        self.engine = self.scorer.engine
        self.engine.start()  # the vLLM engine checks its context length against the prepared prompts here
        self.steps = self.scorer.steps()
        from search.engine.recipe_cache import items_fingerprint, scoring_key

        self.scoring_key = scoring_key(
            self.generation.to_dict(), items_fingerprint(datasets), dtype=cfg.dtype, engine=self.engine_name
        )
        self.applied: str | None = None
        self.book = GateBook()
        self.label = f"{socket.gethostname()}:{os.getpid()}/{cfg.device}"
        # the resident models, processor and imports live as long as the worker: out of the collector's
        # reach, a full collection does not pause a step for the time it takes to scan them
        gc.collect()
        gc.freeze()
        self.load_s = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        """Host, pid, device, load time, memory tier and plan, the step plan (per step, [dataset, items] of
        each chunk) and the effective generation settings (``GenerationConfig.to_dict()``)."""
        plan = self.merger.memory_plan if self.merger is not None else getattr(self.engine, "memory_plan", None)
        return {
            "worker": self.label,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": self.cfg.device,
            "engine": self.engine_name,
            "load_s": self.load_s,
            "sources": self.merger.sources if self.merger is not None else None,
            "memory_plan": plan.summary() if plan is not None else None,
            "steps": [[[c.dataset, len(c.indices)] for c in step] for step in self.steps],
            "datasets": {d.name: len(d.items) for d in self.datasets},
            "generation": self.generation.to_dict(),
            "scoring_key": self.scoring_key,  # the recipe cache keys on it (search.engine.recipe_cache)
        }

    def run_step(
        self,
        recipe: dict[str, Any],
        recipe_id: str,
        k: int,
        gate: Gate | None = None,
        when: When | None = None,
    ) -> dict[str, Any]:
        """Merge ``recipe`` unless already applied, score step ``k``; records are JSON-ready dicts.

        ``when``: a condition on an earlier gate's verdict; unmet, nothing runs (``{"skipped": True}``).
        ``gate``: decide after this step (the result's ``gate``: verdict, value, rung records).
        ``t_start`` / ``t_end``: ``time.time()`` on this worker when the call began and ended; ``cpu_s``: the
        CPU time the call took on this thread (below ``t_end - t_start`` when the cores are shared)."""
        from merge_core import Recipe

        t_start, cpu_start = time.time(), time.thread_time()
        if not self.book.admits(when):
            return {"skipped": True, "worker": self.label, "t_start": t_start, "t_end": time.time()}
        merge_s = 0.0
        if self.applied != recipe_id:
            self.applied = None  # a failed apply must not leave a half-merged model marked as applied
            t0 = time.perf_counter()
            (self.merger if self.merger is not None else self.engine).apply(Recipe.from_dict(recipe))
            merge_s = time.perf_counter() - t0
            self.applied = recipe_id
        t0 = time.perf_counter()
        records = self.scorer.run_step(self.steps[k])
        eval_s = time.perf_counter() - t0
        rows = [dataclasses.asdict(r) for r in records]
        verdict = self.book.after_step(k, rows, gate)
        return {
            "records": rows,
            "merge_s": merge_s,
            "eval_s": eval_s,
            "worker": self.label,
            "gate": verdict,
            "t_start": t_start,
            "t_end": time.time(),
            "cpu_s": time.thread_time() - cpu_start,
        }

    def ping(self) -> str:
        return self.label


def remote_worker_class(*, num_gpus: float = 0, num_cpus: float = 1) -> Any:
    """``TrialWorker`` as a Ray actor class with the given resources (no automatic restarts: the
    coordinator restarts dead workers itself so it can fail and re-enqueue their trials)."""
    import ray

    return ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0, max_task_retries=0)(TrialWorker)
