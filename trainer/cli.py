"""`llm4msr train`: the fast experiment path (no TFX) on a canonical data set.

Settings come from, in rising precedence: the defaults of `ModelConfig` and `TrainConfig`, the
`--config` file (ModelConfig fields, plus TrainConfig fields under `"training"`), explicit flags."""
import json
import math
import pathlib

from llm4msr.contract import KNOWLEDGE_REDUCTION
from llm4msr.trainer.knowledge_modes import KNOWLEDGE_MODES  # TF-free: building the parser stays fast

MODEL_FLAGS = ("backbone", "knowledge", "learning_rate")
TRAINING_FLAGS = ("seed", "epochs", "patience", "batch_size", "distribute")


def add_parser(subparsers) -> None:
    train = subparsers.add_parser("train", help="train and evaluate a model on a canonical data set (no TFX)")
    train.add_argument("--data", required=True, help="canonical data set folder (`llm4msr data prepare --out`)")
    train.add_argument("--backbone", help="dnn, shared_bottom, mmoe, ple, star, or any registered backbone "
                                          "(default dnn)")
    train.add_argument("--knowledge", help=f"one of {', '.join(KNOWLEDGE_MODES)}, or levels joined by '+' "
                                           f"(e.g. user+item); default none")
    train.add_argument("--knowledge-dir", help="knowledge folder (needed unless --knowledge none)")
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--epochs", type=int, help="maximum epochs (early stopping on eval AUC; default 10)")
    train.add_argument("--patience", type=int, help="epochs without eval AUC gain before stopping (default 2)")
    train.add_argument("--batch-size", type=int, help="default 1024")
    train.add_argument("--distribute", choices=["auto", "none", "multi_worker"],
                       help="auto (default): one MultiWorkerMirroredStrategy replica per worker when TF_CONFIG "
                            "names several; run the same command on every worker")
    train.add_argument("--learning-rate", type=float, help="default 1e-3")
    train.add_argument("--knowledge-reduction", type=int, default=KNOWLEDGE_REDUCTION, metavar="K",
                       help=f"reduce every knowledge level to its K leading principal components on the train "
                            f"rows, in Transform (default {KNOWLEDGE_REDUCTION}; 0: the LLM's width, normalised only)")
    train.add_argument("--config", help="JSON file with ModelConfig fields (and TrainConfig fields under "
                                        "\"training\"); flags given explicitly override it")
    train.add_argument("--out", help="write the result as JSON here")
    train.set_defaults(func=_train)


def _train(args) -> int:
    from llm4msr.errors import UserFacingError
    from llm4msr.trainer.fast import format_report, load_knowledge, train
    from llm4msr.trainer.features import ConfigError
    from llm4msr.trainer.model import ModelConfig
    from llm4msr.trainer.training import TrainConfig

    try:
        extra = json.loads(pathlib.Path(args.config).read_text()) if args.config else {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{args.config}: expected a JSON object of ModelConfig fields")
        training = dict(extra.pop("training", {}))
        extra.update({name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name) is not None})
        training.update({name: getattr(args, name) for name in TRAINING_FLAGS if getattr(args, name) is not None})
        config, training = ModelConfig.from_dict(extra), TrainConfig.from_dict(training)
    except (ConfigError, OSError, json.JSONDecodeError) as error:
        raise UserFacingError(str(error)) from None
    load_knowledge(args.knowledge_dir, config.knowledge, args.data)  # fail before TensorFlow work starts
    result = train(args.data, config, args.knowledge_dir, training, knowledge_reduction=args.knowledge_reduction)
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
