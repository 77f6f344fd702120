"""The recipe cache's key: a recipe's score is reused only where it was scored the same way.

The coordinator reuses a COMPLETE trial's values for a new trial of the same recipe (the scoring is
deterministic). Across a resume the study file may have changed the generation settings, the proxy items
(another manifest, ``limit``), the dtype or the engine: a score from then is not a score of now. So the
cache keys on ``"<recipe id>@<scoring key>"``, where the scoring key is

    sha256(canonical JSON of {generation (less batch_size), items fingerprint, dtype, engine})[:16]

computed by each worker from what it actually loaded (:func:`scoring_key`) and stored on every trial
(``scoring_key`` attribute). A trial stored without one (a study from before the key) never matches, so
its recipe is scored again rather than trusted.

``batch_size`` is left out: greedy outputs do not depend on the batch an item is in (objectives.generation).
The items fingerprint covers each dataset's name and, per item in order, its index, question, answer,
choices and image bytes (:func:`items_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCORING_KEY_ATTR = "scoring_key"


def items_fingerprint(datasets: Sequence[Any]) -> str:
    """sha256 hex of every dataset's name and items (index, question, answer, choices, image cell)."""
    h = hashlib.sha256()
    for ds in datasets:
        h.update(json.dumps(["dataset", ds.name, len(ds.items)]).encode())
        for it in ds.items:
            h.update(json.dumps([it.index, it.question, it.answer, list(it.choices)]).encode())
            h.update(hashlib.sha256((it.image_b64 or "").encode()).digest())
    return h.hexdigest()


def scoring_key(generation: Mapping[str, Any], items: str, *, dtype: str | None, engine: str) -> str:
    """16 hex digits naming how a worker scores (module docstring); equal keys, equal scores."""
    data = {
        "generation": {k: v for k, v in generation.items() if k != "batch_size"},
        "items": items,
        "dtype": dtype,
        "engine": engine,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_key(recipe_id: str, key: str | None) -> str:
    """The recipe cache's key of a recipe scored under scoring key ``key`` (None: a trial from before the
    key, which matches no worker's)."""
    return f"{recipe_id}@{key or 'unkeyed'}"


def trial_cache_key(user_attrs: Mapping[str, Any]) -> str | None:
    """The cache key of a stored trial (None without a recipe id)."""
    rid = user_attrs.get("recipe_id")
    return cache_key(rid, user_attrs.get(SCORING_KEY_ATTR)) if rid else None


def stale_note(keys: Iterable[str], current: str | None) -> str | None:
    """A line for the console when some cached trials were scored otherwise than the workers score now
    (their recipes are scored again when drawn); None when there are none."""
    suffix = f"@{current or 'unkeyed'}"
    stale = sum(1 for k in keys if not k.endswith(suffix))
    if not stale:
        return None
    return (
        f"{stale} COMPLETE trial(s) were scored with other generation settings, proxy items, dtype or engine "
        f"(scoring key now {current}); their scores are not reused: a recipe drawn again is scored again"
    )
