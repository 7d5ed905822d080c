"""The TFX Trainer's `run_fn` (Trainer(run_fn="llm4msr.trainer.run_fn.run_fn")) and the exported
serving signatures.

Signatures of the exported SavedModel:
- `serving_default`: serialized `tf.Example` (raw features + both knowledge vectors) -> `probability`;
  the Transform graph runs inside, so clients send raw ids.
- `predict_raw`: named raw tensors (`item_id` strings `[B]`, one per candidate; `user_id`, `scenario`
  strings and `user_knowledge`, `scenario_knowledge` float32 `[., dim]` with B rows or 1 row for the
  whole request) -> `probability`: what TF Serving clients call with the knowledge embeddings as
  input features.
- `transform_features`: serialized `tf.Example` -> transformed features (used by the Evaluator).

The Trainer reads the joined raw examples and applies the Transform graph in `tf.data`, so the
export can also carry what serving needs, versioned with the model in `assets.extra/`:
`knowledge/` (the knowledge the examples were joined with: the serving knowledge store) and
`tf_serving_warmup_requests` (real eval examples, one request per signature).
"""
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from llm4msr.pipeline.components import FEATURES, KNOWLEDGE_DIR, LABEL, SCENARIO_KNOWLEDGE, USER_KNOWLEDGE
from llm4msr.serving.assets import write_serving_assets
from llm4msr.serving.contract import broadcast_to_candidates
from llm4msr.transform.preprocessing import ID_FEATURES, OOV_BUCKETS

PREDICTION_KEY = "probability"
RAW_SIGNATURE = "predict_raw"
WARMUP_EXAMPLES = 16


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    from llm4msr.trainer.model import compile_ranking_model

    config = fn_args.custom_config
    # same seed: same initialisation and data order, so reruns differ by thread scheduling only
    seed = int(config.get("seed", 0))
    tf.keras.utils.set_random_seed(seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    spec = input_spec(tft_output, len(config["scenarios"]))
    batch_size = int(config.get("batch_size", 1024))
    train = _dataset(fn_args.train_files, fn_args.data_accessor, tft_output, batch_size, shuffle=True, seed=seed)
    evaluation = _dataset(fn_args.eval_files, fn_args.data_accessor, tft_output, batch_size, shuffle=False, seed=seed)

    ranking = compile_ranking_model(config["model"], spec)
    ranking.fit(train, validation_data=evaluation, epochs=int(config.get("epochs", 3)),
                  callbacks=[tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=1,
                                                              restore_best_weights=True)],
                  verbose=2)
    export(ranking.model, tft_output, fn_args.serving_model_dir)
    knowledge = os.path.join(_examples_root(fn_args.train_files), KNOWLEDGE_DIR)
    samples = _warmup_samples(_serialized_examples(fn_args.eval_files, WARMUP_EXAMPLES))
    write_serving_assets(fn_args.serving_model_dir, knowledge, item_ids=[], samples=samples)


def input_spec(tft_output: tft.TFTransformOutput, num_scenarios: int) -> dict:
    categorical = {name: tft_output.vocabulary_size_by_name(name) + OOV_BUCKETS for name in ID_FEATURES}
    categorical["scenario"] = num_scenarios
    shapes = tft_output.transformed_feature_spec()
    return {"categorical": categorical, "dense": [],
            "user_knowledge_dim": int(shapes[USER_KNOWLEDGE].shape[-1]),
            "scenario_knowledge_dim": int(shapes[SCENARIO_KNOWLEDGE].shape[-1])}


def _dataset(files, data_accessor, tft_output, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """Raw joined examples -> (transformed features, label) batches."""
    options = tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL, num_epochs=1, shuffle=shuffle,
                                             shuffle_buffer_size=100_000 if shuffle else 1, shuffle_seed=seed)
    raw = data_accessor.tf_dataset_factory(files, options, tft_output.raw_metadata.schema)
    transform = tft_output.transform_features_layer()
    return raw.map(lambda features, label: (transform(features), label),
                   num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


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
        user, item, scenario = (feature[name].bytes_list.value[0].decode() for name in FEATURES)
        samples.setdefault((user, scenario), []).append(item)
    return [(user, scenario, items) for (user, scenario), items in samples.items()]


def export(model: tf.keras.Model, tft_output: tft.TFTransformOutput, path: str) -> None:
    """Saves `model` with the Transform graph and the three serving signatures."""
    model.tft_layer = tft_output.transform_features_layer()  # tracked, so its assets are saved
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k != LABEL}
    knowledge_dims = {name: raw_spec[name].shape[-1] for name in (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE)}

    def predict(raw_features):
        return {PREDICTION_KEY: model(model.tft_layer(raw_features))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(examples):
        return predict(tf.io.parse_example(examples, raw_spec))

    raw_signature = {name: tf.TensorSpec([None], tf.string, name=name) for name in FEATURES}
    raw_signature.update({name: tf.TensorSpec([None, dim], tf.float32, name=name)
                          for name, dim in knowledge_dims.items()})

    @tf.function(input_signature=[raw_signature], autograph=False)
    def serve_raw(features):
        # the Transform graph was traced on parsed examples, whose scalar features are [B, 1]
        return predict({name: tf.expand_dims(value, -1) if name in FEATURES else value
                        for name, value in broadcast_to_candidates(features).items()})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def transform_features(examples):
        raw = tf.io.parse_example(examples, raw_spec)
        return model.tft_layer(raw)

    model.save(path, save_format="tf", signatures={
        "serving_default": serve_examples,
        RAW_SIGNATURE: serve_raw,
        "transform_features": transform_features,
    })
