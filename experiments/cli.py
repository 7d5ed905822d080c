"""`llm4msr grid` (the quality grid; `benchmark` is its old name): every backbone x knowledge mode x
seed through the fast training path, with results.csv / results.md / plots (see
`llm4msr.experiments.grid`). Interrupt it at any time: a
rerun with the same arguments resumes, skipping the runs already in results.csv."""
import json
import pathlib

from llm4msr.contract import KNOWLEDGE_REDUCTION
from llm4msr.errors import UserFacingError


def _names(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def add_parser(subparsers) -> None:
    bench = subparsers.add_parser(
        "grid", aliases=["benchmark"], help="quality grid, backbones x knowledge modes x seeds: results.csv, "
                                            "results.md, plots (speed benchmarks: bench/)",
        description="Train every backbone with every knowledge mode and seed (fast path, no TFX) and report "
                    "test metrics overall and per scenario, mean ± std over seeds and the lift of each "
                    "knowledge mode over none. Resumes: runs already in OUT/results.csv are skipped.")
    bench.add_argument("--data", help="canonical data set folder (`llm4msr data prepare --out`); needed to run")
    bench.add_argument("--knowledge-dir", help="knowledge folder (`llm4msr knowledge extract --out`); "
                                               "needed unless --knowledge none")
    bench.add_argument("--backbones", default="dnn,shared_bottom,mmoe,ple,star", help="comma-separated")
    bench.add_argument("--knowledge", default="none,user,scenario,both", help="comma-separated modes")
    seeds = bench.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=3, help="number of seeds: 0..N-1 (default 3)")
    seeds.add_argument("--seed-list", help="explicit comma-separated seeds instead of --seeds")
    bench.add_argument("--out", required=True, help="output folder (results.csv, results.md, *.png)")
    bench.add_argument("--epochs", type=int, help="maximum epochs per run (early stopping on eval AUC); "
                                                 "default TrainConfig's (10)")
    bench.add_argument("--patience", type=int, help="default TrainConfig's (2)")
    bench.add_argument("--batch-size", type=int, help="default TrainConfig's (1024)")
    bench.add_argument("--config", help="JSON file with ModelConfig fields shared by every run "
                                        "(e.g. learning_rate, projection_dim, meta_rank)")
    bench.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="one ModelConfig field for every run (JSON value), repeatable; overrides --config")
    bench.add_argument("--knowledge-reduction", type=int, default=KNOWLEDGE_REDUCTION, metavar="K",
                       help=f"reduce every knowledge level to its K leading principal components on the train "
                            f"rows, in Transform (default {KNOWLEDGE_REDUCTION}; 0: the LLM's width, normalised only)")
    bench.add_argument("--jobs", type=int, default=1,
                       help="worker processes (each gets cpu_count/jobs TensorFlow threads)")
    bench.add_argument("--overwrite", action="store_true",
                       help="discard OUT/results.csv instead of resuming (needed when settings changed)")
    bench.add_argument("--report-only", action="store_true", help="rewrite results.md and plots from results.csv")
    bench.add_argument("--select-from", metavar="DIR,DIR,...",
                       help="merge finished grids that differ only in model settings into --out, keeping per "
                            "backbone and mode the one with the best mean eval AUC (recorded in grid.json)")
    bench.set_defaults(func=_benchmark)


def _model_overrides(args) -> dict:
    model = {}
    if args.config:
        try:
            model.update(json.loads(pathlib.Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise UserFacingError(f"--config {args.config}: {error}") from None
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserFacingError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            model[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            model[name.strip()] = value
    return model


def _benchmark(args) -> int:
    from llm4msr.experiments import grid, report

    if args.select_from:
        table = grid.select_on_eval(_names(args.select_from), args.out)
        print(f"wrote {args.out}: {len(table)} runs selected on eval from {args.select_from}")
        return 0
    if args.report_only:
        table = grid.read_results(args.out)
        if table.empty:
            raise UserFacingError(f"{args.out}/{grid.RESULTS_CSV}: no finished runs to report")
        report.write_report(table, args.out)
        print(f"wrote {args.out}/{report.RESULTS_MD} and plots from {len(table)} runs")
        return 0
    if not args.data:
        raise UserFacingError("grid: --data is needed to run a grid")
    if args.seed_list:
        try:
            seeds = [int(s) for s in _names(args.seed_list)]
        except ValueError:
            raise UserFacingError(f"--seed-list {args.seed_list!r}: expected comma-separated integers") from None
    else:
        if args.seeds < 1:
            raise UserFacingError(f"--seeds must be at least 1, got {args.seeds}")
        seeds = list(range(args.seeds))
    spec = grid.GridSpec(args.data, args.out, args.knowledge_dir, backbones=_names(args.backbones),
                              modes=_names(args.knowledge), seeds=seeds, model=_model_overrides(args),
                              jobs=args.jobs, knowledge_reduction=args.knowledge_reduction, **{name: getattr(args, name) for name in ("epochs", "batch_size", "patience")
                                                 if getattr(args, name) is not None})
    grid.run_grid(spec, overwrite=args.overwrite, log=lambda line: print(line, flush=True))
    return 0
