"""merge_core.sources: the host tier's views of the mapped shards hold the stored tensors' exact bytes
(checked against safetensors' own reader), never write the file, and fail like the reads do."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_core.errors import ModelFilesError
from merge_core.io import ModelFiles
from merge_core.sources import Job, SourceReader, Stager, stream_jobs


def _checkpoint(root: Path, tensors: dict[str, torch.Tensor]) -> ModelFiles:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}", encoding="utf-8")
    save_file(tensors, str(root / "model.safetensors"))
    return ModelFiles(root)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "a.weight": torch.randn(37, 11, generator=g).to(torch.bfloat16),
        "b.weight": torch.randn(5, 7, 3, generator=g),
        "c.bias": torch.randn(13, generator=g).to(torch.float16),
        "d.ids": torch.arange(9, dtype=torch.int64),
        "e.empty": torch.empty(0, 4),
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)


def test_views_equal_safetensors_and_reads_bit_for_bit(tmp_path):
    files = _checkpoint(tmp_path / "m", _tensors())
    reference = load_file(str(tmp_path / "m" / "model.safetensors"))
    reader = SourceReader(files)
    for name, ref in reference.items():
        view, read = reader.view(name), reader.read(name)
        for t in (view, read):
            assert t.dtype == ref.dtype and t.shape == ref.shape, name
            assert torch.equal(_bits(t), _bits(ref)), name
    reader.close()
    assert not reader._maps and not reader._fds


def test_writing_a_view_leaves_the_file_alone(tmp_path):
    files = _checkpoint(tmp_path / "m", _tensors())
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    reader = SourceReader(files)
    reader.view("b.weight").fill_(7.0)  # a private mapping: the written pages are the process's own copy
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    other = SourceReader(ModelFiles(tmp_path / "m"))
    assert torch.equal(other.view("b.weight"), load_file(str(tmp_path / "m" / "model.safetensors"))["b.weight"])


def test_a_file_cut_after_loading_is_a_model_files_error(tmp_path):
    files = _checkpoint(tmp_path / "m", _tensors())
    path = tmp_path / "m" / "model.safetensors"
    last = max(files.specs.values(), key=lambda s: s.offset + s.nbytes)
    with open(path, "r+b") as f:
        f.truncate(last.offset + last.nbytes - 1)
    with pytest.raises(ModelFilesError, match="ended inside tensor"):
        SourceReader(files).view(last.name)
    with pytest.raises(ModelFilesError, match="ended inside tensor"):
        SourceReader(files).read(last.name)


def test_a_misaligned_tensor_is_read_instead(tmp_path):
    """A header whose length puts a bf16 tensor at an odd offset (valid safetensors; no writer makes it)."""
    data = torch.arange(6, dtype=torch.bfloat16) * 0.5
    raw = data.view(torch.uint8).numpy().tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(raw)]}}).encode()
    header += b" " * ((1 - (8 + len(header))) % 2)  # 8 + len(header) odd
    root = tmp_path / "odd"
    root.mkdir()
    (root / "config.json").write_text("{}", encoding="utf-8")
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + raw)
    files = ModelFiles(root)
    assert files.specs["x"].offset % 2 == 1
    reader = SourceReader(files)
    got = reader.view("x")
    assert torch.equal(got, data.reshape(2, 3)) and not reader._maps  # read, not mapped


@pytest.mark.parametrize("copy", [False, True])
def test_stream_jobs_yields_every_job_in_order_cast_to_the_dtype(tmp_path, copy):
    tensors = _tensors()
    files = _checkpoint(tmp_path / "m", tensors)
    reader = SourceReader(files)
    names = list(tensors)
    jobs = [Job(i, ((reader, n), None)) for i, n in enumerate(names)]
    stager = Stager(torch.device("cpu"), copy=copy)
    got = [(job.key, ts) for job, ts in stream_jobs(jobs, stager, torch.float32)]
    assert [k for k, _ in got] == list(range(len(names)))
    for (_, (t, none)), name in zip(got, names, strict=True):
        ref = tensors[name]
        want = ref.to(torch.float32) if ref.dtype.is_floating_point else ref  # integer tensors keep theirs
        assert none is None and t is not None and t.dtype == want.dtype and torch.equal(t, want), name
