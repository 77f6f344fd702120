"""Hub ids: pair the models from their configs and safetensors headers, then fetch each snapshot once.

A study names its models by hub id.  Checking that they pair up must not wait for ~45 GB of downloads,
and workers must not call the hub per trial (a hiccup would fail the trial).  So the driver, before any
worker starts, calls :func:`localize`, which

1. reads each hub model's ``config.json`` (``hf_hub_download``, a few kB) and its safetensors headers
   (``get_safetensors_metadata``: range reads of each shard's header, no weights) into a
   :class:`RemoteModel`;
2. builds the tensor map from those headers (local folders are read from disk as usual) and raises the
   same one-line :class:`~merge_core.errors.ArchitectureError` as a local preflight — before any download;
3. calls ``snapshot_download`` once per model (:func:`merge_core.io.resolve_model_path`) and returns the
   local snapshot folders, which the workers and every recipe then name: a local folder never calls the hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from merge_core.errors import ModelFilesError
from merge_core.io import HUB_ID, ST_DTYPES, ModelFiles, TensorSpec, resolve_model_path
from merge_core.tensor_map import TensorMap, build_tensor_map

LABELS = ("vlm", "llm", "base")


def is_hub_id(value: str) -> bool:
    """True when ``value`` is not a local path and reads as ``org/name``."""
    return (
        not Path(value).expanduser().exists()
        and bool(HUB_ID.match(value))
        and not value.startswith((".", "/", "~"))
    )


def _hub_failure(label: str, repo_id: str, what: str, err: Exception) -> ModelFilesError:
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return ModelFilesError(
        f"{label} {repo_id!r}: could not read its {what} from the hub ({type(err).__name__}: {reason}); "
        "check the id, the network and HF_TOKEN, or give a local folder"
    )


class RemoteModel(ModelFiles):
    """A hub model seen through its config and safetensors headers only: enough for the tensor map.

    It has the attributes the pairing reads (``config``, ``specs``, ``model_type``, ``root``, ``label``)
    and no weights: :meth:`get` refuses.
    """

    def __init__(self, repo_id: str, label: str = "model") -> None:  # no super().__init__: nothing local
        import huggingface_hub

        self.label = label
        self.root = Path(repo_id)  # shown in messages as the id
        self.repo_id = repo_id
        try:
            cfg_path = huggingface_hub.hf_hub_download(repo_id, "config.json")
            self.config: dict[str, Any] = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
        except Exception as err:  # any hub or parse failure is the same user-facing problem
            raise _hub_failure(label, repo_id, "config.json", err) from None
        try:
            meta = huggingface_hub.get_safetensors_metadata(repo_id)
        except Exception as err:
            raise _hub_failure(label, repo_id, "safetensors headers", err) from None
        self.files: list[Path] = []
        self.specs: dict[str, TensorSpec] = {}
        self.where: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._index_map = None
        for file, fmeta in sorted(meta.files_metadata.items()):
            for name, info in fmeta.tensors.items():
                if info.dtype not in ST_DTYPES:
                    raise ModelFilesError(
                        f"{label} {repo_id!r}: tensor {name!r} in {file} has unsupported dtype {info.dtype}"
                    )
                self.specs[name] = TensorSpec(name, info.dtype, tuple(int(s) for s in info.shape))
                self.where[name] = Path(file)

    def get(self, name: str) -> Any:
        """Refused: a remote model has headers only."""
        raise ModelFilesError(
            f"{self.label} {self.repo_id!r} is not downloaded; call merge_core.hub.fetch first"
        )


def open_headers(path: str, label: str) -> ModelFiles:
    """A local checkpoint (headers read from disk) or, for a hub id, its :class:`RemoteModel`."""
    return RemoteModel(path, label) if is_hub_id(path) else ModelFiles(path, label)


def pair_check(models: dict[str, str | None]) -> TensorMap:
    """The tensor map of ``{"vlm", "llm", "base"}`` from configs and headers alone; one-line error on a problem."""
    opened = {k: open_headers(v, k) for k, v in models.items() if k in LABELS and v}
    try:
        tmap = build_tensor_map(opened["vlm"], opened["llm"], opened.get("base"))
        tmap.raise_if_problems()
        return tmap
    finally:
        for files in opened.values():
            files.close()


def fetch(repo_id: str, label: str) -> Path:
    """The local snapshot folder of ``repo_id`` (one ``snapshot_download``: weights, config, tokenizer)."""
    return resolve_model_path(repo_id, label)


def localize(models: dict[str, str | None]) -> dict[str, str | None]:
    """``models`` with every hub id replaced by its local snapshot, after :func:`pair_check` passed.

    Local folders are returned as given; with no hub id nothing is checked here (the local preflight
    does it).  Each distinct hub id is downloaded once.
    """
    hub = {k: v for k, v in models.items() if v and is_hub_id(v)}
    if not hub:
        return dict(models)
    pair_check(models)
    local: dict[str, str] = {}
    out = dict(models)
    for label, repo_id in hub.items():
        if repo_id not in local:
            local[repo_id] = str(fetch(repo_id, label))
        out[label] = local[repo_id]
    return out
