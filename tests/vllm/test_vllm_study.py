"""A study end to end with engine = "vllm" and 2 Ray workers: every trial's records equal the hf engine's.

Both studies run the same enqueued recipes (the baselines; n_trials = their number), so the trials are the
same whatever order the workers finish in; the world is tests/vllm/world.py (head_dim 32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.run import run_study
from search.study.spec import load_spec
from search.study.storage import open_study
from tests.vllm.world import build_world

BASELINES = """
[[baselines]]
name = "vlm_alone"
method = "linear"
weight = 0.0
[[baselines]]
name = "linear_0.5"
method = "linear"
weight = 0.5
[[baselines]]
name = "ties_attention"
method = "ties"
vlm_weight = 1.0
llm_weight = 1.2
density = 0.5
components = ["attention"]
[[baselines]]
name = "ta_all"
method = "task_arithmetic"
vlm_weight = 1.0
llm_weight = 0.7
"""


def _study(tmp: Path, world, engine: str) -> Path:
    ds = ", ".join(json.dumps(d) for d in world.datasets)
    path = tmp / f"{engine}.toml"
    path.write_text(
        f"""name = "v32_{engine}"
storage = "sqlite:///{tmp}/{engine}.db"
output_dir = "{tmp}/{engine}_out"
n_trials = 4
workers = 2
seed = 0
[models]
vlm = "{world.vlm}"
llm = "{world.llm}"
base = "{world.base}"
dtype = "float32"
device = "cpu"
[objectives]
datasets = [{ds}]
data_dir = "{world.data_dir}"
chunk_size = 4
max_new_tokens = 12
batch_size = 4
engine = "{engine}"
[objectives.vllm]
kv_cache_mb = 16
[space]
methods = ["linear", "task_arithmetic", "ties"]
[pruner]
name = "none"
{BASELINES}"""
    )
    return path


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
        log_to_driver=False, configure_logging=False,
    )  # fmt: skip
    yield ray
    ray.shutdown()


def _records(spec) -> dict[str, list[dict]]:
    study = open_study(spec, create=False)
    out = {}
    for t in study.get_trials():
        rows = (spec.output_dir / "records" / f"trial_{t.number}.jsonl").read_text().splitlines()
        recs = sorted((json.loads(r) for r in rows), key=lambda r: (r["dataset"], r["index"]))
        out[t.user_attrs["baseline"]] = [
            {"scores": t.user_attrs["scores"], "worker": t.user_attrs["worker"]},
            *({k: r[k] for k in ("dataset", "index", "response", "correct")} for r in recs),
        ]
    return out


def test_vllm_study_equals_hf_study(tmp_path, ray_runtime):
    world = build_world(tmp_path / "world")
    runs = {}
    for engine in ("hf", "vllm"):
        spec = load_spec(_study(tmp_path, world, engine))
        assert spec.objectives.engine == engine
        summary = run_study(spec, live=False, promote=False)
        assert summary.finished_here == 4
        runs[engine] = _records(spec)
    hf, vl = runs["hf"], runs["vllm"]
    assert set(hf) == set(vl) == {"vlm_alone", "linear_0.5", "ties_attention", "ta_all"}
    workers = set()
    for name in hf:
        assert vl[name][1:] == hf[name][1:], name  # every response of every item
        assert vl[name][0]["scores"] == hf[name][0]["scores"], name
        assert len(vl[name]) - 1 == 24
        workers.add(vl[name][0]["worker"])
    assert len(workers) == 2  # both vLLM workers took trials
    responses = {name: tuple(r["response"] for r in recs[1:]) for name, recs in vl.items()}
    assert len(set(responses.values())) >= 3  # the recipes differ in what they generate: a real comparison
