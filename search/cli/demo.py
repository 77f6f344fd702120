"""``mergesearch demo``: the whole product on the toy world, end to end, on any CPU.

Builds the toy world if it is not cached, runs ``studies/toy.toml`` (resuming if it already ran),
promotes the best, exports its recipe (JSON and mergekit YAML), writes the report, and prints where each
thing is and what the best recipe (the best on the held-out items once promoted) gained over the VLM
alone, with its paired 95% interval.
"""

from __future__ import annotations

import dataclasses
from importlib.resources import files
from pathlib import Path

from rich.console import Console

from merge_core.errors import MergesearchError
from search.study.spec import StudySpec, ToySource, load_spec

TOY_STUDY = Path(str(files("studies") / "toy.toml"))  # a real file: setuptools installs unzipped


def demo_spec(
    size: str = "full", workers: int | None = None, n_trials: int | None = None, output_dir: str | None = None
) -> StudySpec:
    """studies/toy.toml with the demo's overrides (toy size, workers, trials, output folder)."""
    if not TOY_STUDY.is_file():
        raise MergesearchError(f"{TOY_STUDY} not found; reinstall mergesearch (the study files ship with it)")
    spec = load_spec(TOY_STUDY)
    changes: dict = {
        "models": dataclasses.replace(
            spec.models, toy=ToySource(spec.models.toy.seed if spec.models.toy else 0, size)
        )
    }
    if workers:
        changes["workers"] = workers
    if n_trials:
        changes["n_trials"] = n_trials
    if output_dir:
        out = Path(output_dir).resolve()
        changes["output_dir"] = out
        changes["storage"] = f"sqlite:///{out / 'study.db'}"
    return spec.replace(**changes)


def run_demo(
    size: str = "full",
    workers: int | None = None,
    n_trials: int | None = None,
    output_dir: str | None = None,
    console: Console | None = None,
) -> dict:
    """Run the demo; returns the paths and numbers it printed."""
    from search.results.evidence import VLM_ALONE, StudyEvidence
    from search.results.evidence_text import headline
    from search.results.export import ExportError, export_recipe, write_provenance
    from search.results.report import write_report
    from search.run import run_study
    from search.study.storage import open_study
    from search.study.trials import trial_attr

    console = console or Console()
    spec = demo_spec(size, workers, n_trials, output_dir)
    run_study(spec, console=console, promote=True)
    study = open_study(spec, create=False, with_sampler=False)
    ev = StudyEvidence(study, spec)
    best, how = ev.answer()  # the best on the held-out items (search.results.evidence)
    if best is None:
        raise MergesearchError(
            f"the demo study {spec.name!r} has no COMPLETE trial; see `mergesearch status`"
        )
    out = spec.output_dir
    recipe_path = export_recipe(best.user_attrs["recipe"], out / "best_recipe.json", "json")
    write_provenance(recipe_path, ev, best, how)
    try:
        yaml_path: Path | None = export_recipe(
            best.user_attrs["recipe"], out / "best_recipe.mergekit.yaml", "mergekit"
        )
    except ExportError as err:
        yaml_path = None
        console.print(f"mergekit YAML not written: {err}", highlight=False)
    report_path = write_report(study, out / "report.html", spec=spec)
    console.rule("demo results")
    console.print(f"study store:   {spec.storage}", highlight=False)
    console.print(
        f"best recipe:   trial {best.number} ({how}) → {recipe_path}",
        highlight=False,
        soft_wrap=True,
    )
    if yaml_path:
        console.print(f"mergekit YAML: {yaml_path}", highlight=False)
    console.print(f"report:        {report_path}", highlight=False)
    console.print(f"records:       {out / 'records'}", highlight=False)
    promoted = out / "promoted"
    if promoted.exists():
        console.print(f"promoted:      {promoted}", highlight=False)
    for line in headline(ev):  # scores with 95% intervals, paired gains over the baselines
        console.print(line, highlight=False, soft_wrap=True)
    gain = None
    vlm = ev.baselines.get(VLM_ALONE)
    if vlm is not None:
        _, g = ev.gains(best, vlm, ev.answer_scope())
        gain = None if g is None else g.gain.value
    # the best baseline against the best recipe the search itself proposed; the toy world's identity
    from search.cli.demo_summary import best_lines, best_searched, world_line

    for line in [*best_lines(study, ev), world_line(spec)]:
        if line:
            console.print(line, highlight=False, soft_wrap=True)
    searched = best_searched(study)
    fe = trial_attr(study, best, "full_eval")
    if isinstance(fe, dict):
        console.print(f"full evaluation ({fe.get('label', fe.get('backend'))}):", highlight=False)
        for name, res in (fe.get("per_dataset") or {}).items():
            cats = " · ".join(f"{c} {a:.3f}" for c, a in (res.get("per_category") or {}).items())
            console.print(
                f"  {name}: {res.get('overall', float('nan')):.3f} (n={res.get('n', '?')})  {cats}",
                highlight=False,
                soft_wrap=True,
            )
    console.print(
        f"re-merge it:   mergesearch merge {recipe_path} --out {out / 'best_model'}", highlight=False
    )
    return {
        "best": best.number, "gain": gain, "recipe": recipe_path, "report": report_path,
        "best_searched": searched.number if searched else None,
    }  # fmt: skip
