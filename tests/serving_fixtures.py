"""A small pushed model for the serving tests and the benchmark, without the TFX pipeline.

`push_model(model_dir, version)` writes `<model_dir>/<version>/` exactly as the Pusher does: a
SavedModel with the three signatures of `llm4msr.trainer.run_fn.export` (same names, dtypes and
shapes; a lookup table stands in for the Transform vocabularies and the real `scenario_index`
maps scenarios), the knowledge store and the warmup requests. The model is
`llm4msr.trainer.model.build_model` with untrained random weights: scores differ per input, which
is all the serving tests need.
"""
import pathlib
import shutil
from typing import Sequence

import numpy as np
import tensorflow as tf

from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, KnowledgeRecord, write_knowledge
from llm4msr.serving.assets import write_serving_assets
from llm4msr.contract import (PREDICTION_KEY, RAW_FEATURES, SCENARIO_KNOWLEDGE, USER_KNOWLEDGE,
                              broadcast_to_candidates, refuse_non_finite)
from llm4msr.trainer.model import build_model
from llm4msr.transform.preprocessing import scenario_index

SCENARIOS = ("S0", "S1", "S2")
USERS = tuple(str(u) for u in range(1, 41))
ITEMS = tuple(str(i) for i in range(1, 501))
MODEL_CONFIG = {"backbone": "dnn", "knowledge": "both", "embedding_dim": 8, "hidden_units": [32],
                "projection_dim": 8, "meta_layers": 1, "meta_generator_units": 16, "meta_tower_units": [16]}


def write_fixture_knowledge(folder, dim: int, seed: int = 0) -> pathlib.Path:
    rng = np.random.default_rng(seed)

    def records(ids):
        return {i: KnowledgeRecord(i, rng.normal(size=dim).astype(np.float32)) for i in ids}

    return write_knowledge(folder, records([*USERS, COLD_START_ID]), records(SCENARIOS),
                           {"dim": dim, "fingerprint": f"serving-fixture-{seed}"})


class _Exported(tf.Module):
    def __init__(self, model: tf.keras.Model, dim: int):
        super().__init__()
        # the variables only: tracking the Keras model would make saving trace every layer (slow)
        self.model_variables = list(model.variables)
        self.call_model = lambda features: model(features, training=False)
        self.tables = {name: _vocabulary(values) for name, values in (("user_id", USERS), ("item_id", ITEMS))}
        self.raw_spec = {name: tf.io.FixedLenFeature([1], tf.string) for name in RAW_FEATURES}
        self.raw_spec.update({name: tf.io.FixedLenFeature([dim], tf.float32)
                              for name in (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE)})

    def transform(self, raw):
        """The Transform graph's equivalent: ids -> vocabulary index (OOV = size), scenario -> index."""
        out = {name: self.tables[name].lookup(tf.reshape(raw[name], [-1])) for name in self.tables}
        out["scenario"] = scenario_index(tf.reshape(raw["scenario"], [-1]), SCENARIOS)
        out.update({name: raw[name] for name in (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE)})
        return out

    def predict(self, raw):
        return {PREDICTION_KEY: self.call_model(self.transform(raw))}


def _vocabulary(values: Sequence[str]) -> tf.lookup.StaticHashTable:
    initializer = tf.lookup.KeyValueTensorInitializer(tf.constant(values), tf.range(len(values), dtype=tf.int64))
    return tf.lookup.StaticHashTable(initializer, default_value=len(values))


def export_model(path, dim: int, seed: int = 0) -> None:
    """The SavedModel with the signatures of `run_fn.export` (no AutoGraph: converting Keras internals
    would take ~20 s and nothing here has tensor-dependent Python control flow)."""
    tf.keras.utils.set_random_seed(seed)
    spec = {"categorical": {"user_id": len(USERS) + 1, "item_id": len(ITEMS) + 1, "scenario": len(SCENARIOS)},
            "user_knowledge_dim": dim, "scenario_knowledge_dim": dim}
    module = _Exported(build_model(MODEL_CONFIG, spec), dim)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(examples):
        return module.predict(refuse_non_finite(tf.io.parse_example(examples, module.raw_spec)))

    raw_signature = {name: tf.TensorSpec([None], tf.string, name=name) for name in RAW_FEATURES}
    raw_signature.update({name: tf.TensorSpec([None, dim], tf.float32, name=name)
                          for name in (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE)})

    @tf.function(input_signature=[raw_signature], autograph=False)
    def serve_raw(features):
        return module.predict({k: tf.expand_dims(v, -1) if k in RAW_FEATURES else v
                               for k, v in broadcast_to_candidates(refuse_non_finite(features)).items()})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def transform_features(examples):
        return module.transform(tf.io.parse_example(examples, module.raw_spec))

    tf.saved_model.save(module, str(path), signatures={
        "serving_default": serve_examples, "predict_raw": serve_raw, "transform_features": transform_features})


def push_model(model_dir, version: int, dim: int = 16, seed: int = 0) -> pathlib.Path:
    """Writes `<model_dir>/<version>/` atomically (staged next to it, then renamed), like a Pusher should."""
    model_dir = pathlib.Path(model_dir)
    staging = model_dir / f".staging-{version}"
    export_model(staging, dim, seed)
    knowledge = write_fixture_knowledge(model_dir / f".knowledge-{version}", dim, seed)
    write_serving_assets(staging, knowledge, ITEMS[:100])
    shutil.rmtree(knowledge)
    target = model_dir / str(version)
    staging.rename(target)
    return target


def copy_version(model_dir, source: int, target: int) -> pathlib.Path:
    """A new version with the same content, published atomically (copy aside, then rename)."""
    model_dir = pathlib.Path(model_dir)
    staging = model_dir / f".copy-{target}"
    shutil.copytree(model_dir / str(source), staging)
    return staging.rename(model_dir / str(target))
