"""Streamed merge to disk: ``merge_to_disk(recipe, out_dir)`` / ``mergesearch merge RECIPE.json --out DIR``.

Order of work: open all three checkpoints (headers only), preflight, plan and refuse an existing ``out_dir``
— all before the first tensor is read.  Then tensors are read one at a time, merged, and streamed into
shards in a temporary directory beside ``out_dir``; config, tokenizer, processor, chat template and
generation config are copied from the VLM; ``recipe.json`` and a model card are written; finally the
temporary directory is renamed into place.  Memory holds one tensor (and its sources) at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from merge_core.atomic import replace_dir
from merge_core.errors import MergesearchError
from merge_core.hashes import sha256_files
from merge_core.io import (
    INDEX_NAME,
    PICKLE_SUFFIXES,
    ST_DTYPES,
    ModelFiles,
    ShardedWriter,
    TensorSpec,
    keep_freed_memory,
    parse_size,
)
from merge_core.methods import merge_tensor
from merge_core.methods.engine import one_thread
from merge_core.plan import Plan, PlanEntry, build_plan
from merge_core.recipe import Recipe
from merge_core.tensor_map import preflight

WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
SKIP_FILES = {INDEX_NAME, "README.md", "recipe.json", "pytorch_model.bin.index.json"}


class OutputExistsError(MergesearchError):
    """The output directory exists and ``overwrite`` was not given."""


def open_sources(recipe: Recipe) -> tuple[ModelFiles, ModelFiles, ModelFiles | None]:
    """Open the recipe's VLM, LLM and (if any) base checkpoints (headers only)."""
    vlm = ModelFiles(recipe.vlm, "vlm")
    llm = ModelFiles(recipe.llm, "llm")
    base = ModelFiles(recipe.base, "base") if recipe.base is not None else None
    return vlm, llm, base


def _read_cast(files: ModelFiles, name: str, dtype: torch.dtype) -> torch.Tensor:
    t = files.get(name)
    return t.to(dtype) if t.dtype != dtype and t.dtype.is_floating_point else t


def produce(entry: PlanEntry, vlm: ModelFiles, llm: ModelFiles, base: ModelFiles | None) -> torch.Tensor:
    """The output tensor of one plan entry, read from the checkpoints (sources cast to the output dtype)."""
    src = entry.source
    out_dtype = ST_DTYPES[entry.out_spec.dtype]
    theta_v = _read_cast(vlm, src.name, out_dtype)
    if entry.op is None:
        return theta_v
    theta_l = _read_cast(llm, src.llm_name, out_dtype)  # type: ignore[arg-type]
    theta_b = None
    if base is not None and src.base_name is not None and entry.op.vlm_weight is not None:
        theta_b = _read_cast(base, src.base_name, out_dtype)
    # theta_v is a fresh buffer of ours: merging into it in place saves an output-sized allocation per tensor
    return merge_tensor(entry.op, theta_v, theta_l, theta_b, out=theta_v)


def merge_threads() -> int:
    """Tensors merged at once: ``$MERGESEARCH_MERGE_THREADS``, default min(2, CPU cores)."""
    raw = os.environ.get("MERGESEARCH_MERGE_THREADS")
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise MergesearchError(
                f"MERGESEARCH_MERGE_THREADS is {raw!r}; set it to a whole number of threads (1 = one tensor at a time)"
            ) from None
        if n >= 1:
            return n
        raise MergesearchError(f"MERGESEARCH_MERGE_THREADS is {raw!r}; it must be at least 1")
    return max(1, min(2, os.cpu_count() or 1))


class Lookahead:
    """Produce items in a fixed order on ``threads`` threads, at most ``threads`` ahead of the consumer.

    Each tensor is merged by one thread start to finish (single-threaded torch ops, see
    :func:`merge_core.methods.engine.one_thread`), so the values do not depend on the thread count; two
    tensors at once use a second core for the selection and election passes, which dominate TIES and DARE.
    With one thread, items are produced in the caller's thread when asked for.
    """

    def __init__(self, order: list[str], fn: Callable[[str], torch.Tensor], threads: int) -> None:
        self.order, self.fn, self.threads = order, fn, threads
        self.pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="mergesearch-merge") if threads > 1 else None
        )
        self.pending: dict[str, Future[torch.Tensor]] = {}
        self.next = 0  # index in order of the next item to submit

    def get(self, name: str) -> torch.Tensor:
        """The item ``name`` (the next in order), after queueing the ones behind it."""
        if self.pool is None:
            return self.fn(name)
        while self.next < len(self.order) and len(self.pending) < self.threads:
            item = self.order[self.next]
            self.pending[item] = self.pool.submit(self.fn, item)
            self.next += 1
        return self.pending.pop(name).result()

    def __enter__(self) -> Lookahead:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            for f in self.pending.values():
                f.cancel()
            self.pool.shutdown(wait=True)


def _copy_aux(vlm_root: Path, tmp: Path, dtype: torch.dtype) -> None:
    for p in sorted(vlm_root.iterdir()):
        if p.name in SKIP_FILES or p.name.endswith(WEIGHT_SUFFIXES) or p.name.startswith("."):
            continue
        if p.is_dir():
            shutil.copytree(p, tmp / p.name)
        else:
            shutil.copy2(p, tmp / p.name)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    name = str(dtype).removeprefix("torch.")
    for holder in (cfg, cfg.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if key in holder:
                holder[key] = name
    cfg.setdefault("dtype", name)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def _model_card(
    recipe: Recipe, plan: Plan, sources: dict[str, ModelFiles | None], hashes: dict[str, str]
) -> str:
    lines = [
        "---", "tags: [merge, mergesearch]", "---", "",
        f"# Merged VLM (recipe {recipe.id})", "",
        f"Made by `mergesearch merge` with method **{recipe.method}** ({recipe.compat} definitions); "
        f"{len(plan.merged())} of {len(plan.entries)} tensors merged, dtype {str(plan.dtype).removeprefix('torch.')}.",
        "", "## Sources", "",
    ]  # fmt: skip
    for label, files in sources.items():
        if files is None:
            continue
        lines.append(f"- {label}: `{getattr(recipe, label)}` ({files.root})")
        for f in files.files:
            lines.append(f"  - `{f.name}` sha256 `{hashes.get(str(f), '?')}`")
    lines += ["", "## Recipe", "", "```json", recipe.to_json(), "```", ""]
    return "\n".join(lines)


def merge_to_disk(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    shard_size: str | int = "2GB",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Merge ``recipe`` into a loadable checkpoint directory ``out_dir`` (atomic; see module docstring)."""
    out = Path(out_dir).expanduser().absolute()
    limit = parse_size(shard_size)
    threads = merge_threads()
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"output directory {str(out)!r} exists; pass --overwrite (overwrite=True) to replace it"
        )
    vlm, llm, base = open_sources(recipe)
    tmap = preflight(vlm, llm, base)
    plan = build_plan(recipe, tmap)
    keep_freed_memory()
    if not out.parent.is_dir():
        raise MergesearchError(
            f"parent directory of the output {str(out.parent)!r} does not exist; create it first"
        )

    hashes: dict[str, str] = {}
    files = sorted({*vlm.files, *llm.files, *(base.files if base else [])})
    hasher = threading.Thread(target=sha256_files, args=(files, hashes), daemon=True)
    hasher.start()  # hashing reads the sources once more; overlapping it with the merge hides most of it

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        specs: list[TensorSpec] = [e.out_spec for e in plan.entries]
        by_name = {e.out_spec.name: e for e in plan.entries}
        writer = ShardedWriter(tmp, specs, limit)
        order = [spec.name for shard in writer.shards for spec in shard]
        ahead = Lookahead(order, lambda name: produce(by_name[name], vlm, llm, base), threads)
        with (
            tqdm(total=len(specs), desc=f"merge {recipe.method}", unit="tensor", disable=not progress) as bar,
            one_thread(torch.device("cpu")),
            ahead,
        ):
            writer.write(lambda spec: ahead.get(spec.name), bar.update)
        _copy_aux(vlm.root, tmp, plan.dtype)
        (tmp / "recipe.json").write_text(recipe.to_json() + "\n", encoding="utf-8")
        hasher.join()
        sources: dict[str, Any] = {"vlm": vlm, "llm": llm, "base": base}
        (tmp / "README.md").write_text(_model_card(recipe, plan, sources, hashes), encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for f in (vlm, llm, base):
            if f is not None:
                f.close()
    return out
