"""`mergesearch proxy make` and `mergesearch score` (registered by :func:`register`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .datasets import KINDS

# The other modules are imported when a command runs: building the parser must stay cheap (no torch).
if TYPE_CHECKING:
    from .scorer import ScoreResult


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``proxy`` and ``score`` commands to the ``mergesearch`` parser."""
    proxy = sub.add_parser("proxy", help="proxy subsets of VLMEvalKit benchmarks")
    proxy_sub = proxy.add_subparsers(dest="proxy_command", metavar="ACTION", required=True)
    make = proxy_sub.add_parser("make", help="write a stratified subset TSV + manifest")
    make.add_argument("--dataset", required=True, help="VLMEvalKit name (in $LMUData) or a .tsv path")
    make.add_argument("--n", type=int, required=True, help="number of items")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--kind", choices=KINDS, default=None, help="benchmark kind (default: from the columns)"
    )
    make.add_argument(
        "--root", default=None, help="LMUData directory to read from (default $LMUData or ~/LMUData)"
    )
    make.add_argument("--out-dir", default=None, help="where to write (default: the LMUData directory)")
    make.add_argument("--name", default=None, help="dataset name of the subset (default <BASE>_PROXY<n>)")
    make.set_defaults(func=_cmd_proxy_make)

    score = sub.add_parser("score", help="re-score a VLMEvalKit predictions file without a judge model")
    score.add_argument("dataset", help="the benchmark TSV (or VLMEvalKit name)")
    score.add_argument("predictions", help="VLMEvalKit predictions .xlsx / .tsv (columns index, prediction)")
    score.add_argument("--kind", choices=KINDS, default=None)
    score.add_argument("--root", default=None, help="LMUData directory for a dataset given by name")
    score.add_argument(
        "--out", default=None, help="write overall / per-category scores and per-item records here"
    )
    score.set_defaults(func=_cmd_score)


def _cmd_proxy_make(args: argparse.Namespace) -> int:
    from .datasets import lmu_root, load_dataset
    from .proxy import make_proxy

    dataset = load_dataset(args.dataset, kind=args.kind, root=args.root)
    out_dir = Path(args.out_dir) if args.out_dir else lmu_root(args.root)
    path = make_proxy(dataset, args.n, args.seed, out_dir, name=args.name)
    print(f"wrote {path} ({args.n} of {len(dataset)} items of {dataset.name}, seed {args.seed})")
    print(f"manifest {path.with_suffix('.manifest.json')}")
    name = path.stem
    config = {name: {"class": "MathVista" if dataset.kind == "mathvista" else "MathVision", "dataset": name}}
    print(f"VLMEvalKit: --data-config '{json.dumps(config)}' with the TSV in $LMUData")
    return 0


def _print_result(result: ScoreResult, missing: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for name, score in result.per_dataset.items():
        table = Table(title=f"{name}: {score.correct}/{score.n} = {100 * score.accuracy:.2f}%")
        table.add_column("category")
        table.add_column("n", justify="right")
        table.add_column("accuracy %", justify="right")
        table.add_row("Overall", str(score.n), f"{100 * score.accuracy:.2f}")
        for cat, row in score.per_category.items():
            table.add_row(cat or "(none)", str(int(row["n"])), f"{100 * row['accuracy']:.2f}")
        for skill, row in score.per_skill.items():
            table.add_row(f"skill: {skill}", str(int(row["n"])), f"{100 * row['accuracy']:.2f}")
        console.print(table)
    if missing:
        console.print(
            f"[yellow]{missing} item(s) of the dataset have no prediction and were not scored[/yellow]"
        )


def _cmd_score(args: argparse.Namespace) -> int:
    from merge_core.atomic import write_text_atomic

    from .datasets import load_dataset
    from .predictions import check_against, read_predictions
    from .scorer import ScoreResult, score_responses

    dataset = load_dataset(args.dataset, kind=args.kind, root=args.root)
    predictions = read_predictions(args.predictions)
    missing = check_against(dataset, predictions, args.predictions)
    records = score_responses(dataset, predictions)
    result = ScoreResult.from_records(records, [dataset])
    _print_result(result, len(missing))
    if args.out:
        payload = result.to_dict()
        payload.update({"dataset": dataset.name, "dataset_md5": dataset.md5, "predictions": str(args.predictions),
                        "kind": dataset.kind, "unscored_indices": missing})  # fmt: skip
        write_text_atomic(args.out, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
