"""Sub-commands ``mergesearch inspect`` and ``mergesearch merge`` (registered by search/cli/main.py)."""

from __future__ import annotations

import argparse
import sys


def _inspect(args: argparse.Namespace) -> int:
    from merge_core.inspect import inspect_models

    report = inspect_models(args.vlm, args.llm, args.base)
    print(report.summary())
    return 0 if report.ok else 2


def _merge(args: argparse.Namespace) -> int:
    from merge_core.recipe import load_recipe
    from merge_core.stream import merge_to_disk

    recipe = load_recipe(args.recipe)
    out = merge_to_disk(
        recipe,
        args.out,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    print(f"merged recipe {recipe.id} ({recipe.method}) -> {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``inspect`` and ``merge`` to the ``mergesearch`` parser."""
    p = sub.add_parser(
        "inspect", help="show how a VLM's language model pairs with an LLM (exit 2 on a problem)"
    )
    p.add_argument("vlm", help="VLM directory or hub id")
    p.add_argument("llm", help="LLM directory or hub id")
    p.add_argument("--base", default=None, help="base LLM (for the task-vector methods)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("merge", help="merge a recipe into a loadable checkpoint directory")
    p.add_argument("recipe", help="recipe JSON file (schema mergesearch.recipe/v2; v1 still read)")
    p.add_argument("--out", required=True, help="output directory (refused if it exists, unless --overwrite)")
    p.add_argument("--shard-size", default="2GB", help="maximum shard size, e.g. 2GB, 500MB (default 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_merge)
