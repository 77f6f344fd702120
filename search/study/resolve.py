"""Turn a study's ``[models]`` / ``[objectives]`` into concrete paths, and check them before any long work.

The toy source builds (or takes from its cache) :func:`objectives.toy.build_toy_world`. Everything else
is checked here so a bad study fails in seconds, before Ray starts: model folders exist and pair up
(``merge_core.inspect_models``), dataset TSVs exist, and with ``proxy_size`` the proxy subsets are made.
Hub ids are paired from their configs and safetensors headers, then each is downloaded once here
(:func:`merge_core.hub.localize`): workers and recipes get the local snapshot folders.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from merge_core.errors import MergesearchError
from search.study.spec import StudySpec

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelPathError(MergesearchError):
    """A model or dataset named by the study file cannot be found."""


@dataclass(frozen=True)
class Resolved:
    """The concrete models and proxy datasets of a study."""

    vlm: str
    llm: str
    base: str | None
    datasets: tuple[str, ...]
    data_dir: str | None

    def models(self) -> dict[str, str | None]:
        return {"vlm": self.vlm, "llm": self.llm, "base": self.base}


def _check_model(field_name: str, value: str, src: str) -> str:
    p = Path(value).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelPathError(
                f"{src}: `models.{field_name}` = {value!r} is a file; give the checkpoint folder"
            )
        return str(p.resolve())
    if _HUB_ID.match(value) and not value.startswith((".", "/", "~")):
        return value  # a hub id: paired from its headers, then downloaded once by resolve()
    raise ModelPathError(
        f"{src}: `models.{field_name}` = {value!r} does not exist; give a checkpoint folder or a hub id (org/name)"
    )


def dataset_path(name: str, data_dir: str | None) -> Path:
    """Where ``objectives.datasets.load_dataset`` will look for ``name``."""
    if name.endswith(".tsv") or os.sep in name:
        return Path(name).expanduser()
    root = (
        Path(data_dir).expanduser() if data_dir else Path(os.environ.get("LMUData", "~/LMUData")).expanduser()
    )
    return root / f"{name}.tsv"


def resolve(spec: StudySpec, *, build_toy: bool = True, console=None) -> Resolved:
    """Concrete models and datasets of ``spec``; raises a one-line error naming what is missing."""
    src = str(spec.path or "<study>")
    obj = spec.objectives
    if spec.models.toy is not None:
        if not build_toy:
            raise ModelPathError(f"{src}: the toy world is needed; run `mergesearch toy build` first")
        from objectives.toy import build_toy_world

        if console is not None:
            console.print(
                f"toy world: seed {spec.models.toy.seed}, size {spec.models.toy.size} (built once, cached)"
            )
        world = build_toy_world(spec.models.toy.seed, size=spec.models.toy.size, progress=console is not None)
        datasets = obj.datasets or tuple(world.proxy_datasets)
        res = Resolved(str(world.vlm), str(world.llm), str(world.base), tuple(datasets), str(world.data_dir))
    else:
        assert spec.models.vlm and spec.models.llm
        res = Resolved(
            _check_model("vlm", spec.models.vlm, src),
            _check_model("llm", spec.models.llm, src),
            _check_model("base", spec.models.base, src) if spec.models.base else None,
            obj.datasets,
            obj.data_dir,
        )
    for name in res.datasets:
        p = dataset_path(name, res.data_dir)
        if not p.is_file():
            raise ModelPathError(
                f"{src}: `objectives.datasets` entry {name!r}: {p} not found; put the TSV there or set objectives.data_dir"
            )
    if spec.models.toy is None:
        res = _localize(res, src)
    if obj.proxy_size:
        from objectives.datasets import load_dataset
        from objectives.proxy import make_proxy

        out = spec.output_dir / "proxy"
        names = []
        for name in res.datasets:
            made = make_proxy(load_dataset(name, root=res.data_dir), obj.proxy_size, obj.proxy_seed, out)
            names.append(str(made))
        res = Resolved(res.vlm, res.llm, res.base, tuple(names), str(out))
    return res


def _localize(res: Resolved, src: str) -> Resolved:
    """Hub ids -> local snapshots, once, in the driver: pairing checked from headers before any download."""
    from merge_core.hub import localize

    try:
        local = localize(res.models())
    except MergesearchError as err:
        raise ModelPathError(f"{src}: {err}") from None
    return Resolved(local["vlm"] or res.vlm, local["llm"] or res.llm, local["base"], res.datasets, res.data_dir)


def preflight(res: Resolved) -> None:
    """Check that the local models pair up tensor by tensor (header reads only, no weights loaded)."""
    if not all(Path(p).is_dir() for p in (res.vlm, res.llm) if p):
        return  # not resolved through resolve(): nothing local to read
    from merge_core import inspect_models

    report = inspect_models(res.vlm, res.llm, res.base)
    if report.problems:
        raise ModelPathError(
            f"models do not pair up: {report.problems[0]} ({len(report.problems)} problem(s)); "
            f"see `mergesearch inspect {res.vlm} {res.llm}`"
        )
