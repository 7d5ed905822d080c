"""`llm4msr knowledge extract` (the cached Beam job) and `llm4msr knowledge show` (one prompt,
its generated text and vector norm: the interpretability view)."""
import shlex

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.knowledge.llm import PRECISIONS  # no TensorFlow: building the parser stays fast


def add_parser(subparsers) -> None:
    knowledge = subparsers.add_parser("knowledge", help="LLM knowledge extraction (prompts -> vectors)")
    commands = knowledge.add_subparsers(dest="knowledge_command", required=True)

    extract = commands.add_parser("extract", help="embed every scenario, user and item prompt, using the cache")
    extract.add_argument("--data", required=True, help="canonical data set folder")
    extract.add_argument("--out", required=True, help="knowledge folder to write (replaced atomically)")
    _model_arguments(extract)
    extract.add_argument("--cache-dir", help="cache folder (default: $LLM4MSR_KNOWLEDGE_CACHE or "
                                             "~/.cache/llm4msr/knowledge)")
    extract.add_argument("--batch-size", type=int, default=64, help="prompts per inference batch")
    extract.add_argument("--no-bucketing", action="store_true", help="batch in input order, not by length")
    extract.add_argument("--beam-args", default="",
                         help="Beam pipeline options, e.g. \"--runner=DataflowRunner ...\" (default: "
                              "DirectRunner, inference in one worker process with oneDNN; "
                              "\"--direct_running_mode=in_memory\" keeps it in this process)")
    extract.add_argument("--levels", default="user,scenario,item",
                         help="knowledge levels to extract, comma-separated (user and scenario always; "
                              "item: one prompt per item of items.csv)")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")
    extract.add_argument("--force", action="store_true",
                         help="extract even when --out already holds the knowledge of the same inputs")
    extract.set_defaults(func=_extract)

    show = commands.add_parser("show", help="print the prompt, generated text and vector norm of one user, "
                                            "item or scenario")
    show.add_argument("--data", required=True, help="canonical data set folder")
    target = show.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="user id (unknown ids show the cold-start prompt)")
    target.add_argument("--scenario", help="scenario id")
    target.add_argument("--item", help="item id (unknown ids show the cold-start prompt)")
    show.add_argument("--knowledge", help="knowledge folder written by `extract` (default: rebuild the prompt)")
    _model_arguments(show)
    show.add_argument("--cache-dir", help="without --knowledge: where to look for a cached vector")
    show.set_defaults(func=_show)


def _model_arguments(parser) -> None:
    parser.add_argument("--model", default="minilm", help="alias (minilm), model folder or hub id")
    parser.add_argument("--backend", choices=["encoder", "causal-lm"],
                        help="default: from the model's config (causal LMs generate text first)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="causal-lm: generated tokens at most")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="of the LLM's forward pass: auto (default) is bfloat16 on CPUs with AMX / AVX-512 "
                             "BF16 (~1.8x faster, vectors within cosine 0.9999 of float32's, cached apart), "
                             "else float32")
    parser.add_argument("--templates", help="folder with user.tmpl, scenario.tmpl and item.tmpl (default: bundled)")


def _extract(args) -> int:
    from llm4msr.pipeline.knowledge.extract import extract_knowledge

    if args.batch_size < 1:
        raise UserFacingError(f"--batch-size must be at least 1, got {args.batch_size}")
    counts = extract_knowledge(args.data, args.out, model=args.model, cache_dir=args.cache_dir,
                               templates=args.templates, batch_size=args.batch_size,
                               beam_pipeline_args=shlex.split(args.beam_args), progress=not args.no_progress,
                               backend=args.backend, max_new_tokens=args.max_new_tokens,
                               bucket_by_length=not args.no_bucketing,
                               levels=[level.strip() for level in args.levels.split(",") if level.strip()],
                               force=args.force, precision=args.precision)
    if counts["up_to_date"]:
        print(f"{args.out} is up to date (same data, model, templates and levels): {counts['prompts']} prompts, "
              f"nothing to do, {counts['seconds']:.1f} s (--force redoes it)")
        return 0
    print(f"wrote {args.out}: {counts['prompts']} prompts, {counts['cache_hits']} cache hits, "
          f"{counts['inferences']} inferences, {counts['seconds']:.1f} s, "
          f"{counts['prompts_per_second']:.1f} prompts/s"
          + (f"; {counts['discarded_cache_chunks']} damaged cache chunks discarded and recomputed"
             if counts["discarded_cache_chunks"] else ""))
    return 0


def _show(args) -> int:
    from llm4msr.pipeline.knowledge.show import describe

    print(describe(args.data, user=args.user, scenario=args.scenario, item=args.item, knowledge_dir=args.knowledge,
                   model=args.model, backend=args.backend, max_new_tokens=args.max_new_tokens,
                   templates=args.templates, cache_dir=args.cache_dir, precision=args.precision))
    return 0
