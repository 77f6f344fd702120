"""The scorer the search calls: a live model on fixed proxy subsets, in chunks, with running accuracy.

``ProxyScorer(model, processor, datasets, chunk_size=50)`` splits every dataset into chunks of at most
``chunk_size`` items and interleaves them (A0, B0, A1, B1, ...). A *step* is one round of that interleaving
(A0 + B0, then A1 + B1, ...): the search scores one step per call, so the running score after every step —
the value a pruner sees — already covers every dataset in proportion, and is an unbiased estimate of the
final score from the first step on (a step of one dataset only would rank recipes by that dataset alone).
Within a dataset, items are ordered by ``sha256("<name>:<index>")`` — a fixed shuffle, so that an early
chunk is not one category. The order depends only on the datasets and ``chunk_size``. The processor's
outputs are cached per item across calls (see :class:`objectives.generation.Generator`): after
``ResidentMerger.apply(recipe)`` changes the weights in place, the same scorer scores the next recipe
without preprocessing again.

Accuracy of a dataset = correct / scored items; ``mean_accuracy`` = the mean over datasets with scored items.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from merge_core.errors import MergesearchError

from .answers import judge
from .datasets import Dataset, Item

if TYPE_CHECKING:  # torch loads only when a model is scored, not for re-scoring predictions files
    import torch

    from .engines import Engine
    from .generation import GenerationConfig


class ScorerError(MergesearchError):
    """Datasets or chunks that cannot be scored as asked."""


@dataclass(frozen=True)
class Chunk:
    """Positions ``indices`` (item ``index`` strings) of one dataset, scored in one call."""

    dataset: str
    indices: tuple[str, ...]
    number: int = 0


@dataclass
class ItemRecord:
    """One scored item: the raw response, the extracted answer, correctness and the rule that decided."""

    dataset: str
    index: str
    category: str
    response: str
    extracted: str | None
    correct: bool
    why: str
    answer: str = ""
    skills: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the record."""
        return asdict(self)


@dataclass
class DatasetScore:
    """Accuracy (0..1) over ``n`` scored items, per category ``{name: {"n", "correct", "accuracy"}}`` and,
    for MathVista, per skill (an item counts once for each of its skills, as in VLMEvalKit's Task&Skill table)."""

    accuracy: float
    n: int
    correct: int
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    per_skill: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ScoreResult:
    """Per-dataset scores, their mean, and the per-item records they were computed from."""

    per_dataset: dict[str, DatasetScore]
    mean_accuracy: float
    records: list[ItemRecord]

    @classmethod
    def from_records(
        cls, records: Sequence[ItemRecord], datasets: Sequence[Dataset] | Sequence[str] = ()
    ) -> ScoreResult:
        """Aggregate records: accuracy = correct / n per dataset and per category; mean over datasets with n > 0.

        ``datasets`` (or their names) list datasets to report even before any of their items is scored.
        """
        names = [d if isinstance(d, str) else d.name for d in datasets]
        for r in records:
            if r.dataset not in names:
                names.append(r.dataset)
        tally: dict[str, list[int]] = {name: [0, 0] for name in names}
        cats: dict[str, dict[str, list[int]]] = {name: defaultdict(lambda: [0, 0]) for name in names}
        skills: dict[str, dict[str, list[int]]] = {name: defaultdict(lambda: [0, 0]) for name in names}
        for r in records:
            tally[r.dataset][0] += 1
            tally[r.dataset][1] += int(r.correct)
            for table, keys in ((cats, [r.category]), (skills, r.skills)):
                for key in keys:
                    table[r.dataset][key][0] += 1
                    table[r.dataset][key][1] += int(r.correct)
        per_dataset = {}
        for name in names:
            n, correct = tally[name]
            per_dataset[name] = DatasetScore(
                correct / n if n else 0.0, n, correct, _rates(cats[name]), _rates(skills[name])
            )
        scored = [s.accuracy for s in per_dataset.values() if s.n]
        mean = sum(scored) / len(scored) if scored else 0.0
        return cls(per_dataset, mean, list(records))

    @property
    def scores(self) -> dict[str, float]:
        """``{dataset: accuracy}`` (what the search stores as the trial's ``scores``)."""
        return {name: s.accuracy for name, s in self.per_dataset.items()}

    def to_dict(self, *, with_records: bool = True) -> dict[str, Any]:
        """JSON-ready dict: per-dataset scores, mean accuracy and (optionally) the records."""
        out: dict[str, Any] = {
            "mean_accuracy": self.mean_accuracy,
            "per_dataset": {k: asdict(v) for k, v in self.per_dataset.items()},
        }
        if with_records:
            out["records"] = [r.to_dict() for r in self.records]
        return out


def _rates(table: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    return {k: {"n": n, "correct": c, "accuracy": c / n} for k, (n, c) in sorted(table.items())}


def score_responses(dataset: Dataset, responses: dict[str, str]) -> list[ItemRecord]:
    """Grade responses keyed by item index (no model): one :class:`ItemRecord` per response, in item order."""
    records = []
    for item in dataset.items:
        if item.index in responses:
            records.append(record_for(dataset.name, item, responses[item.index]))
    return records


def record_for(dataset_name: str, item: Item, response: str) -> ItemRecord:
    """Judge one response and wrap the verdict in an :class:`ItemRecord`."""
    verdict = judge(response, item)
    return ItemRecord(
        dataset=dataset_name,
        index=item.index,
        category=item.category,
        response=response,
        extracted=verdict.extracted,
        correct=verdict.correct,
        why=verdict.why,
        answer=item.answer,
        skills=list(item.skills),
    )


def failure_record(dataset_name: str, item: Item, why: str) -> ItemRecord:
    """A scored failure: an item that could not be generated (e.g. out of memory alone) counts as wrong,
    with the reason in ``why``; it never fails the trial."""
    return ItemRecord(
        dataset=dataset_name,
        index=item.index,
        category=item.category,
        response="",
        extracted=None,
        correct=False,
        why=why,
        answer=item.answer,
        skills=list(item.skills),
    )


def plan_steps(indices: dict[str, Sequence[str]], chunk_size: int) -> list[tuple[Chunk, ...]]:
    """The scoring plan of datasets given as ``{name: item indices}`` (see the module docstring): each
    dataset's items in ``sha256("<name>:<index>")`` order, cut into chunks of ``chunk_size``; step r holds
    chunk r of every dataset that has one; ``Chunk.number`` counts chunks across steps."""
    per_dataset: list[list[tuple[str, ...]]] = []
    names = list(indices)
    for name in names:
        idx = sorted(indices[name], key=lambda i: hashlib.sha256(f"{name}:{i}".encode()).digest())
        per_dataset.append([tuple(idx[i : i + chunk_size]) for i in range(0, len(idx), chunk_size)])
    steps: list[tuple[Chunk, ...]] = []
    number = 0
    for round_no in range(max((len(c) for c in per_dataset), default=0)):
        step = []
        for name, chunks in zip(names, per_dataset, strict=True):
            if round_no < len(chunks):
                step.append(Chunk(name, chunks[round_no], number))
                number += 1
        steps.append(tuple(step))
    return steps


class ProxyScorer:
    """Scores a live model on proxy datasets chunk by chunk (see module docstring).

    ``prepare=True`` runs the processor over every item at construction, so an undecodable image or an
    item the processor rejects fails before any generation. ``engine`` (``objectives.engines``) generates
    the responses instead of the HF generator on ``model`` (which may then be None).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        datasets: Sequence[Dataset],
        *,
        chunk_size: int = 50,
        generation: GenerationConfig | None = None,
        prepare: bool = True,
        engine: Engine | None = None,
    ):
        if chunk_size < 1:
            raise ScorerError(f"chunk_size must be >= 1, got {chunk_size}")
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise ScorerError(f"dataset names must be unique, got {names}")
        if not datasets:
            raise ScorerError("no datasets to score")
        from .engines.hf import HFEngine
        from .generation import GenerationConfig, Generator, model_device_dtype

        self.model = model
        self.datasets = {d.name: d for d in datasets}
        self.chunk_size = chunk_size
        if engine is None:
            generator = Generator(
                processor, generation or GenerationConfig(), cache_dtype=model_device_dtype(model)[1]
            )
            engine = HFEngine(model, generator)
        self.engine = engine
        self.generator = getattr(engine, "generator", None)
        self._items = {d.name: d.by_index() for d in datasets}
        self._chunks = self._make_chunks()
        if prepare:
            for d in datasets:
                self.engine.prepare(d.items, d.name)

    def _make_chunks(self) -> list[Chunk]:
        self._steps = plan_steps(
            {name: [it.index for it in d.items] for name, d in self.datasets.items()}, self.chunk_size
        )
        return [c for step in self._steps for c in step]

    def chunks(self) -> list[Chunk]:
        """All chunks in scoring order (deterministic)."""
        return list(self._chunks)

    def steps(self) -> list[tuple[Chunk, ...]]:
        """The chunks grouped by round: step r = the r-th chunk of every dataset that has one."""
        return list(self._steps)

    def run_step(self, step: Sequence[Chunk]) -> list[ItemRecord]:
        """The records of every chunk of ``step``, in order."""
        return [r for chunk in step for r in self.run_chunk(chunk)]

    def run_chunk(self, chunk: Chunk) -> list[ItemRecord]:
        """Generate and judge the chunk's items with the model's current weights."""
        items_by_index = self._items.get(chunk.dataset)
        if items_by_index is None:
            raise ScorerError(f"chunk names dataset {chunk.dataset!r}; this scorer has {sorted(self._items)}")
        missing = [i for i in chunk.indices if i not in items_by_index]
        if missing:
            raise ScorerError(
                f"chunk of {chunk.dataset} names indices {missing[:5]} that are not in the dataset"
            )
        items = [items_by_index[i] for i in chunk.indices]
        results = self.engine.generate_results(items, chunk.dataset)
        return [
            record_for(chunk.dataset, item, g.text)
            if g.failure is None
            else failure_record(chunk.dataset, item, g.failure)
            for item, g in zip(items, results, strict=True)
        ]

    def iter_scores(self) -> Iterator[ScoreResult]:
        """Run every chunk in order, yielding the running :class:`ScoreResult` after each."""
        records: list[ItemRecord] = []
        names = list(self.datasets)
        for chunk in self._chunks:
            records.extend(self.run_chunk(chunk))
            yield ScoreResult.from_records(records, names)

    def score(self) -> ScoreResult:
        """Score every chunk; the final :class:`ScoreResult`."""
        result = ScoreResult.from_records([], list(self.datasets))
        for running in self.iter_scores():
            result = running
        return result
