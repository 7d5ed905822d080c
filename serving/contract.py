"""The serving contract shared by the server, the client, the knowledge store and the tests.

It mirrors `llm4msr.trainer.run_fn.export` (signature and tensor names) and the Pusher's layout:
`<model_dir>/<version>/` is a SavedModel, with `assets.extra/knowledge/` (the knowledge store of
that version) and `assets.extra/tf_serving_warmup_requests` (PredictionLogs replayed at load).
The names are repeated here rather than imported so that serving does not import TFX.
"""
import pathlib
from typing import Dict

MODEL_NAME = "llm4msr"
DEFAULT_MODEL_DIR = "runs/serving/llm4msr"  # PipelineConfig.serving_dir
DEFAULT_SIGNATURE = "serving_default"  # serialized tf.Example -> probability
RAW_SIGNATURE = "predict_raw"  # named raw tensors + knowledge vectors -> probability
PREDICTION_KEY = "probability"
ID_INPUTS = ("user_id", "item_id", "scenario")
USER_KNOWLEDGE, SCENARIO_KNOWLEDGE, ITEM_KNOWLEDGE = "user_knowledge", "scenario_knowledge", "item_knowledge"
KNOWLEDGE_INPUTS = (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE, ITEM_KNOWLEDGE)
KNOWLEDGE_DIR = pathlib.Path("assets.extra") / "knowledge"
WARMUP_FILE = pathlib.Path("assets.extra") / "tf_serving_warmup_requests"

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # 1 user x 10k candidates x 2 x 384 floats is ~30 MB
DEFAULT_MAX_BATCH = 1024  # candidates per request; larger lists are split by the client


PER_CANDIDATE_INPUT = "item_id"  # predict_raw: one row per candidate; every other input may have 1 row
# (item_knowledge, when the model takes it, has a row per candidate too: the client fills it from the store)


def broadcast_to_candidates(features: dict) -> dict:
    """`predict_raw` inputs with one row for the whole request (user id, scenario, knowledge vectors)
    repeated for every candidate, inside the signature: a request of 1 user x 100 candidates then
    carries each 384-float vector once (~3 KB, not ~300 KB). Inputs with a row per candidate pass
    unchanged; any other row count fails (the servers check it first, with a clear message)."""
    import tensorflow as tf

    rows = tf.shape(features[PER_CANDIDATE_INPUT])[:1]
    return {name: tf.broadcast_to(value, tf.concat([rows, tf.shape(value)[1:]], 0))
            for name, value in features.items()}


def refuse_non_finite(features: dict) -> dict:
    """`features` with every knowledge input checked for NaN and infinity inside the signature
    (`CheckNumerics`): a request carrying one fails with INVALID_ARGUMENT naming the input in any
    TF Serving, for tf.Examples as for raw tensors, instead of being scored."""
    import tensorflow as tf

    return {name: tf.debugging.assert_all_finite(value, f"input {name!r} holds a non-finite value (NaN or infinity)")
            if name in KNOWLEDGE_INPUTS else value for name, value in features.items()}


def version_dirs(model_dir) -> Dict[int, pathlib.Path]:
    """Integer-named sub-folders holding a SavedModel, as TF Serving's file system source sees them."""
    root = pathlib.Path(model_dir)
    if not root.is_dir():
        return {}
    return {int(p.name): p for p in root.iterdir()
            if p.name.isdigit() and (p / "saved_model.pb").is_file()}
