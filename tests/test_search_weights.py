"""`[objectives] weights` keyed by a source dataset apply to its proxy (the workers' dataset names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from objectives.proxy import proxy_name
from search.study.objective_values import dataset_weights, objective_values
from search.study.spec import StudySpecError, load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[1]


def _study(weights: dict[str, float], proxy_size: int = 200) -> dict:
    return {
        "name": "w",
        "n_trials": 3,
        "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
        "objectives": {"datasets": ["MathVista_MINI", "MathVision"], "proxy_size": proxy_size, "weights": weights},
    }


def test_source_weights_apply_to_the_proxy_names_the_workers_use(tmp_path: Path) -> None:
    spec = spec_from_dict(_study({"MathVista_MINI": 3.0, "MathVision": 1.0}), src="s.toml")
    # the workers' names: the proxy TSVs resolve.py writes under output_dir/proxy
    workers = (str(tmp_path / "proxy" / "MathVista_PROXY200.tsv"), str(tmp_path / "proxy" / "MathVision_PROXY200.tsv"))
    assert list(dataset_weights(spec, workers).values()) == [3.0, 1.0]
    scores = {workers[0]: 0.5, workers[1]: 0.9}
    assert objective_values(scores, spec, workers) == [pytest.approx((3 * 0.5 + 1 * 0.9) / 4)]
    # a weight keyed by the proxy's own name is accepted too
    spec = spec_from_dict(_study({"MathVision_PROXY200": 0.0}), src="s.toml")
    assert list(dataset_weights(spec, workers).values()) == [1.0, 0.0]


def test_shipped_7b_study_weights_reach_its_proxies() -> None:
    spec = load_spec(REPO / "studies" / "qwen25vl7b_qwen25math7b.toml")
    size = spec.objectives.proxy_size
    assert size > 0 and spec.objectives.weights
    names = tuple(f"/o/proxy/{proxy_name(d, size)}.tsv" for d in spec.objectives.datasets)
    got = dataset_weights(spec, names)
    assert list(got.values()) == [spec.objectives.weights[d] for d in spec.objectives.datasets]


@pytest.mark.parametrize(("weights", "size"), [({"MathVista_PROXY100": 1.0}, 200), ({"MathVista_PROXY200": 1.0}, 0),
                                               ({"MMStar": 2.0}, 200)])  # fmt: skip
def test_weight_key_matching_no_dataset_is_named(weights: dict[str, float], size: int) -> None:
    with pytest.raises(StudySpecError) as err:
        spec_from_dict(_study(weights, size), src="s.toml")
    msg = str(err.value)
    assert msg.startswith("s.toml") and "`objectives.weights`" in msg and next(iter(weights)) in msg
