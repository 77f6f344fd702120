"""Hub ids (merge_core.hub, search.study.resolve): pairing from configs and headers before any download, one
snapshot download per model in the driver, and trials that never call the hub.

There is no hub here: a stand-in replaces huggingface_hub's three functions and serves repos from tiny
local models — config.json as a file, the safetensors headers parsed here with struct + json (the way the
hub's range reads do), and the snapshot as the local folder — counting every call.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

from merge_core import Recipe, merge_to_disk
from merge_core.errors import ArchitectureError, ModelFilesError
from merge_core.hub import localize, pair_check
from search.study.resolve import ModelPathError, resolve
from search.study.spec import spec_from_dict
from tests.tiny.models import cached_trio


class FakeHub:
    """hf_hub_download / get_safetensors_metadata / snapshot_download over {repo id: local folder}."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.calls: Counter[tuple[str, str]] = Counter()

    def _repo(self, repo_id: str) -> Path:
        if repo_id not in self.repos:
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 Client Error: {repo_id} not found")
        return self.repos[repo_id]

    def hf_hub_download(self, repo_id: str, filename: str, **_: object) -> str:
        self.calls[("config", repo_id)] += 1
        return str(self._repo(repo_id) / filename)

    def get_safetensors_metadata(self, repo_id: str, **_: object) -> SafetensorsRepoMetadata:
        self.calls[("headers", repo_id)] += 1
        files = {}
        weight_map = {}
        for f in sorted(self._repo(repo_id).glob("*.safetensors")):
            raw = f.read_bytes()
            (n,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8 : 8 + n])
            meta = header.pop("__metadata__", {})
            tensors = {
                k: TensorInfo(v["dtype"], v["shape"], tuple(v["data_offsets"])) for k, v in header.items()
            }
            files[f.name] = SafetensorsFileMetadata(metadata=meta, tensors=tensors)
            weight_map.update(dict.fromkeys(tensors, f.name))
        return SafetensorsRepoMetadata(
            metadata=None, sharded=len(files) > 1, weight_map=weight_map, files_metadata=files
        )

    def snapshot_download(self, repo_id: str, **_: object) -> str:
        self.calls[("download", repo_id)] += 1
        return str(self._repo(repo_id))

    def count(self, kind: str) -> int:
        return sum(v for (k, _), v in self.calls.items() if k == kind)


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    qwen = cached_trio(tmp_path_factory, "qwen2_vl")
    llava = cached_trio(tmp_path_factory, "llava_next")
    fake = FakeHub({
        "org/vlm": qwen.vlm, "org/llm": qwen.llm, "org/base": qwen.base, "other/llama": llava.llm,
    })  # fmt: skip
    for name in ("hf_hub_download", "get_safetensors_metadata", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, getattr(fake, name))
    return fake


def study(tmp_path: Path, **models: str) -> dict:
    (tmp_path / "items.tsv").write_text("index\tquestion\tanswer\n")
    return {
        "name": "hub_study", "output_dir": str(tmp_path / "run"), "n_trials": 4,
        "models": models, "objectives": {"datasets": [str(tmp_path / "items.tsv")]},
    }  # fmt: skip


def test_a_mismatched_pair_fails_at_preflight_before_any_download(hub, tmp_path):
    spec = spec_from_dict(study(tmp_path, vlm="org/vlm", llm="other/llama", base="org/base"))
    with pytest.raises(ModelPathError) as err:
        resolve(spec)
    msg = str(err.value)
    assert "\n" not in msg and "other/llama" in msg and "does not pair with qwen2_vl" in msg
    assert hub.count("download") == 0  # nothing fetched
    assert hub.count("headers") == 3 and hub.count("config") == 3  # headers and configs only
    with pytest.raises(ArchitectureError):
        pair_check({"vlm": "org/vlm", "llm": "other/llama"})


def test_an_unknown_repo_is_a_one_line_error(hub):
    with pytest.raises(
        ModelFilesError, match=r"^llm 'org/nope': could not read its config.json from the hub"
    ) as err:
        localize({"vlm": "org/vlm", "llm": "org/nope", "base": None})
    assert "\n" not in str(err.value) and hub.count("download") == 0


def test_a_good_pair_downloads_once_and_trials_never_call_the_hub(hub, tmp_path):
    spec = spec_from_dict(study(tmp_path, vlm="org/vlm", llm="org/llm", base="org/base"))
    res = resolve(spec)
    assert {k: hub.calls[("download", k)] for k in ("org/vlm", "org/llm", "org/base")} == dict.fromkeys(
        ("org/vlm", "org/llm", "org/base"), 1
    )
    assert res.vlm == str(hub.repos["org/vlm"]) and res.base == str(hub.repos["org/base"])
    before = sum(hub.calls.values())
    # what a worker does per trial: a recipe naming the resolved models, merged (sources opened by path)
    for i, d in enumerate(({"method": "ties", "density": 0.5}, {"method": "linear", "weight": 0.3})):
        recipe = Recipe.from_dict({**res.models(), **d})
        merge_to_disk(recipe, tmp_path / f"trial{i}", progress=False)
    assert sum(hub.calls.values()) == before  # no hub call of any kind after the driver's resolve


def test_local_folders_are_left_alone(hub, tmp_path_factory):
    qwen = cached_trio(tmp_path_factory, "qwen2_vl")
    models = {"vlm": str(qwen.vlm), "llm": str(qwen.llm), "base": None}
    assert localize(models) == models and sum(hub.calls.values()) == 0
