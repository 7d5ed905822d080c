"""The TFX Trainer's `run_fn` (Trainer(run_fn="llm4msr.trainer.run_fn.run_fn")) and the exported
serving signatures.

Signatures of the exported SavedModel:
- `serving_default`: serialized `tf.Example` (raw features + the knowledge vectors) -> `probability`;
  the Transform graph runs inside, so clients send raw ids.
- `predict_raw`: named raw tensors (`item_id` strings `[B]`, one per candidate; `user_id`, `scenario`
  strings and `user_knowledge`, `scenario_knowledge` float32 `[., dim]` with B rows or 1 row for the
  whole request, `dim` the store's width (the reduced one when the Transform reduces);
  `item_knowledge` `[B, dim]`, one per candidate, when the examples carry item knowledge) -> `probability`: what TF Serving clients call with the knowledge embeddings as input
  features.
- `transform_features`: serialized `tf.Example` -> transformed features (used by the Evaluator).

The Trainer reads the joined raw examples and applies the Transform graph in `tf.data`, so the
export can also carry what serving needs, versioned with the model in `assets.extra/`:
`knowledge/` (the knowledge the examples were joined with, through the Transform's reduction when it
reduces: the serving knowledge store) and
`tf_serving_warmup_requests` (real eval examples, one request per signature).
"""
import dataclasses
import json
import os
import tempfile
from typing import Tuple

import numpy as np

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from llm4msr.contract import (DEFAULT_SIGNATURE, ITEM_KNOWLEDGE, KNOWLEDGE_FEATURES, LABEL, PREDICTION_KEY,
                              RAW_FEATURES, RAW_SIGNATURE, SCENARIO_KNOWLEDGE, TRANSFORM_SIGNATURE, USER_KNOWLEDGE,
                              broadcast_to_candidates, refuse_non_finite)
from llm4msr.pipeline.components import JOINED_KNOWLEDGE_DIR
from llm4msr.pipeline.data.canonical import read_scenario_ids
from llm4msr.quiet import is_quiet
from llm4msr.serving.assets import write_serving_assets
from llm4msr.trainer.features import input_spec_from_transform
from llm4msr.trainer.model import ModelConfig
from llm4msr.trainer.training import TrainConfig

WARMUP_EXAMPLES = 16


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains with the one training loop (`llm4msr.trainer.training.fit`) and exports the model.

    `custom_config`: `model` (ModelConfig fields), `training` (TrainConfig fields), `dataset_dir`
    (the canonical data set, a path or a URI: its scenarios.json orders the scenarios).
    TFX's own arguments win over them: `train_steps` caps the train steps, `eval_steps` the eval
    batches per epoch, `hyperparameters` (a Tuner's best, or a dict of ModelConfig/TrainConfig
    fields) override the config, and `model_run_dir` receives TensorBoard logs and the summary.
    With a `TF_CONFIG` naming several workers, each worker calls `run_fn` and trains one replica of
    the model (`training.distribute`); the chief exports."""
    from llm4msr.trainer.training import distribution_strategy, fit, is_chief

    config = fn_args.custom_config
    model_config, training = resolve_settings(config, fn_args)
    strategy = distribution_strategy(training.distribute)  # before TensorFlow runs anything
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    scenario_ids = read_scenario_ids(config["dataset_dir"])
    spec = input_spec_from_transform(tft_output, len(scenario_ids))
    train, evaluation = (_dataset(files, fn_args.data_accessor, tft_output, training.batch_size, shuffle=shuffle,
                                  seed=training.seed, cache_budget_mb=training.example_cache_mb)
                         for files, shuffle in ((fn_args.train_files, True), (fn_args.eval_files, False)))
    if fn_args.eval_steps:
        evaluation = evaluation.take(fn_args.eval_steps)
    callbacks = []
    if fn_args.model_run_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"))
    ranking, summary = fit(model_config, spec, train, evaluation, training, callbacks, verbose=0 if is_quiet() else 2,
                           strategy=strategy)
    if not is_chief():  # every worker trained the same replica; the chief writes the outputs
        return
    export(ranking.model, tft_output, fn_args.serving_model_dir)
    knowledge = os.path.join(_examples_root(fn_args.train_files), JOINED_KNOWLEDGE_DIR)
    examples = _serialized_examples(fn_args.eval_files, WARMUP_EXAMPLES)
    with tempfile.TemporaryDirectory() as scratch:
        store = reduced_store(knowledge, tft_output, scenario_ids[0], os.path.join(scratch, "knowledge"))
        write_serving_assets(fn_args.serving_model_dir, store, item_ids=[], samples=_warmup_samples(examples),
                             examples=examples)
    if fn_args.model_run_dir:
        summary.update(model=model_config.to_dict(), training=training.to_dict(), input_spec=spec.to_dict())
        with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "train_summary.json"), "w") as handle:
            handle.write(json.dumps(summary, indent=2))


def resolve_settings(custom_config: dict, fn_args) -> Tuple[ModelConfig, TrainConfig]:
    """ModelConfig and TrainConfig from the custom config, overridden by the Tuner's hyper-parameters
    (each name must be a field of one of them) and by `train_steps`."""
    model, training = dict(custom_config.get("model") or {}), dict(custom_config.get("training") or {})
    hyperparameters = getattr(fn_args, "hyperparameters", None) or {}
    if isinstance(hyperparameters, dict) and "values" in hyperparameters:  # keras_tuner HyperParameters config
        hyperparameters = hyperparameters["values"]
    model_fields, training_fields = set(ModelConfig.__dataclass_fields__), set(TrainConfig.__dataclass_fields__)
    for name, value in dict(hyperparameters).items():
        if name in model_fields:
            model[name] = value
        elif name in training_fields:
            training[name] = value
        else:
            raise ValueError(f"hyperparameter {name!r} is neither a ModelConfig nor a TrainConfig field")
    if getattr(fn_args, "train_steps", None):
        training["max_steps"] = int(fn_args.train_steps)
    return ModelConfig.from_dict(model), TrainConfig.from_dict(training)


def _dataset(files, data_accessor, tft_output, batch_size: int, shuffle: bool, seed: int,
             cache_budget_mb: int = 0) -> tf.data.Dataset:
    """Raw joined examples -> (transformed features, label) batches.

    When the split's transformed examples fit in `cache_budget_mb`, the first epoch reads, parses and
    transforms them and keeps them in memory; later epochs replay them, reshuffled over the whole
    split. Otherwise every epoch streams from the files."""
    fitting_rows = cache_budget_mb * 2**20 // _transformed_row_bytes(tft_output)
    rows = _count_records(files, limit=fitting_rows + 1) if fitting_rows else 0  # a large split: stops early
    cached = 0 < rows <= fitting_rows
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size, label_key=LABEL, num_epochs=1, shuffle=shuffle and not cached,
        shuffle_buffer_size=100_000 if shuffle else 1, shuffle_seed=seed)
    raw = data_accessor.tf_dataset_factory(files, options, tft_output.raw_metadata.schema)
    transform = tft_output.transform_features_layer()
    # not through AutoGraph: converting the Transform layer's call took 13 s of the tiny fixture's Trainer
    apply = tf.autograph.experimental.do_not_convert(lambda features, label: (transform(features), label))
    batches = raw.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    if cached:
        batches = batches.cache()
        if shuffle:
            batches = batches.unbatch().shuffle(rows, seed=seed).batch(batch_size)
    return batches.prefetch(2)


def _count_records(patterns, limit: int = -1) -> int:
    """The number of records in the files matching `patterns`, counting at most `limit` (-1: all)."""
    files = [name for pattern in patterns for name in tf.io.gfile.glob(pattern)]
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    return int(tf.data.TFRecordDataset(files, compression_type=compression).take(limit).reduce(
        np.int64(0), lambda count, _: count + 1).numpy())


def _transformed_row_bytes(tft_output) -> int:
    """The memory one transformed example and its label take (a string counted as 64 bytes: its
    dtype has no fixed size)."""
    return 4 + sum(int(np.prod(spec.shape or [1])) * (spec.dtype.size or 64)
                   for spec in tft_output.transformed_feature_spec().values())


def _examples_root(split_files) -> str:
    """`<uri>/Split-train/*` -> `<uri>`."""
    return os.path.dirname(os.path.dirname(split_files[0]))


def _serialized_examples(split_files, count: int):
    files = [path for pattern in split_files for path in tf.io.gfile.glob(pattern)]
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    return [record.numpy() for record in records]


def _warmup_samples(serialized_examples):
    """Real eval examples as (user, scenario, [items]) warmup requests, one per user and scenario."""
    samples = {}
    for record in serialized_examples:
        feature = tf.train.Example.FromString(record).features.feature
        user, item, scenario = (feature[name].bytes_list.value[0].decode() for name in RAW_FEATURES)
        samples.setdefault((user, scenario), []).append(item)
    return [(user, scenario, items) for (user, scenario), items in samples.items()]


def knowledge_widths(tft_output: tft.TFTransformOutput) -> Tuple[dict, dict]:
    """(raw, transformed) width of every knowledge input the examples carry: they differ when the
    Transform reduces the knowledge (`knowledge_reduction`)."""
    raw = tft_output.raw_feature_spec()
    transformed = tft_output.transformed_feature_spec()
    names = [name for name in KNOWLEDGE_FEATURES if name in raw]
    return ({name: raw[name].shape[-1] for name in names}, {name: transformed[name].shape[-1] for name in names})


def export(model: tf.keras.Model, tft_output: tft.TFTransformOutput, path: str) -> None:
    """Saves `model` with the Transform graph and the three serving signatures. `predict_raw` takes
    the knowledge as the pushed store holds it: already reduced when the Transform reduces it (the
    store is reduced with the same graph at push time, `reduced_store`), so a request never
    carries the LLM-wide vectors."""
    model.tft_layer = tft_output.transform_features_layer()  # tracked, so its tables and assets are saved
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != LABEL}
    raw_dims, served_dims = knowledge_widths(tft_output)
    reduced = raw_dims != served_dims

    def predict(raw_features):
        return {PREDICTION_KEY: model(model.tft_layer(raw_features))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(examples):
        return predict(refuse_non_finite(tf.io.parse_example(examples, raw_spec)))

    raw_signature = {name: tf.TensorSpec([None], tf.string, name=name) for name in RAW_FEATURES}
    raw_signature.update({name: tf.TensorSpec([None, dim], tf.float32, name=name)
                          for name, dim in served_dims.items()})

    @tf.function(input_signature=[raw_signature], autograph=False)
    def serve_raw(features):
        features = broadcast_to_candidates(refuse_non_finite(features))
        # the Transform graph was traced on parsed examples, whose scalar features are [B, 1]
        raw = {name: tf.expand_dims(features[name], -1) for name in RAW_FEATURES}
        if not reduced:
            raw.update({name: features[name] for name in served_dims})
            return predict(raw)
        rows = tf.shape(raw[RAW_FEATURES[0]])[0]
        raw.update({name: tf.zeros([rows, dim]) for name, dim in raw_dims.items()})  # outputs replaced below
        transformed = model.tft_layer(raw)
        transformed.update({name: features[name] for name in served_dims})
        return {PREDICTION_KEY: model(transformed)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def transform_features(examples):
        raw = tf.io.parse_example(examples, raw_spec)
        return model.tft_layer(raw)

    # without traced layer calls: serving and TFMA use the signatures, and tf.keras.models.load_model
    # rebuilds our layers from their configs; tracing them took 7-23 s of the export (tiny fixture)
    # and doubled the Evaluator's load
    model.save(path, save_format="tf", save_traces=False, signatures={
        DEFAULT_SIGNATURE: serve_examples,
        RAW_SIGNATURE: serve_raw,
        TRANSFORM_SIGNATURE: transform_features,
    })


def reduced_store(knowledge_folder: str, tft_output: tft.TFTransformOutput, scenario_id: str, out: str) -> str:
    """The knowledge folder with every vector through the Transform's reduction, written to `out`
    (the served store); `knowledge_folder` itself when the Transform does not reduce."""
    from llm4msr.pipeline.knowledge.artifact import read_knowledge, write_knowledge
    from llm4msr.transform.preprocessing import transform_knowledge

    raw_dims, served_dims = knowledge_widths(tft_output)
    if raw_dims == served_dims:
        return knowledge_folder
    knowledge = read_knowledge(knowledge_folder)
    layer = tft_output.transform_features_layer()
    levels = {USER_KNOWLEDGE: knowledge.users, SCENARIO_KNOWLEDGE: knowledge.scenarios, ITEM_KNOWLEDGE: knowledge.items}
    reduced = {}
    for name, records in levels.items():
        if name not in raw_dims:
            reduced[name] = {}  # a level the examples do not carry is not served
            continue
        vectors = transform_knowledge(layer, name, np.stack([r.vector for r in records.values()]), raw_dims, scenario_id)
        reduced[name] = {key: dataclasses.replace(record, vector=vector)
                         for (key, record), vector in zip(records.items(), vectors)}
    metadata = {**knowledge.metadata, "dim": int(next(iter(served_dims.values()))), "reduced_from": knowledge.dim}
    write_knowledge(out, reduced[USER_KNOWLEDGE], reduced[SCENARIO_KNOWLEDGE], metadata, reduced[ITEM_KNOWLEDGE] or None)
    return out
