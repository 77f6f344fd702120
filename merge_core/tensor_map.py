"""Classify every VLM tensor, pair the language-model ones with the LLM (and base), and preflight.

Preflight rules (checked before any merge work; all problems are collected and reported together):
every VLM tensor is classified by the architecture table; every LM tensor of the VLM has a partner of the
same shape in the LLM and in the base (embedding / lm_head: same width, rows may differ — only the rows
both vocabularies share are ever merged); the LLM (and base) hold no LM tensor the VLM lacks (a different
layer count means different models).  Tied embeddings: a checkpoint without ``lm_head.weight`` uses its
embedding matrix as the head, so a missing head partner falls back to the partner's embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from merge_core.architectures import (
    CANON_EMBED,
    LLM_HEAD,
    Architecture,
    Classified,
    architecture_for,
    classify_llm,
    classify_vlm,
)
from merge_core.errors import ArchitectureError
from merge_core.io import ModelFiles, TensorSpec

MAX_LISTED = 8


@dataclass(frozen=True)
class VlmTensor:
    """One VLM tensor: its stored spec, its class and (LM tensors) the partner names in the LLM / base."""

    spec: TensorSpec
    where: Classified
    llm_name: str | None = None
    base_name: str | None = None
    rows: int | None = None  # embed / lm_head: rows shared by all sources

    @property
    def name(self) -> str:
        """The VLM's stored name."""
        return self.spec.name


@dataclass
class TensorMap:
    """The paired view of a (VLM, LLM, base) trio; ``problems`` is empty when a merge may start."""

    arch: Architecture
    vlm: ModelFiles
    llm: ModelFiles
    base: ModelFiles | None
    tensors: list[VlmTensor] = field(default_factory=list)
    num_layers: int = 0
    vocab: dict[str, int] = field(default_factory=dict)
    tied: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def raise_if_problems(self) -> None:
        """ArchitectureError listing the problems (one line), if any."""
        if self.problems:
            shown = "; ".join(self.problems[:MAX_LISTED])
            more = f"; and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
            raise ArchitectureError(
                f"cannot pair {self.vlm.root} with {self.llm.root}"
                + (f" and {self.base.root}" if self.base else "")
                + f": {shown}{more} (run `mergesearch inspect` for the full map)"
            )

    def counts(self) -> dict[str, int]:
        """Number of VLM tensors per class."""
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.where.cls] = out.get(t.where.cls, 0) + 1
        return out


def _partner_names(files: ModelFiles) -> dict[str, str]:
    """canonical -> stored name for the LM tensors of a text-only LLM; unknown names are returned as ''."""
    out: dict[str, str] = {}
    for name in files.specs:
        c = classify_llm(name)
        out[c.canonical if c else "?" + name] = name
    return out


def build_tensor_map(vlm: ModelFiles, llm: ModelFiles, base: ModelFiles | None = None) -> TensorMap:
    """Classify and pair; never raises for pairing problems (see ``problems``) except an unknown family."""
    arch = architecture_for(vlm.model_type, str(vlm.root))
    tmap = TensorMap(arch=arch, vlm=vlm, llm=llm, base=base)
    problems = tmap.problems
    sources: list[tuple[str, ModelFiles]] = [("LLM", llm)] + ([("base", base)] if base is not None else [])
    for label, files in sources:
        if files.model_type not in arch.llm_model_types:
            problems.append(
                f"{label} model_type {files.model_type!r} does not pair with {arch.family} "
                f"(expected {' or '.join(arch.llm_model_types)})"
            )
    partners = {label: _partner_names(files) for label, files in sources}
    for label, names in partners.items():
        for canon, name in names.items():
            if canon.startswith("?"):
                problems.append(f"{label} tensor {name!r} is not a language-model tensor this tool knows")

    layers: set[int] = set()
    seen_canon: set[str] = set()
    for name, spec in vlm.specs.items():
        where = classify_vlm(arch, name)
        if where is None:
            problems.append(f"VLM tensor {name!r} is not classified by the {arch.family} table")
            continue
        if where.canonical is None:  # vision / projector: copied as they are
            tmap.tensors.append(VlmTensor(spec, where))
            continue
        seen_canon.add(where.canonical)
        if where.layer is not None:
            layers.add(where.layer)
        found: dict[str, str | None] = {}
        rows: int | None = None
        for label, files in sources:
            pname = partners[label].get(where.canonical)
            if pname is None and where.canonical == LLM_HEAD:
                pname = partners[label].get(CANON_EMBED)  # the partner ties its head to its embeddings
            if pname is None:
                problems.append(f"VLM tensor {name!r} has no partner {where.canonical!r} in the {label}")
                found[label] = None
                continue
            pshape = files.specs[pname].shape
            if where.cls in ("embed", "lm_head"):
                if len(pshape) != 2 or len(spec.shape) != 2 or pshape[1] != spec.shape[1]:
                    problems.append(
                        f"shape mismatch: VLM {name} {list(spec.shape)} vs {label} {pname} {list(pshape)}"
                    )
                rows = min(rows or spec.shape[0], pshape[0], spec.shape[0])
            elif pshape != spec.shape:
                problems.append(
                    f"shape mismatch: VLM {name} {list(spec.shape)} vs {label} {pname} {list(pshape)}"
                )
            found[label] = pname
        tmap.tensors.append(VlmTensor(spec, where, found.get("LLM"), found.get("base"), rows))

    for label, names in partners.items():
        for canon, name in names.items():
            if canon.startswith("?") or canon in seen_canon:
                continue
            if canon == CANON_EMBED and LLM_HEAD in seen_canon:
                continue  # its embeddings also serve as the (tied) head partner
            if canon == LLM_HEAD and CANON_EMBED in seen_canon:
                continue  # the VLM ties its head; the partner's separate head is simply not needed
            problems.append(f"{label} tensor {name!r} has no counterpart in the VLM")

    tmap.num_layers = (max(layers) + 1) if layers else 0
    if layers and layers != set(range(tmap.num_layers)):
        problems.append(f"VLM decoder layers are not contiguous: {sorted(layers)}")
    if not layers:
        problems.append("the VLM has no decoder layers the table recognises")
    for label, files in [("VLM", vlm), *sources]:
        emb = next(
            (
                s
                for n, s in files.specs.items()
                if n.endswith("embed_tokens.weight") and _is_lm(arch, n, label)
            ),
            None,
        )
        tmap.vocab[label] = emb.shape[0] if emb else 0
        heads = [n for n in files.specs if (n in arch.lm_head_names if label == "VLM" else n == LLM_HEAD)]
        tmap.tied[label] = not heads
    return tmap


def _is_lm(arch: Architecture, name: str, label: str) -> bool:
    c = classify_vlm(arch, name) if label == "VLM" else classify_llm(name)
    return c is not None and c.cls == "embed"


def preflight(vlm: ModelFiles, llm: ModelFiles, base: ModelFiles | None = None) -> TensorMap:
    """:func:`build_tensor_map`, raising ArchitectureError on any problem."""
    tmap = build_tensor_map(vlm, llm, base)
    tmap.raise_if_problems()
    return tmap
