"""The `mergesearch` command line.

Each package contributes its sub-commands through a ``register(subparsers)`` function, so the
commands live next to the code they drive and this module only assembles them.
A :class:`merge_core.errors.MergesearchError` is printed on one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
from collections.abc import Sequence

from merge_core.errors import MergesearchError

# (module, function) pairs; each function takes the sub-parsers object and adds its commands,
# setting `func` on each parser to a callable(args) -> int.
COMMAND_PROVIDERS: tuple[str, ...] = (
    "merge_core.cli",  # inspect, merge
    "objectives.cli",  # proxy, score
    "objectives.toy.cli",  # toy
    "search.cli.study",  # run, status, export, report, dashboard, demo
    "search.cli.promote",  # promote
)


# sub-commands whose provider is known without importing the others: `mergesearch merge` then loads
# neither pandas nor rich nor Optuna (a merge to disk needs torch and safetensors only)
DIRECT_COMMANDS: dict[str, str] = {"merge": "merge_core.cli", "inspect": "merge_core.cli"}

# sub-commands that leave nothing running and nothing to finalise when they return (the merge's output is
# fsynced and renamed before it does): the console script ends them without the interpreter's teardown
FAST_EXIT_COMMANDS: frozenset[str] = frozenset({"merge", "inspect"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every provider's sub-commands (only the one provider of a direct command)."""
    parser = argparse.ArgumentParser(
        prog="mergesearch",
        description="Search, merge and evaluate VLM + reasoning-LLM merge recipes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    providers = (DIRECT_COMMANDS[command],) if command in DIRECT_COMMANDS else COMMAND_PROVIDERS
    for module_name in providers:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(
                err.name
            ):  # provider not installed; its own import errors surface
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mergesearch` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MergesearchError as err:
        print(f"mergesearch: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("mergesearch: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `mergesearch` console script: :func:`main`, then exit with its code.

    After a :data:`FAST_EXIT_COMMANDS` command it runs the ``atexit`` handlers, flushes stdout and stderr
    and ends the process with ``os._exit``: the interpreter's teardown after importing torch (module
    finalisation and garbage collection, nothing that writes a file) takes 0.35-0.5 s here, about half of
    ``cp``'s time for a 0.5B model, and the user waits for it (``benchmarks/merge_throughput.py``).
    """
    argv = sys.argv[1:]
    code = main(argv)
    if argv and argv[0] in FAST_EXIT_COMMANDS:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
