"""Fixed proxy subsets of a benchmark, stratified by category, in VLMEvalKit's own TSV format.

``make_proxy(dataset, n, seed, out_dir)`` writes ``<BASE>_PROXY<n>.tsv`` (the chosen rows, cells copied
verbatim from the source file, in source order) and ``<BASE>_PROXY<n>.manifest.json`` (source name, path and
MD5, seed, per-stratum counts, chosen indices, and the ``--data-config`` entry with which VLMEvalKit evaluates
exactly the same items). ``BASE`` is the source name without a trailing ``_MINI``.

Allocation: each stratum (MathVista ``task``, MathVision ``category``) gets ``n * size / total`` items by
largest remainder, at least one when ``n`` >= the number of strata. Within a stratum, items are ranked by
``sha256(f"{seed}:{index}")`` — a choice that depends only on (seed, index), not on Python's RNG or row order.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from merge_core.atomic import write_text_atomic

from .datasets import IMAGE_REF_MAX_CHARS, Dataset, DatasetError, read_table

MANIFEST_SCHEMA = "mergesearch.proxy/v1"
VLMEVAL_CLASS = {"mathvista": "MathVista", "mathvision": "MathVision"}


def proxy_name(source_name: str, n: int) -> str:
    """``MathVista_MINI`` -> ``MathVista_PROXY200`` for n=200."""
    base = source_name[: -len("_MINI")] if source_name.endswith("_MINI") else source_name
    return f"{base}_PROXY{n}"


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Per-stratum counts summing to ``n``: proportional by largest remainder, >= 1 each when n allows.

    Ties in the remainder go to the larger stratum, then to the stratum name in sorted order.
    """
    total = sum(sizes.values())
    keys = sorted(sizes)
    floor_one = n >= len(keys)
    quotas = {k: n * sizes[k] / total for k in keys}
    counts = {k: min(sizes[k], max(int(quotas[k]), 1 if floor_one else 0)) for k in keys}
    while sum(counts.values()) > n:  # the minimum of one overshot: take back from the largest
        k = max((k for k in keys if counts[k] > 1), key=lambda k: (counts[k] - quotas[k], counts[k], k))
        counts[k] -= 1
    order = sorted(keys, key=lambda k: (-(quotas[k] - int(quotas[k])), -sizes[k], k))
    i = 0
    while sum(counts.values()) < n:
        k = order[i % len(order)]
        if counts[k] < sizes[k]:
            counts[k] += 1
        i += 1
    return counts


def _rank(seed: int, index: str) -> bytes:
    return hashlib.sha256(f"{seed}:{index}".encode()).digest()


def choose_indices(dataset: Dataset, n: int, seed: int) -> tuple[list[str], dict[str, int]]:
    """The chosen item indices (in file order) and the per-stratum counts."""
    if not 0 < n <= len(dataset.items):
        raise DatasetError(
            f"{dataset.path}: cannot take {n} items from {len(dataset.items)}; choose 1..{len(dataset.items)}"
        )
    strata: dict[str, list[str]] = defaultdict(list)
    for item in dataset.items:
        strata[item.category or "(none)"].append(item.index)
    counts = allocate({k: len(v) for k, v in strata.items()}, n)
    chosen: set[str] = set()
    for key, members in strata.items():
        chosen.update(sorted(members, key=lambda idx: _rank(seed, idx))[: counts[key]])
    ordered = [item.index for item in dataset.items if item.index in chosen]
    return ordered, counts


def make_proxy(dataset: Dataset, n: int, seed: int, out_dir: str | Path, *, name: str | None = None) -> Path:
    """Write the proxy TSV + manifest for ``dataset`` into ``out_dir``; return the TSV path.

    The TSV keeps the source's columns and cells; an image cell that referred to a row left out is replaced
    by that row's image, so the subset stands alone. Both files are written atomically (manifest last).
    """
    out_dir = Path(out_dir)
    name = name or proxy_name(dataset.name, n)
    indices, counts = choose_indices(dataset, n, seed)
    table = read_table(dataset.path)
    table["index"] = table["index"].str.strip()
    keep = set(indices)
    if "image" in table.columns:
        image_of = dict(zip(table["index"], table["image"], strict=True))
        refs = [
            (i, v.strip())
            for i, v in zip(table.index, table["image"], strict=True)
            if v.strip() and len(v.strip()) <= IMAGE_REF_MAX_CHARS
        ]
        for row, ref in refs:
            target = ref[:-2] if ref.endswith(".0") else ref
            if table.at[row, "index"] in keep and target not in keep:
                table.at[row, "image"] = image_of[target]
    subset = table[table["index"].isin(keep)]
    tsv_text = subset.to_csv(sep="\t", index=False)
    tsv_path = out_dir / f"{name}.tsv"
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "kind": dataset.kind,
        "n": len(indices),
        "seed": seed,
        "stratified_by": "task" if dataset.kind == "mathvista" else "category",
        "source": {
            "name": dataset.name,
            "path": str(dataset.path),
            "md5": dataset.md5,
            "n_items": len(dataset.items),
        },
        "strata": dict(sorted(counts.items())),
        "indices": indices,
        "tsv_md5": hashlib.md5(tsv_text.encode("utf-8")).hexdigest(),
        "vlmeval_data_config": {name: {"class": VLMEVAL_CLASS[dataset.kind], "dataset": name}},
    }
    write_text_atomic(tsv_path, tsv_text)
    write_text_atomic(out_dir / f"{name}.manifest.json", json.dumps(manifest, indent=2) + "\n")
    return tsv_path


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read a proxy manifest; DatasetError when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: not a readable proxy manifest ({err})") from err
    if data.get("schema") != MANIFEST_SCHEMA:
        raise DatasetError(f"{path}: schema {data.get('schema')!r} is not {MANIFEST_SCHEMA!r}")
    return data
