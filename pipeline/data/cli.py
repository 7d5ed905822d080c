"""`llm4msr data prepare`: write a canonical multi-scenario data set and print its summary."""
import time

from llm4msr.pipeline.data import sources
from llm4msr.pipeline.data.split import REGIME_SHARE, REGIMES


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare canonical multi-scenario data sets")
    commands = data.add_subparsers(dest="data_command", required=True)
    prepare = commands.add_parser("prepare", help="convert a source into the canonical layout")
    prepare.add_argument("--source", default="movielens-latest-small",
                         choices=[*sources.SOURCES, "canonical"], help="what to read")
    prepare.add_argument("--data-dir", help="where the source is (default: $LLM4MSR_DATA_DIR, "
                                            "../shared/data, the download cache, then download)")
    prepare.add_argument("--scenarios", default="genre", choices=["genre", "age"],
                         help="item genre groups (default) or user age groups (100K/1M only)")
    prepare.add_argument("--split", default="time", choices=["time", "random"],
                         help="per-user time split (default) or seeded random 8:1:1")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the random split and of the regime")
    prepare.add_argument("--regime", default="time", choices=list(REGIMES),
                         help="time: the split alone (default); new_users: a share of users are new (their "
                              "earlier rows are prompt history only, their later rows eval/test); cold_scenario: "
                              "a share of multi-scenario users have one scenario held out entirely; "
                              "prompt_history: the earliest share of every user's train rows feeds only their "
                              "prompt (prompts then never list a training label)")
    prepare.add_argument("--regime-share", type=float, default=REGIME_SHARE,
                         help=f"share of users the regime applies to, or for prompt_history of each user's "
                              f"train rows (default {REGIME_SHARE})")
    prepare.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    prepare.add_argument("--out", required=True, help="output folder (replaced atomically)")
    prepare.set_defaults(func=_prepare)


def _prepare(args) -> int:
    from llm4msr.pipeline.data.prepare import prepare, summarize

    started = time.time()
    dataset = prepare(args.source, args.out, data_dir=args.data_dir, scenario_kind=args.scenarios,
                      split=args.split, seed=args.seed, download=not args.no_download,
                      regime=args.regime, share=args.regime_share)
    print(summarize(dataset))
    print(f"wrote {args.out} in {time.time() - started:.1f} s (source: {dataset.manifest['input']})")
    return 0
