"""Sub-commands of a study: run, status, export, report, dashboard, demo.

Every command takes the study file (the single source of the study's name and storage); ``--storage``
overrides the URL. Errors a user can fix are MergesearchErrors (exit code 2), raised before Ray starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from search.run import run_study
from search.study.spec import StudySpec, load_spec


def _load(args: argparse.Namespace) -> StudySpec:
    spec = load_spec(args.study)
    changes: dict[str, Any] = {}
    if getattr(args, "storage", None):
        changes["storage"] = args.storage
    if getattr(args, "n_trials", None) is not None:
        changes["n_trials"] = args.n_trials
    if getattr(args, "workers", None) is not None:
        changes["workers"] = args.workers
    if getattr(args, "sources", None) is not None:
        import dataclasses

        changes["models"] = dataclasses.replace(spec.models, sources=args.sources)
    if getattr(args, "timeout", None) is not None:
        from search.study.spec import parse_duration

        changes["timeout"] = parse_duration(args.timeout, "--timeout", "command line")
    return spec.replace(**changes) if changes else spec


def cmd_run(args: argparse.Namespace) -> int:
    spec = _load(args)
    run_study(
        spec, ray_address=args.ray_address, live=False if args.no_live else None, promote=not args.no_promote
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from search.study.storage import mask_url, open_study
    from search.study.trials import baseline_trials, counts_by_state, pareto_front, ranked_trials, trial_attr

    spec = _load(args)
    study = open_study(spec, create=False, with_sampler=False)
    console = Console()
    counts = counts_by_state(study)
    console.print(f"study {spec.name!r} in {mask_url(spec.storage)}", highlight=False)
    console.print("trials: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)
    multi = len(study.directions) > 1
    trials = pareto_front(study) if multi else ranked_trials(study)[: args.top]
    from search.results.evidence import VLM_ALONE, StudyEvidence
    from search.results.evidence_text import fmt_gain, fmt_scores, headline, rankings_table
    from search.results.report_evidence import recipe_text

    ev = StudyEvidence(study, spec)
    vlm = ev.baselines.get(VLM_ALONE)
    table = Table(title="Pareto front" if multi else f"best {len(trials)} trials (proxy, 95% intervals)")
    cols = ["trial", "value(s)", "proxy scores", "full eval", "recipe", "gain vs vlm_alone (proxy)"]
    for col in cols + (["feasible"] if spec.objectives.constrained is not None else []):
        # the verdict is one word: an 80-column table must not cut it to "INFEASIB…"
        verdict = col == "feasible"
        table.add_column(col, no_wrap=verdict, min_width=len("INFEASIBLE") if verdict else None)
    for t in trials:
        fe = trial_attr(study, t, "full_eval")
        fe_txt = ""
        if isinstance(fe, dict):
            fe_txt = ", ".join(
                f"{k}: {v.get('overall', v)}" for k, v in (fe.get("per_dataset") or {}).items()
            )
        if isinstance(fe, dict):
            fe_txt = fmt_scores(ev, t, "full") or fe_txt
        scores = t.user_attrs.get("scores") or {}
        row = [
            str(t.number),
            ", ".join(f"{v:.4f}" for v in t.values),
            fmt_scores(ev, t, "proxy") or ", ".join(f"{k}: {v:.3f}" for k, v in scores.items()),
            fe_txt,
            t.user_attrs.get("baseline") or recipe_text(t.user_attrs.get("recipe", {})),
            fmt_gain(ev, t, vlm, "proxy") if vlm is not None else "",
        ]
        if spec.objectives.constrained is not None:
            f = ev.feasible(t, "proxy")
            row.append("-" if f is None else "yes" if f else "INFEASIBLE")
        table.add_row(*row)
    console.print(table)
    if ev.promoted():
        console.print(rankings_table(ev))
    for line in headline(ev):
        console.print(line, highlight=False, soft_wrap=True)
    for name, t in baseline_trials(study).items():
        console.print(
            f"baseline {name}: trial {t.number} " + ", ".join(f"{v:.4f}" for v in t.values), highlight=False
        )
    from search.study.known_points import status_lines  # baselines the sampler learns from; warm starts

    for line in status_lines(study):
        console.print(line, highlight=False, soft_wrap=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from search.results.export import export_recipe
    from search.study.storage import open_study
    from search.study.trials import TrialLookupError, get_trial, trial_recipe_dict

    spec = _load(args)
    study = open_study(spec, create=False, with_sampler=False)
    from search.results.evidence import StudyEvidence
    from search.results.export import provenance_path, trial_provenance

    ev = StudyEvidence(study, spec)
    if args.trial is None:
        trial, how = ev.answer()  # the best on the held-out items once promoted (search.results.evidence)
        if trial is None:
            raise TrialLookupError(f"study {spec.name!r} has no COMPLETE trial to export yet")
    else:
        how = "chosen with --trial"
        trial = get_trial(study, args.trial)
        if trial.state.name != "COMPLETE":
            raise TrialLookupError(
                f"trial {args.trial} is {trial.state.name}, not COMPLETE; pick one from `status`"
            )
    out = export_recipe(
        trial_recipe_dict(trial), Path(args.out), args.format, provenance=trial_provenance(ev, trial, how)
    )
    print(
        f"trial {trial.number} ({how}; {', '.join(f'{v:.4f}' for v in trial.values)}) → {out}; "
        f"scores with intervals → {provenance_path(out)}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.results.report import write_report
    from search.study.storage import open_study

    spec = _load(args)
    study = open_study(spec, create=False, with_sampler=False)
    out = write_report(study, Path(args.out) if args.out else spec.output_dir / "report.html", spec=spec)
    print(f"report → {out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from search.study.storage import make_storage, mask_url, open_study

    spec = _load(args)
    open_study(spec, create=False, with_sampler=False)  # fails clearly if the study does not exist
    from optuna_dashboard import run_server

    if spec.storage.startswith("sqlite"):
        print(
            "note: reading a SQLite store that a running study writes can disturb it (optuna-dashboard #545); "
            "prefer it after the run, or use PostgreSQL",
            file=sys.stderr,
        )
    print(f"optuna-dashboard on {mask_url(spec.storage)} at http://{args.host}:{args.port}/")
    run_server(make_storage(spec.storage), host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from search.cli.demo import run_demo

    run_demo(size=args.size, workers=args.workers, n_trials=args.n_trials, output_dir=args.output_dir)
    return 0


def _study_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study file (studies/*.toml)")
    p.add_argument("--storage", help="database URL overriding the study file's `storage`")


def register(sub: Any) -> None:
    """Add run, status, export, report, dashboard and demo to the `mergesearch` CLI."""
    p = sub.add_parser("run", help="run (or resume) a study: Optuna coordinator + Ray workers")
    _study_arg(p)
    p.add_argument("--n-trials", type=int, help="COMPLETE + PRUNED trials to reach (overrides n_trials)")
    p.add_argument("--workers", type=int, help="number of Ray workers (overrides workers)")
    p.add_argument(
        "--sources", choices=("device", "host", "auto"),
        help="where workers keep the merge sources: on the device, streamed from the host, or auto (overrides models.sources)",
    )  # fmt: skip
    p.add_argument("--timeout", help="stop asking for trials after this long (seconds or '8h')")
    p.add_argument(
        "--ray-address", help="join an existing Ray cluster (e.g. 10.0.0.1:6379) instead of a local one"
    )
    p.add_argument("--no-promote", action="store_true", help="skip promotion of the top-k at the end")
    p.add_argument("--no-live", action="store_true", help="plain progress lines instead of a live panel")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="trials by state; the best recipes or the Pareto front")
    _study_arg(p)
    p.add_argument("--top", type=int, default=10, help="how many of the best trials to list")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "export", help="write a trial's recipe as JSON (re-merges bit for bit) or mergekit YAML"
    )
    _study_arg(p)
    p.add_argument("--trial", type=int, help="trial number (default: the best)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--format", choices=("json", "mergekit"), default="json")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write report.html: history, importances, Pareto front, slices, trials")
    _study_arg(p)
    p.add_argument("--out", help="output file (default: <output_dir>/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study's storage")
    _study_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("demo", help="toy world → search (studies/toy.toml) → promote → export → report")
    p.add_argument("--size", choices=("full", "ci"), default="full", help="toy world size")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--n-trials", type=int, default=None)
    p.add_argument("--output-dir", default=None, help="where the demo writes (default: runs/toy)")
    p.set_defaults(func=cmd_demo)
