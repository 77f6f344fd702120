"""``make test-vlmeval``: VLMEvalKit's own pipeline on a promoted toy checkpoint, on this machine's CPU.

Steps: (1) find or create VLMEvalKit's venv (~7 GB, minutes, once); (2) build or reuse the toy world
(size "ci"); (3) merge the toy world's reference recipe (task arithmetic, VLM 0.5, LLM 1.0) to disk with
merge_core, as promotion does; (4) write a judge-free toy benchmark: ``ToyVista_GQA`` (index, image,
question, answer, category from the toy MathVista set), evaluated as VLMEvalKit's ``ImageVQADataset``,
whose name containing "GQA" selects its exact-match rule (MathVista / MathVision need a GPT judge and
cannot run offline); (5) run VLMEvalKit through :class:`VLMEvalBackend` (CPU adapter, ``--config``
JSON, score-file parsing); (6) recompute the accuracy from VLMEvalKit's own prediction file with an
independent exact match and require it to equal the parsed score. Exit code 0 only if all of it holds.

Options: ``--python PATH`` (an existing VLMEvalKit interpreter), ``--items N`` (default 24),
``--threads N`` (torch threads inside VLMEvalKit, default 2).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

DATASET = "ToyVista_GQA"


def _cache() -> Path:
    from .env import default_env_dir

    return default_env_dir().parent / "selftest"


def write_toy_tsv(source: Path, out: Path, n: int) -> list[dict[str, str]]:
    """First ``n`` rows of a toy MathVista TSV as an ImageVQADataset TSV (category = task); images that
    refer to another row by index are resolved so every kept row is self-contained."""
    csv.field_size_limit(sys.maxsize)
    with source.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    images = {r["index"]: r["image"] for r in rows}
    kept = []
    for r in rows[:n]:
        image = r["image"] if len(r["image"]) > 64 else images[r["image"]]
        kept.append(
            {
                "index": r["index"],
                "image": image,
                "question": r["question"],
                "answer": r["answer"],
                "category": r.get("task") or r.get("category", ""),
            }
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tsv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(kept[0]), delimiter="\t")
        w.writeheader()
        w.writerows(kept)
    tmp.replace(out)
    return kept


def independent_accuracy(pred_file: Path) -> tuple[float, dict[str, float], int]:
    """Exact match (strip + lower, VLMEvalKit's documented 'accuracy' rule) recomputed from its predictions."""
    import pandas as pd

    df = pd.read_excel(pred_file) if pred_file.suffix == ".xlsx" else pd.read_csv(pred_file, sep="\t")
    ok = [
        str(p).strip().lower() == str(a).strip().lower()
        for p, a in zip(df["prediction"], df["answer"], strict=True)
    ]
    per: dict[str, list[bool]] = {}
    for cat, hit in zip(df["category"], ok, strict=True):
        per.setdefault(str(cat), []).append(hit)
    return sum(ok) / len(ok), {c: sum(v) / len(v) for c, v in per.items()}, len(ok)


def rescore_edited(backend, model_dir: Path, pred_file: Path, work: Path) -> tuple[float | None, dict]:
    """Copy VLMEvalKit's outputs, make every other prediction the gold answer, let VLMEvalKit score them
    again (``--mode eval``), and compare its score with the independent exact match on the edited file."""
    import dataclasses

    import pandas as pd

    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pred_file.parent.parent, work / "outputs", symlinks=True)
    edited = work / "outputs" / pred_file.parent.name / pred_file.name
    for stale in edited.parent.glob(f"*_{DATASET}_*"):
        stale.unlink()  # old score / detail files: VLMEvalKit must write new ones
    df = pd.read_excel(edited)
    df["prediction"] = [
        str(a) if i % 2 == 0 else str(p)
        for i, (p, a) in enumerate(zip(df["prediction"], df["answer"], strict=True))
    ]
    df.to_excel(edited, index=False)
    overall, per, n = independent_accuracy(edited)
    result = dataclasses.replace(backend, extra_args=["--mode", "eval"]).evaluate(
        model_dir, [f"{DATASET}=ImageVQADataset"], work
    )
    got = result.per_dataset[DATASET]
    same = abs(overall - got.overall) < 1e-9 and all(
        abs(per[c] - got.per_category.get(c, -1)) < 1e-9 for c in per
    )
    print(
        f"[7/7] VLMEvalKit --mode eval on {n} edited predictions: parsed {got.overall:.4f}, independent {overall:.4f} -> {'same' if same else 'DIFFERENT'}"
    )
    if not same or overall < 0.5:
        print("FAIL: VLMEvalKit's re-scored file and the independent exact match disagree")
        return None, {}
    return overall, per


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m objectives.full_eval.vlmeval.selftest", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--python",
        default=None,
        help="VLMEvalKit interpreter (default: the tool-made venv, created if missing)",
    )
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from merge_core import Recipe, merge_to_disk
    from objectives.toy import build_toy_world

    from .backend import VLMEvalBackend
    from .env import resolve_python

    t0 = time.perf_counter()
    python = resolve_python(args.python, create=True)
    print(f"[1/7] VLMEvalKit interpreter: {python} ({time.perf_counter() - t0:.0f} s)")
    world = build_toy_world(0, size="ci")
    print(f"[2/7] toy world: {world.root}")
    recipe = Recipe.from_dict(
        {
            "vlm": str(world.vlm),
            "llm": str(world.llm),
            "base": str(world.base),
            "method": "task_arithmetic",
            "vlm_weight": 0.5,
            "llm_weight": 1.0,
        }
    )
    root = _cache()
    model_dir = root / "promoted" / recipe.id
    if not (model_dir / "config.json").is_file():
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        merge_to_disk(recipe, model_dir, overwrite=model_dir.exists(), progress=False)
    print(f"[3/7] merged checkpoint: {model_dir}")
    data = root / "LMUData"
    rows = write_toy_tsv(Path(world.data_dir) / "MathVista_TOY.tsv", data / f"{DATASET}.tsv", args.items)
    print(
        f"[4/7] judge-free toy benchmark: {data / (DATASET + '.tsv')} ({len(rows)} items, ImageVQADataset exact match)"
    )
    work = root / "work"
    if work.exists():
        shutil.rmtree(work)  # a fresh run, not VLMEvalKit's --reuse of an earlier one
    backend = VLMEvalBackend(
        python=python,
        data_root=data,
        # the toy images are 28x28 = one visual token; VLMEvalKit's 7B pixel bounds would upscale them
        model_kwargs={"min_pixels": 28 * 28, "max_pixels": 28 * 28, "max_new_tokens": 24, "do_sample": False},
        env={"MERGESEARCH_VLMEVAL_THREADS": str(args.threads)},
        create_env=False,
    )
    t1 = time.perf_counter()
    result = backend.evaluate(model_dir, [f"{DATASET}=ImageVQADataset"], work)
    got = result.per_dataset[DATASET]
    print(
        f"[5/7] VLMEvalKit finished in {time.perf_counter() - t1:.0f} s: overall {got.overall:.4f}, per category {got.per_category}"
    )
    preds = [
        p
        for p in (work / "outputs").rglob(f"*_{DATASET}.*")
        if p.suffix in (".xlsx", ".tsv") and not p.is_symlink()
    ]
    if not preds:
        print(f"FAIL: no prediction file *_{DATASET}.xlsx under {work / 'outputs'}")
        return 1
    overall, per, n = independent_accuracy(preds[0])
    same = (
        abs(overall - got.overall) < 1e-9
        and per.keys() == got.per_category.keys()
        and all(abs(per[c] - got.per_category[c]) < 1e-9 for c in per)
    )
    print(
        f"[6/7] independent exact match on {n} predictions from {preds[0].name}: overall {overall:.4f} -> {'same' if same else 'DIFFERENT'}"
    )
    if not same or n != len(rows):
        print("FAIL: VLMEvalKit's score file and its predictions disagree (or items are missing)")
        return 1
    # A toy model answers VLMEvalKit's English prompt suffix badly, so its score says little; VLMEvalKit's
    # scoring and our parsing are exercised on non-trivial values by re-scoring edited predictions.
    overall2, _ = rescore_edited(backend, model_dir, preds[0], root / "work-rescore")
    if overall2 is None:
        return 1
    print(
        f"OK: VLMEvalKit's pipeline ran on a promoted toy checkpoint on the CPU ({time.perf_counter() - t0:.0f} s in all)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
