"""The recipe cache reuses a score only where it was scored the same way (search.engine.recipe_cache).

Two halves of one chain: a worker's scoring key changes when the study's generation settings or the proxy
items change (and only then: two workers with the same settings agree), and a resumed coordinator whose
workers report another key scores a recipe again instead of reusing the stale trial's values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from objectives.tsv import write_tsv
from search.engine.coordinator import Coordinator
from search.engine.recipe_cache import cache_key, scoring_key, stale_note, trial_cache_key
from search.study.resolve import Resolved
from search.study.spec import spec_from_dict
from tests.test_obj_datasets import mathvision_rows
from tests.tiny.models import build_trio
from tests.tiny.vlm_processing import add_processor

optuna.logging.set_verbosity(optuna.logging.WARNING)
RES = Resolved("/m/vlm", "/m/llm", "/m/base", ("A", "B"), None)


def _spec(tmp_path: Path) -> Any:
    return spec_from_dict(
        {
            "name": "rc",
            "storage": f"sqlite:///{tmp_path}/s.db",
            "output_dir": str(tmp_path / "out"),
            "n_trials": 3,
            "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
            "objectives": {"datasets": ["A", "B"]},
            "space": {"methods": ["task_arithmetic"], "vlm_weight": 0.5, "llm_weight": 1.0},  # one recipe
        }
    )


def _coordinator(tmp_path: Path, key: str | None) -> Coordinator:
    c = Coordinator(_spec(tmp_path), RES, live=False)
    c.ledger.scoring_key = key  # what use_plan takes from the workers' info
    c.open()
    return c


def test_resume_with_other_scoring_does_not_reuse_stale_scores(tmp_path: Path) -> None:
    first = _coordinator(tmp_path, "k-old")
    running = first.ledger.ask()
    assert running is not None
    running.trial.set_user_attr("scores", {"A": 0.5, "B": 0.5})
    first.study.tell(running.trial, 0.5)
    stored = first.study.trials[running.trial.number]
    assert stored.user_attrs["scoring_key"] == "k-old"
    assert trial_cache_key(stored.user_attrs) == cache_key(running.recipe_id, "k-old")

    # resumed with edited generation settings: the workers report another key; the recipe is scored again
    edited = _coordinator(tmp_path, "k-new")
    again = edited.ledger.ask()
    assert again is not None and again.recipe_id == running.recipe_id  # handed to a worker, not reused
    assert "cached_from" not in edited.study.trials[again.trial.number].user_attrs
    assert edited.study.trials[again.trial.number].state == TrialState.RUNNING
    note = stale_note(edited.ledger.recipe_cache, edited.ledger.scoring_key)
    assert note is not None and note.startswith("1 COMPLETE trial(s) were scored with other generation settings")

    # resumed with the settings it was scored with: the same recipe is reused, not re-run
    same = _coordinator(tmp_path, "k-old")
    assert stale_note(same.ledger.recipe_cache, same.ledger.scoring_key) is None
    reused = same.ledger.ask()
    assert reused is None or reused.recipe_id != running.recipe_id
    copies = [t for t in same.study.get_trials() if t.user_attrs.get("cached_from") == running.trial.number]
    assert copies and all(t.value == 0.5 and t.state == TrialState.COMPLETE for t in copies)


def test_a_trial_stored_without_a_key_is_never_reused(tmp_path: Path) -> None:
    c = _coordinator(tmp_path, "k")
    running = c.ledger.ask()
    assert running is not None
    c.study._storage.set_trial_user_attr(running.trial._trial_id, "scoring_key", None)  # an older study
    c.study.tell(running.trial, 0.4)
    later = _coordinator(tmp_path, "k")
    nxt = later.ledger.ask()
    assert nxt is not None and nxt.recipe_id == running.recipe_id


def test_key_formula_and_batch_size_is_left_out() -> None:
    gen = {"max_new_tokens": 8, "batch_size": 4, "stop_strings": []}
    key = scoring_key(gen, "items", dtype=None, engine="hf")
    assert key == scoring_key({**gen, "batch_size": 32}, "items", dtype=None, engine="hf")
    for other in (
        scoring_key({**gen, "max_new_tokens": 9}, "items", dtype=None, engine="hf"),
        scoring_key(gen, "items2", dtype=None, engine="hf"),
        scoring_key(gen, "items", dtype="bfloat16", engine="hf"),
        scoring_key(gen, "items", dtype=None, engine="vllm"),
    ):
        assert other != key


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Any:
    trio = build_trio("qwen2_vl", tmp_path_factory.mktemp("rc") / "trio", seed=5)
    add_processor(trio.vlm)
    return trio


def test_workers_key_follows_generation_settings_and_items(trio: Any, tmp_path: Path) -> None:
    from search.engine.worker import TrialWorker, WorkerConfig

    data = write_tsv(mathvision_rows(), tmp_path / "MathVision_K.tsv")
    edited_rows = mathvision_rows()
    edited_rows[1]["question"] = "Find y."
    edited = write_tsv(edited_rows, tmp_path / "other" / "MathVision_K.tsv")

    def key(generation: dict[str, Any], path: Path = data, **over: Any) -> str:
        cfg = dict(vlm=str(trio.vlm), llm=str(trio.llm), base=str(trio.base), datasets=(str(path),),
                   chunk_size=3, batch_size=2, generation=generation, **over)  # fmt: skip
        return TrialWorker(WorkerConfig(**cfg)).info()["scoring_key"]

    base = {"preset": "none", "max_new_tokens": 4}
    k = key(base)
    assert key(dict(base)) == k  # deterministic: another worker, same settings, same key
    assert key({**base, "system_prompt": "Be exact."}) != k
    assert key({**base, "stop_strings": ["##"]}) != k
    assert key(base, edited) != k  # one question edited: other items
    assert key(base, limit=2) != k  # fewer items
