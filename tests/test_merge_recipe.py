"""Recipe schema: defaults per method, JSON round trip, stable id, validation naming the field; schedules."""

from __future__ import annotations

import json
import math

import pytest

from merge_core import Recipe, RecipeError, Schedule, load_recipe
from merge_core.schedule import layer_factors

BASE = {"vlm": "v", "llm": "l", "base": "b"}


def test_defaults_follow_mergekit_per_method():
    ties = Recipe.from_dict({**BASE, "method": "ties", "density": 0.5})
    assert (ties.normalize, ties.rescale, ties.lambda_, ties.vlm_weight, ties.llm_weight) == (
        True,
        "none",
        1.0,
        1.0,
        1.0,
    )
    dare = Recipe.from_dict({**BASE, "method": "dare_ties"})
    assert (dare.normalize, dare.rescale, dare.density) == (False, "l1", 1.0)
    ta = Recipe.from_dict({**BASE, "method": "task_arithmetic"})
    assert (ta.normalize, ta.density, ta.rescale) == (False, None, None)
    lin = Recipe.from_dict({"vlm": "v", "llm": "l", "weight": 0.1})
    assert lin.method == "linear" and lin.components == ("attention", "mlp", "norm")
    assert lin.schedule == Schedule() and lin.seed == 0 and lin.dtype is None and lin.compat == "mergekit"


def test_round_trip_and_stable_id():
    d = {
        **BASE, "method": "dare_linear", "density": 0.3, "vlm_weight": 0.5, "llm_weight": 1.2, "lambda": 0.9,
        "rescale": "inverse_density", "components": ["mlp", "attention"], "component_weights": {"mlp": 0.5},
        "schedule": {"shape": "explicit", "values": [0, 0.5, 1]}, "seed": 42, "dtype": "bfloat16",
    }  # fmt: skip
    r = Recipe.from_dict(d)
    assert Recipe.from_json(r.to_json()) == r
    assert json.loads(r.to_json()) == r.to_dict()
    assert Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()
    assert r.components == ("attention", "mlp")  # canonical order
    assert r.id == Recipe.from_dict(dict(reversed(list(d.items())))).id
    assert len(r.id) == 12 and int(r.id, 16) >= 0
    assert r.replace(seed=43).id != r.id
    assert r.replace(seed=43).seed == 43
    # the id is the sha256 of the canonical JSON (sorted keys, no spaces): a stable content hash
    import hashlib

    canon = json.dumps(r.to_dict(), sort_keys=True, separators=(",", ":"))
    assert r.id == hashlib.sha256(canon.encode()).hexdigest()[:12]


def test_schema_v1_is_read_kept_and_selects_the_v1_dare_masks():
    d = {**BASE, "method": "dare_ties", "density": 0.4, "seed": 3}
    v2 = Recipe.from_dict(d)
    assert v2.schema == "mergesearch.recipe/v2" and v2.dare_mask == "splitmix64"
    v1 = Recipe.from_dict({**d, "schema": "mergesearch.recipe/v1"})
    assert v1.schema == "mergesearch.recipe/v1" and v1.dare_mask == "torch_cpu"
    # a v1 file round-trips as v1 (same id as before v2 existed: its weights are the same)
    assert v1.to_dict()["schema"] == "mergesearch.recipe/v1" and Recipe.from_json(v1.to_json()) == v1
    assert v1.replace(seed=4).schema == "mergesearch.recipe/v1"
    assert v1.id != v2.id  # the two merge differently, so they are different recipes
    for bad in ("mergesearch.recipe/v3", ["mergesearch.recipe/v2"]):
        with pytest.raises(RecipeError, match="recipe field 'schema'.*reads 'mergesearch.recipe/v2' and 'mergesearch.recipe/v1'"):
            Recipe.from_dict({**d, "schema": bad})


def test_replace_switching_method_drops_old_fields():
    r = Recipe.from_dict({**BASE, "method": "linear", "weight": 0.2})
    t = r.replace(method="ties", density=0.4)
    assert t.method == "ties" and t.weight is None and t.density == 0.4


def test_load_recipe_reads_a_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"vlm": "v", "llm": "l", "weight": 0.1}))
    assert load_recipe(p).weight == 0.1
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.json")
    p.write_text("{not json")
    with pytest.raises(RecipeError, match="r.json.*not valid JSON"):
        load_recipe(p)


@pytest.mark.parametrize(
    "d, field",
    [
        ({"vlm": "v", "llm": "l", "weight": 0.1, "wieght": 1}, "'wieght' is unknown"),
        ({"vlm": "v", "llm": "l", "method": "slerp", "weight": 0.1}, "'method'.*allowed: linear"),
        ({"vlm": "v", "llm": "l", "weight": 1.5}, "'weight' must be a number in \\[0, 1\\]"),
        ({"vlm": "v", "llm": "l"}, "'weight'.*required"),
        ({"llm": "l", "weight": 0.1}, "'vlm' is required"),
        ({"vlm": "v", "llm": "l", "method": "ties"}, "'base' is required"),
        ({**BASE, "method": "ties", "density": 0}, "'density' must be a number in \\(0, 1\\]"),
        ({**BASE, "method": "ties", "density": 1.2}, "'density'"),
        ({**BASE, "method": "ties", "rescale": "l2"}, "'rescale'.*allowed: l1, inverse_density, none"),
        (
            {**BASE, "method": "task_arithmetic", "density": 0.5},
            "'density' does not apply to method 'task_arithmetic'",
        ),
        ({**BASE, "method": "ties", "weight": 0.5}, "'weight' does not apply"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "vlm_weight": 1}, "'vlm_weight' does not apply"),
        ({**BASE, "method": "ties", "llm_weight": math.inf}, "'llm_weight'"),
        ({**BASE, "method": "ties", "lambda": 0}, "'lambda'"),
        ({**BASE, "method": "ties", "normalize": "yes"}, "'normalize' must be true or false"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "components": ["vision"]}, "'components' has 'vision'"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "components": []}, "'components' must be a non-empty"),
        (
            {"vlm": "v", "llm": "l", "weight": 0.1, "component_weights": {"embed": 1}},
            "component_weights.embed",
        ),
        ({"vlm": "v", "llm": "l", "weight": 0.6, "component_weights": {"mlp": 2.0}}, "LLM weight 1.2 > 1"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "schedule": {"shape": "cosine"}}, "'schedule.shape'"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "schedule": {"shape": "step"}}, "'schedule.start'"),
        (
            {"vlm": "v", "llm": "l", "weight": 0.1, "schedule": {"shape": "explicit", "values": [0.5, 2]}},
            "schedule.values\\[1\\]",
        ),
        (
            {"vlm": "v", "llm": "l", "weight": 0.1, "schedule": {"shape": "linear", "start": 3}},
            "'schedule.start' applies only",
        ),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "method": "layer_swap"}, "'schedule' must be.*step"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "seed": -1}, "'seed'"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "seed": 1.5}, "'seed'"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "dtype": "int8"}, "'dtype'.*float32, bfloat16, float16"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "compat": "peft"}, "'compat'"),
        ({"vlm": "v", "llm": "l", "weight": 0.1, "schema": "mergesearch.recipe/v0"}, "'schema'"),
        ({**BASE, "method": "task_arithmetic", "compat": "vlm_merging"}, "no task_arithmetic"),
        (
            {**BASE, "method": "ties", "compat": "vlm_merging", "rescale": "l1"},
            "'rescale' is fixed by compat",
        ),
        (
            {"vlm": "v", "llm": "l", "weight": 0.1, "compat": "vlm_merging", "components": ["attention"]},
            "leave 'components'",
        ),
    ],
)
def test_bad_fields_name_the_field(d, field):
    with pytest.raises(RecipeError, match=field):
        Recipe.from_dict(d)


def test_not_an_object():
    with pytest.raises(RecipeError, match="JSON object"):
        Recipe.from_json("[1, 2]")


@pytest.mark.parametrize("n", [1, 2, 5, 28])
def test_schedule_shapes(n):
    assert layer_factors(Schedule("constant"), n) == [1.0] * n
    lin = layer_factors(Schedule("linear"), n)
    log = layer_factors(Schedule("loglinear"), n)
    for i in range(n):
        assert lin[i] == pytest.approx(1.0 if n == 1 else i / (n - 1), abs=1e-15)
        assert log[i] == pytest.approx(1.0 if n == 1 else math.log(1 + i) / math.log(n), abs=1e-15)
    assert lin[-1] == 1.0 and log[-1] == pytest.approx(1.0)
    step = layer_factors(Schedule("step", start=min(3, n)), n)
    assert step == [0.0 if i < min(3, n) else 1.0 for i in range(n)]
    vals = tuple(round(i / (2 * n), 3) for i in range(n))
    assert layer_factors(Schedule("explicit", values=vals), n) == list(vals)


def test_schedule_errors_need_the_layer_count():
    with pytest.raises(RecipeError, match="has 2 values but the model has 3 layers"):
        layer_factors(Schedule("explicit", values=(0.1, 0.2)), 3)
    with pytest.raises(RecipeError, match="'schedule.start' is 9 but the model has only 4 layers"):
        layer_factors(Schedule("step", start=9), 4)
