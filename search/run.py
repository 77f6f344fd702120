"""Run a study end to end: check, plan the sources, run the coordinator to the budget, promote.

``run_study`` is what ``mergesearch run`` and the demo call; it lives apart from the command line so
that the demo, the tests and the benchmarks reach it without importing the CLI module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from search.study.spec import StudySpec


def run_study(
    spec: StudySpec,
    *,
    ray_address: str | None = None,
    console: Console | None = None,
    live: bool | None = None,
    promote: bool = True,
    build_toy: bool = True,
) -> Any:
    """Check everything, run the coordinator to the budget, then promote the top-k (if configured)."""
    from objectives.engines.choice import choose_engine
    from search.engine.coordinator import Coordinator
    from search.study.resolve import preflight, resolve
    from search.study.storage import check_storage_url, mask_url

    console = console or Console()
    check_storage_url(spec.storage)  # an unwritable store fails before any model or Ray work
    if ray_address is None:  # local workers: the device and the worker count are checked on this host
        from merge_core.devices import resolve_device

        resolve_device(spec.models.device, workers=spec.workers, field="models.device")
    resolved = resolve(spec, build_toy=build_toy, console=console)
    preflight(resolved)
    if ray_address is None:
        spec = plan_sources(spec, resolved, console)
    # engine = "vllm" where it cannot run (not installed, family, CPU head size): fail now, not in a worker
    choose_engine(spec.objectives.engine, resolved.vlm, spec.models.device)
    coord = Coordinator(spec, resolved, ray_address=ray_address, console=console, live=live)
    coord.open()
    console.print(
        f"study {spec.name!r} in {mask_url(spec.storage)}; output in {spec.output_dir}", highlight=False
    )
    summary = coord.run()
    idle = summary.worker_idle_s / summary.worker_busy_s if summary.worker_busy_s else 0.0
    console.print(
        f"stopped: {summary.stop_reason}; trials {summary.counts}; this run finished {summary.finished_here} "
        f"in {summary.wall_s:.0f}s (workers idle between calls {100 * idle:.2f}% of their busy time)",
        highlight=False,
    )
    if summary.best_trial is not None:
        console.print(f"best: trial {summary.best_trial} value {summary.best_value:.4f}", highlight=False)
    if promote and spec.promotion.top_k > 0:
        promote_best(spec, console)
    return summary


def plan_sources(spec: StudySpec, resolved: Any, console: Console) -> StudySpec:
    """Print the memory plan of one local worker (headers only) and fix ``models.sources`` to its tier;
    MemoryPlanError when it cannot fit. Hub ids are planned by each worker once it has the files."""
    import dataclasses

    from merge_core.devices import resolve_device
    from merge_core.memory_plan import plan_for_checkpoints
    from search.study.spec import merge_components

    if not all(Path(p).is_dir() for p in (resolved.vlm, resolved.llm, resolved.base) if p):
        return spec
    device = resolve_device(spec.models.device, workers=spec.workers, field="models.device")
    if spec.objectives.engine == "vllm":  # vLLM's weights + KV cache and the update sources: no tier to fix
        from merge_core.memory_plan import plan_vllm_for_checkpoints

        opts = spec.objectives.vllm
        vplan = plan_vllm_for_checkpoints(
            resolved.vlm, resolved.llm, resolved.base, device=device, dtype=spec.models.dtype,
            components=merge_components(spec), workers=spec.workers,
            gpu_memory_utilization=opts.gpu_memory_utilization, kv_cache_bytes=opts.kv_cache_mb << 20,
        )  # fmt: skip
        console.print(f"each of {spec.workers} worker(s): {vplan.summary()}", highlight=False)
        return spec
    plan = plan_for_checkpoints(
        resolved.vlm, resolved.llm, resolved.base, device=device, dtype=spec.models.dtype,
        components=merge_components(spec), sources=spec.models.sources, workers=spec.workers,
    )  # fmt: skip
    console.print(f"each of {spec.workers} worker(s): {plan.summary()}", highlight=False)
    return spec.replace(models=dataclasses.replace(spec.models, sources=plan.tier))


def promote_best(spec: StudySpec, console: Console) -> list:
    """Call the promotion step (search.results.promote) if it is installed; skip with a message otherwise."""
    try:
        from search.results.promote import promote_study
    except ImportError as err:
        console.print(f"promotion skipped: search.results.promote is not available ({err})")
        return []
    return promote_study(spec, top_k=spec.promotion.top_k, backend=spec.promotion.backend, console=console)
