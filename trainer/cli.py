"""`llm4msr train`: the fast experiment path (no TFX) on a canonical data set."""
import json
import math
import pathlib


# Literal here so that building the CLI parser does not import TensorFlow; ModelConfig validates.
KNOWLEDGE_MODES = ("none", "user", "scenario", "both")


def add_parser(subparsers) -> None:
    train = subparsers.add_parser("train", help="train and evaluate a model on a canonical data set (no TFX)")
    train.add_argument("--data", required=True, help="canonical data set folder (`llm4msr data prepare --out`)")
    train.add_argument("--backbone", default="dnn",
                       help="dnn, shared_bottom, mmoe, ple, star, or any registered backbone (default dnn)")
    train.add_argument("--knowledge", default="none", choices=KNOWLEDGE_MODES)
    train.add_argument("--knowledge-dir", help="knowledge folder (needed unless --knowledge none)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=10, help="maximum epochs (early stopping on eval AUC)")
    train.add_argument("--patience", type=int, default=2, help="epochs without eval AUC gain before stopping")
    train.add_argument("--batch-size", type=int, default=1024)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--config", help="JSON file with further ModelConfig fields")
    train.add_argument("--out", help="write the result as JSON here")
    train.set_defaults(func=_train)


def _train(args) -> int:
    from llm4msr.errors import UserFacingError
    from llm4msr.trainer.fast import format_report, load_knowledge, train
    from llm4msr.trainer.features import ConfigError
    from llm4msr.trainer.model import ModelConfig

    load_knowledge(args.knowledge_dir, args.knowledge)  # fail before TensorFlow work starts
    try:
        extra = json.loads(pathlib.Path(args.config).read_text()) if args.config else {}
        config = ModelConfig.from_dict({**extra, "backbone": args.backbone, "knowledge": args.knowledge,
                                        "learning_rate": args.learning_rate})
    except (ConfigError, OSError, json.JSONDecodeError) as error:
        raise UserFacingError(str(error)) from None
    result = train(args.data, config, args.knowledge_dir, seed=args.seed, epochs=args.epochs,
                   batch_size=args.batch_size, patience=args.patience)
    print(format_report(result))
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _json_safe(value):
    """NaN (an undefined AUC) becomes null, which JSON can carry."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
