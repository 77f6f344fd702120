"""Before/after in one run: the DARE mask cost and apply, or a whole merge, of two revisions, interleaved.

    .venv/bin/python benchmarks/compare_revisions.py --before REV [--after REV|worktree] [--rounds 3]
        [--cache DIR] [--merge linear|ties|dare_ties ...]

``git archive`` exports each revision into a temporary folder (the working tree itself for ``worktree``,
the default of ``--after``); each round runs ``benchmarks/merge_throughput.py``'s ``mask_cost`` on the
same 0.5B-shaped trio (built once by that script's ``build``) in a fresh process per revision, before and
after alternating, so both see the same machine load. Printed per revision: the whole model's DARE masks
(two per tensor, density 0.5) and DARE apply (masks included), best round of each, the mask share
(masks / apply) and the after/before ratios. One torch thread, as the merge engine runs.

``--merge METHOD`` (repeatable) times instead the whole ``mergesearch merge`` command of each revision on
that trio (merge_throughput's recipe for the method, its CLI body, the model card's hashes from the
stat-keyed cache, warmed first), beside ``cp`` of the same bytes (merge_throughput's whole-process floor),
each round running the floor, then before and after in alternating order; best round of each, the
whole-process ratio (command / cp) and after/before.  The outputs of the two revisions are compared
tensor by tensor: any difference is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys
sys.path.insert(0, {tree!r}); sys.path.insert(0, {tree!r} + "/benchmarks")
import merge_throughput as mt
import merge_core
from pathlib import Path
assert merge_core.__file__.startswith({tree!r}), merge_core.__file__  # this revision's code, not the install
paths = {{k: Path(v) for k, v in json.loads({paths!r}).items()}}
r = mt.mask_cost(paths)
print("RESULT " + json.dumps({{k: r[k] for k in ("mask", "apply", "v1", "numel", "tensors")}}))
"""


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` under ``into`` (``git archive``); ``worktree``: this checkout as it is."""
    if rev == "worktree":
        return ROOT
    out = into / rev.replace("/", "_")
    out.mkdir(parents=True)
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    tar_path = into / f"{out.name}.tar"
    tar_path.write_bytes(data)
    with tarfile.open(tar_path) as tf:
        tf.extractall(out, filter="data")
    return out


def run_child(tree: Path, paths: dict[str, str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    code = CHILD.format(tree=str(tree), paths=json.dumps(paths))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tree)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{tree}: mask_cost failed\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


RECIPES = {
    "linear": {"method": "linear", "weight": 0.1},
    "ties": {"method": "ties", "density": 0.5},
    "dare_ties": {"method": "dare_ties", "density": 0.5},
}


def run_merge(tree: Path, recipe: Path, out: Path, cli: str) -> float:
    """Wall time of one whole ``mergesearch merge`` command run from ``tree`` (start-up included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    check = f"import merge_core; assert merge_core.__file__.startswith({str(tree)!r}), merge_core.__file__\n"
    code = check + cli
    cmd = [sys.executable, "-c", code, "merge", str(recipe), "--out", str(out), "--overwrite", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{tree}: mergesearch merge failed\n{proc.stderr[-3000:]}")
    return wall


def same_weights(a: Path, b: Path) -> bool:
    """Every tensor of the two merged checkpoints equal bit for bit (and the same names)."""
    import torch
    from safetensors import safe_open

    def tensors(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    out[k] = h.get_tensor(k)
        return out

    ta, tb = tensors(a), tensors(b)
    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).view(torch.uint8)

    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and raw(ta[k]).equal(raw(tb[k])) for k in ta)


def compare_merges(args: argparse.Namespace, trees: dict[str, Path], paths: dict[str, str], mt: Any) -> None:
    """The ``--merge`` mode (module docstring)."""
    files = {k: Path(v) / "model.safetensors" for k, v in paths.items()}
    work = Path(args.cache) / "compare-revisions"
    work.mkdir(exist_ok=True)
    for method in args.merge:
        recipe = {"vlm": paths["vlm"], "llm": paths["llm"], "base": paths["base"], **RECIPES[method]}
        rp = work / f"recipe-{method}.json"
        rp.write_text(json.dumps(recipe))
        mt._env(recipe, hash_cache=True)  # warm the stat-keyed hash cache: the timed commands hit it
        reads = [files["vlm"], files["llm"]] + ([files["base"]] if method != "linear" else [])
        times: dict[str, list[float]] = {"cp": [], "before": [], "after": []}
        outs = {label: work / f"out-{method}-{label}" for label in trees}
        for i in range(args.rounds):
            times["cp"].append(mt.cp_time(reads, files["vlm"], work))
            order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
            for label, tree in order:
                times[label].append(run_merge(tree, rp, outs[label], mt.CLI))
            print(f"{method} round {i + 1}: cp {times['cp'][-1]:.2f}s, before {times['before'][-1]:.2f}s, "
                  f"after {times['after'][-1]:.2f}s", flush=True)  # fmt: skip
        same = same_weights(outs["before"], outs["after"])
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)
        if not same:
            raise SystemExit(f"{method}: the two revisions' merged weights differ")
        cp, bf, af = (min(times[k]) for k in ("cp", "before", "after"))
        print(f"{method}: whole `mergesearch merge` best of {args.rounds}: before ({args.before}) {bf:.2f}s = "
              f"{bf / cp:.2f}x cp, after ({args.after}) {af:.2f}s = {af / cp:.2f}x cp (cp {cp:.2f}s); "
              f"after/before {af / bf:.2f}; weights bit-identical", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="worktree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--cache",
        default=str(Path(os.environ.get("MERGESEARCH_CACHE", "~/.cache/mergesearch")).expanduser() / "bench"),
    )
    ap.add_argument("--merge", action="append", choices=sorted(RECIPES), help="time whole merges instead")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import merge_throughput as mt

    paths = {k: str(v) for k, v in mt.build(Path(args.cache)).items()}
    with tempfile.TemporaryDirectory() as td:
        trees = {"before": export(args.before, Path(td)), "after": export(args.after, Path(td))}
        if args.merge:
            compare_merges(args, trees, paths, mt)
            return
        best: dict[str, dict] = {}
        for i in range(args.rounds):
            for label, tree in trees.items():
                r = run_child(tree, paths)
                print(f"round {i + 1} {label:6}: masks {r['mask'] * 1e3:7.0f} ms, apply {r['apply'] * 1e3:7.0f} ms, "
                      f"share {r['mask'] / r['apply']:6.1%}", flush=True)  # fmt: skip
                b = best.setdefault(label, dict(r))
                b["mask"], b["apply"] = min(b["mask"], r["mask"]), min(b["apply"], r["apply"])
    before, after = best["before"], best["after"]
    print(f"\nDARE (dare_ties, density 0.5, {after['tensors']} tensors, {after['numel'] / 1e6:.0f}M entries, "
          f"1 thread), best of {args.rounds} rounds, interleaved")  # fmt: skip
    print(f"{'':22} {'masks ms':>9} {'apply ms':>9} {'share':>7}")
    for label, rev in (("before", args.before), ("after", args.after)):
        r = best[label]
        print(f"{label + ' (' + rev + ')':22} {r['mask'] * 1e3:9.0f} {r['apply'] * 1e3:9.0f} {r['mask'] / r['apply']:7.1%}")
    print(f"{'after / before':22} {after['mask'] / before['mask']:9.2f} {after['apply'] / before['apply']:9.2f}")
    share = after["mask"] / after["apply"]
    print(f"masks <= 10% of the DARE apply: {'ok' if share <= 0.10 else 'MISSED'} ({share:.1%})")


if __name__ == "__main__":
    main()
