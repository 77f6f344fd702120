"""`mergesearch toy build`: build (or find in the cache) the toy world and print where it lies."""

from __future__ import annotations

import argparse
import time
from typing import Any

from objectives.toy.sizes import SIZES


def register(sub: Any) -> None:
    """Add ``toy build`` to the CLI's sub-parsers."""
    toy = sub.add_parser("toy", help="the embedded toy world (tiny base / reasoning LLM / VLM + benchmarks)")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND")
    build = toy_sub.add_parser(
        "build", help="train and save the toy world deterministically on the CPU (cached)"
    )
    build.add_argument(
        "--out", help="world directory (default: $MERGESEARCH_CACHE/toy/<version>-<size>-seed<seed>)"
    )
    build.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    build.add_argument(
        "--size", choices=sorted(SIZES), default="full", help="full (the benchmark world) or ci (tests)"
    )
    build.add_argument("--cache-dir", help="cache root instead of $MERGESEARCH_CACHE or ~/.cache/mergesearch")
    build.add_argument("--force", action="store_true", help="rebuild even when the world is already there")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_build)
    toy.set_defaults(func=lambda args: (toy.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from objectives.toy.build import build_into, build_toy_world

    start = time.perf_counter()
    kwargs = {"seed": args.seed, "size": args.size, "force": args.force, "progress": not args.quiet}
    world = (
        build_into(args.out, **kwargs) if args.out else build_toy_world(cache_dir=args.cache_dir, **kwargs)
    )
    print(
        f"toy world ({world.size}, seed {world.seed}) at {world.root}  [{time.perf_counter() - start:.1f} s]"
    )
    print(f"  vlm  {world.vlm}\n  llm  {world.llm}\n  base {world.base}")
    print(f"  LMUData {world.data_dir}: {', '.join(world.datasets + world.proxy_datasets)}")
    from objectives.toy.fingerprint import identity_line

    print(f"  {identity_line(world)}")
    return 0
