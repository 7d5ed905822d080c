"""`llm4msr pipeline run|compile`: the TFX pipeline locally, or compiled for Kubeflow Pipelines."""
from llm4msr.pipeline.config import PipelineConfig

DEFAULT_IMAGE = "ghcr.io/llm4msr/llm4msr-pipeline:0.1.0"


def add_parser(subparsers) -> None:
    pipeline = subparsers.add_parser("pipeline", help="run or compile the TFX pipeline")
    commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    run = commands.add_parser("run", help="run locally (LocalDagRunner, Beam DirectRunner)")
    _common(run)
    run.add_argument("--report", help="also write the run report (timings, evaluation) as JSON here")
    run.set_defaults(func=_run)
    compile_ = commands.add_parser("compile", help="compile for an orchestrator")
    _common(compile_)
    compile_.add_argument("--target", choices=["kubeflow"], default="kubeflow")
    compile_.add_argument("--image", default=DEFAULT_IMAGE, help="the pipeline image (kubeflow/Dockerfile)")
    compile_.add_argument("--output", default="runs/kubeflow/llm4msr_pipeline.json")
    compile_.set_defaults(func=_compile)


def _common(parser) -> None:
    parser.add_argument("--config", help="YAML/JSON pipeline config (see configs/default.yaml)")
    parser.add_argument("--data", dest="dataset_dir", help="canonical data set (overrides the config)")
    parser.add_argument("--root", help="pipeline root and metadata folder (overrides the config)")
    parser.add_argument("--serving-dir", help="where the Pusher writes models (overrides the config)")


def _config(args) -> PipelineConfig:
    return PipelineConfig.load(args.config, dataset_dir=args.dataset_dir, root=args.root,
                               serving_dir=args.serving_dir)


def _run(args) -> int:
    from llm4msr.pipeline import runner

    report = runner.run_local(_config(args))
    print(runner.format_report(report))
    if args.report:
        runner.write_report(report, args.report)
    evaluation = report.get("evaluation") or {}
    return 0 if evaluation.get("blessed") else 3


def _compile(args) -> int:
    from llm4msr.pipeline import runner

    path = runner.compile_kubeflow(_config(args), args.output, args.image)
    print(f"wrote {path}")
    return 0
