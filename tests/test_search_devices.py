"""Devices, worker counts and memory tiers of a study: checked before anything loads (exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

import merge_core.devices as devices
import merge_core.memory_plan as mp
import search.study.resolve
from merge_core.memory_plan import MemoryPlanError
from search.cli.main import main as cli_main
from search.engine.coordinator import WorkerStartError
from search.engine.worker_pool import placement, worker_config
from search.run import plan_sources
from search.study.resolve import Resolved
from search.study.spec import StudySpecError, merge_components, spec_from_dict
from tests.tiny.models import cached_trio


def _study(models: dict | None = None, **over) -> dict:
    d = {
        "name": "t",
        "n_trials": 3,
        "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base", **(models or {})},
        "objectives": {"datasets": ["A"]},
    }
    d.update(over)
    return d


def test_sources_and_device_fields():
    assert spec_from_dict(_study()).models.sources == "auto"
    assert spec_from_dict(_study({"sources": "host"})).models.sources == "host"
    with pytest.raises(StudySpecError, match="`models.sources` is 'gpu'; allowed: device, host, auto"):
        spec_from_dict(_study({"sources": "gpu"}))
    with pytest.raises(StudySpecError, match="`models.device` is 'cuda:1'; allowed: auto, cpu, cuda"):
        spec_from_dict(_study({"device": "cuda:1"}))


def test_merge_components_cover_the_space_and_the_baselines():
    spec = spec_from_dict(_study(space={"components": [["attention"], ["mlp", "norm"]]}))
    assert merge_components(spec) == ("attention", "mlp", "norm")
    spec = spec_from_dict(
        _study(
            space={"component_flags": ["attention", "lm_head"]},
            baselines=[{"name": "b", "method": "linear", "weight": 0.1, "components": ["embed"]}],
        )
    )
    assert merge_components(spec) == ("attention", "embed", "lm_head")
    spec = spec_from_dict(_study(baselines=[{"name": "b", "method": "linear", "weight": 0.1}]))
    assert merge_components(spec) == ("attention", "mlp", "norm")  # the recipe default


@pytest.fixture
def study_file(tmp_path: Path):
    def write(device: str, workers: int) -> Path:
        p = tmp_path / "s.toml"
        p.write_text(
            f'name = "t"\nn_trials = 3\nworkers = {workers}\nstorage = "sqlite:///{tmp_path}/s.db"\n'
            f'[models]\nvlm = "org/v"\nllm = "org/l"\ndevice = "{device}"\n[objectives]\ndatasets = ["A"]\n'
        )
        return p

    return write


@pytest.fixture
def nothing_resolved(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("resolve ran: models or data would have been touched")

    monkeypatch.setattr(search.study.resolve, "resolve", fail)


def test_cli_cuda_on_a_cpu_host_exits_2_before_anything(study_file, nothing_resolved, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["run", str(study_file("cuda", 1)), "--no-live"]) == 2
    err = capsys.readouterr().err
    assert "models.device 'cuda' but torch sees no cuda device" in err and err.count("\n") == 1


def test_cli_more_workers_than_gpus_exits_2_before_anything(
    study_file, nothing_resolved, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli_main(["run", str(study_file("auto", 2)), "--no-live"]) == 2
    assert "2 workers asked on 'cuda' but this host has 1 cuda device" in capsys.readouterr().err
    assert cli_main(["run", str(study_file("cuda", 2)), "--workers", "3", "--no-live"]) == 2
    assert "3 workers asked" in capsys.readouterr().err


def test_cli_sources_flag(study_file, monkeypatch):
    from search.cli.main import build_parser
    from search.cli.study import _load

    args = build_parser().parse_args(["run", str(study_file("cpu", 1)), "--sources", "host"])
    assert _load(args).models.sources == "host"
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", str(study_file("cpu", 1)), "--sources", "gpu"])
    assert exc.value.code == 2


def test_ray_cluster_with_fewer_gpus_than_workers(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    spec = spec_from_dict(_study({"device": "cuda"}))
    with pytest.raises(WorkerStartError, match="3 workers asked on 'cuda' but the Ray cluster has 2 GPU"):
        placement(spec, 3)
    assert placement(spec, 2) == ("cuda", {"num_gpus": 1, "num_cpus": 1}, 2)


def test_workers_get_the_sources_tier_and_the_components(monkeypatch):
    spec = spec_from_dict(_study({"sources": "host"}, space={"components": [["attention"], ["embed"]]}))
    cfg = worker_config(spec, Resolved("/v", "/l", None, ("A",), None), "cpu", {})
    assert cfg.sources == "host" and cfg.components == ("attention", "embed")


def test_local_plan_fixes_the_tier_before_workers_start(tmp_path_factory, monkeypatch):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    resolved = Resolved(str(trio.vlm), str(trio.llm), str(trio.base), ("A",), None)
    console = Console(record=True, width=400)
    spec = spec_from_dict(_study({"device": "cpu"}, workers=2))
    planned = plan_sources(spec, resolved, console)
    assert (
        planned.models.sources == "device"
        and "each of 2 worker(s): memory plan on cpu" in console.export_text()
    )
    probe = mp.plan_for_checkpoints(
        str(trio.vlm), str(trio.llm), str(trio.base), device=torch.device("cpu"), dtype=None,
        components=merge_components(spec), sources="device", workers=1,
    )  # fmt: skip
    need_host = probe.on_device("host") + probe.reserve
    assert need_host < probe.on_device("device") + probe.reserve
    monkeypatch.setattr(devices, "free_memory", lambda device: 2 * need_host)  # shared by the 2 workers
    assert plan_sources(spec, resolved, console).models.sources == "host"
    monkeypatch.setattr(devices, "free_memory", lambda device: 2 * need_host - 2)
    with pytest.raises(MemoryPlanError, match="do not fit cpu"):
        plan_sources(spec, resolved, console)
    hub = Resolved("org/v", "org/l", None, ("A",), None)  # hub ids: each worker plans once it has the files
    assert plan_sources(spec, hub, console) is spec
