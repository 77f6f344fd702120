"""Before/after in one run: the DARE mask cost and apply of two revisions of this repository, interleaved.

    .venv/bin/python benchmarks/compare_revisions.py --before REV [--after REV|worktree] [--rounds 3]
        [--cache DIR]

``git archive`` exports each revision into a temporary folder (the working tree itself for ``worktree``,
the default of ``--after``); each round runs ``benchmarks/merge_throughput.py``'s ``mask_cost`` on the
same 0.5B-shaped trio (built once by that script's ``build``) in a fresh process per revision, before and
after alternating, so both see the same machine load. Printed per revision: the whole model's DARE masks
(two per tensor, density 0.5) and DARE apply (masks included), best round of each, the mask share
(masks / apply) and the after/before ratios. One torch thread, as the merge engine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="worktree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--cache",
        default=str(Path(os.environ.get("MERGESEARCH_CACHE", "~/.cache/mergesearch")).expanduser() / "bench"),
    )
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import merge_throughput as mt

    paths = {k: str(v) for k, v in mt.build(Path(args.cache)).items()}
    with tempfile.TemporaryDirectory() as td:
        trees = {"before": export(args.before, Path(td)), "after": export(args.after, Path(td))}
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
