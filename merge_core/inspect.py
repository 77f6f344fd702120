"""``inspect_models`` / ``mergesearch inspect``: the VLM <-> LLM tensor map at a glance, with any problem.

Reads only config files and safetensors headers (no weights), so it is instant even for 7B models; for
hub ids they are read from the hub (:mod:`merge_core.hub`) and nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from merge_core.architectures import CLASSES
from merge_core.errors import MergesearchError
from merge_core.hub import open_headers
from merge_core.tensor_map import build_tensor_map


@dataclass
class InspectReport:
    """What ``inspect`` found: family, per-class tensor counts, layers, vocab sizes, tied flags, problems."""

    vlm: str
    llm: str
    base: str | None
    family: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    num_layers: int = 0
    vocab: dict[str, int] = field(default_factory=dict)
    tied: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when a merge may start."""
        return not self.problems

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"VLM  {self.vlm}", f"LLM  {self.llm}"]
        if self.base:
            lines.append(f"base {self.base}")
        if self.family:
            lines.append(f"family {self.family}: {self.num_layers} decoder layers")
            lines.append("tensors: " + ", ".join(f"{c} {self.counts.get(c, 0)}" for c in CLASSES))
            vocab = ", ".join(f"{k} {v}" for k, v in self.vocab.items())
            lines.append(f"vocab rows: {vocab}" + ("" if len(set(self.vocab.values())) <= 1 else
                         f" (only the {min(self.vocab.values())} shared rows are ever merged)"))  # fmt: skip
            tied = [k for k, v in self.tied.items() if v]
            if tied:
                lines.append(f"tied embeddings (no lm_head tensor): {', '.join(tied)}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("OK: every language-model tensor has a partner of the same shape")
        return "\n".join(lines)


def inspect_models(vlm: str, llm: str, base: str | None = None) -> InspectReport:
    """Map and preflight a trio; problems (including unreadable files) land in ``report.problems``."""
    report = InspectReport(vlm=str(vlm), llm=str(llm), base=None if base is None else str(base))
    try:
        fv = open_headers(vlm, "vlm")  # a hub id: its config and headers only, nothing downloaded
        fl = open_headers(llm, "llm")
        fb = open_headers(base, "base") if base is not None else None
        tmap = build_tensor_map(fv, fl, fb)
    except MergesearchError as err:
        report.problems.append(str(err))
        return report
    report.family = tmap.arch.family
    report.counts = tmap.counts()
    report.num_layers = tmap.num_layers
    report.vocab = dict(tmap.vocab)
    report.tied = dict(tmap.tied)
    report.problems = list(tmap.problems)
    return report
