"""``mergesearch promote STUDY.toml --top K [--backend vlmeval|builtin] [--force] ...``"""

from __future__ import annotations

import argparse
from typing import Any

from objectives.full_eval import BACKENDS


def register(sub: Any) -> None:
    """Add the ``promote`` sub-command."""
    p = sub.add_parser(
        "promote",
        help="merge the best trials to disk and evaluate them in full (VLMEvalKit or the built-in scorer)",
        description=(
            "Merge the K best COMPLETE trials (the Pareto front for several objectives) to "
            "<output_dir>/promoted/<recipe_id>/, evaluate each in full, store the scores on the trial "
            "(attribute full_eval). Trials already evaluated with the same backend are skipped unless --force."
        ),
    )
    p.add_argument("study", help="the study file (TOML)")
    p.add_argument(
        "--top", type=int, default=None, metavar="K", help="how many trials (default: [promotion] top_k)"
    )
    p.add_argument("--backend", choices=BACKENDS, default=None, help="default: [promotion] backend")
    p.add_argument(
        "--datasets", nargs="+", default=None, metavar="NAME", help="default: [promotion] datasets"
    )
    p.add_argument("--force", action="store_true", help="evaluate again trials that already have full_eval")
    p.add_argument("--storage", default=None, help="override the study file's storage URL")
    g = p.add_argument_group("VLMEvalKit backend")
    g.add_argument(
        "--vlmeval-python",
        default=None,
        metavar="PATH",
        help="python of an env with ms-vlmeval (default: a venv mergesearch creates under ~/.cache/mergesearch)",
    )
    g.add_argument(
        "--judge",
        default=None,
        metavar="MODEL",
        help="VLMEvalKit --judge (e.g. gpt-4o-mini); the key comes from $OPENAI_API_KEY",
    )
    g.add_argument(
        "--judge-base-url",
        default=None,
        metavar="URL",
        help="OPENAI_API_BASE for an OpenAI-compatible judge server",
    )
    g.add_argument(
        "--local-llm", default=None, metavar="NAME", help="LOCAL_LLM: the local judge model's name"
    )
    g.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="the variable holding the judge key (never pass the key itself)",
    )
    p.set_defaults(func=run_promote)


def backend_options(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """Backend constructor options from the command line (VLMEvalKit ones only for that backend)."""
    if backend != "vlmeval":
        given = [f for f in ("vlmeval_python", "judge", "judge_base_url", "local_llm") if getattr(args, f)]
        if given:
            from search.results.promote import PromotionError

            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise PromotionError(f"{flags}: only for --backend vlmeval (this run uses {backend!r})")
        return {}
    from objectives.full_eval.judge import JudgeSettings

    return {
        "python": args.vlmeval_python,
        "judge": JudgeSettings(
            model=args.judge,
            api_base=args.judge_base_url,
            local_llm=args.local_llm,
            key_env=args.judge_key_env,
        ),
    }


def run_promote(args: argparse.Namespace) -> int:
    from rich.console import Console

    from search.results.promote import promote_study
    from search.study.spec import load_spec
    from search.study.storage import open_study

    console = Console()
    spec = load_spec(args.study)
    backend = args.backend or spec.promotion.backend
    options = backend_options(args, backend)
    study = open_study(spec, create=False, storage=args.storage, with_sampler=False)
    results = promote_study(
        spec,
        top_k=args.top,
        backend=backend,
        force=args.force,
        console=console,
        datasets=args.datasets,
        backend_options=options,
        study=study,
    )
    from search.results.evidence import StudyEvidence
    from search.results.evidence_text import headline, promotion_table, rankings_table

    ev = StudyEvidence(study, spec)
    console.print(promotion_table(ev, results))
    console.print(rankings_table(ev))
    for line in headline(ev):
        console.print(line, highlight=False, soft_wrap=True)
    return 0
