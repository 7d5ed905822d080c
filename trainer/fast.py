"""The fast experiment path without TFX: canonical data set (+ knowledge folder) -> trained model ->
test metrics (AUC, gAUC, logloss, calibration; overall, per scenario, per user history and item
popularity slice).

Features are the pipeline's, by construction: the Transform `preprocessing_fn`
(`llm4msr.transform.preprocessing`) is analysed on the train split with tf.Transform on an
in-memory Beam pipeline and its graph encodes every split, exactly as the TFX Transform and
Trainer do. The analysed graph is cached on disk by data set and code fingerprint
(`LLM4MSR_CACHE_DIR`, default `~/.cache/llm4msr`), so reruns start at once. Knowledge vectors are
inputs, not learned: every user (item) gets their extracted vector (unknown ones the cold-start
vector), gathered per batch from an in-memory table instead of being stored per row.
"""
import hashlib
import json
import os
import pathlib
import shutil
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from llm4msr.contract import (ITEM_KNOWLEDGE, KNOWLEDGE_FEATURES, KNOWLEDGE_REDUCTION, LABEL, RAW_FEATURES, SCENARIO,
                              SCENARIO_KNOWLEDGE, USER_ID, USER_KNOWLEDGE)
from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data.canonical import Dataset, read_dataset
from llm4msr.pipeline.knowledge.artifact import Knowledge, read_knowledge
from llm4msr.trainer import metrics
from llm4msr.trainer.features import InputSpec, input_spec_from_transform
from llm4msr.trainer.model import ModelConfig
from llm4msr.trainer.training import TrainConfig, distribution_strategy, fit
from llm4msr.transform import preprocessing

USER_ROW, SCENARIO_ROW, ITEM_ROW = "_user_row", "_scenario_row", "_item_row"  # indices into the knowledge tables
ENCODE_CHUNK = 65_536  # rows per call of the Transform graph when encoding a split


@dataclass
class Encoded:
    """Model-ready arrays for one split, plus the raw ids and slice buckets the metrics group by."""
    features: Dict[str, np.ndarray]
    labels: np.ndarray
    users: np.ndarray
    scenarios: np.ndarray
    slices: Dict[str, np.ndarray]  # slice name -> bucket name per row


class ExampleEncoder:
    """Turns canonical interactions into model inputs with the Transform graph fitted on train."""

    def __init__(self, dataset: Dataset, knowledge: Optional[Knowledge] = None,
                 knowledge_reduction: int = KNOWLEDGE_REDUCTION):
        self.scenario_ids = dataset.scenario_ids
        self.knowledge = knowledge
        self.tables = knowledge_tables(dataset, knowledge)
        # the knowledge is a Transform output (normalised, optionally reduced), analysed on the train
        # rows' vectors like the pipeline's; each table goes through the fitted graph once
        self.knowledge_reduction = knowledge_reduction if self.tables else 0
        self.transform_output = fit_transform(dataset, self.tables, self.knowledge_reduction)
        self.transform_layer = self.transform_output.transform_features_layer()
        self.tables = {name: (row, column, index, self._normalize(name, vectors))
                       for name, (row, column, index, vectors) in self.tables.items()}
        self.spec = input_spec_from_transform(self.transform_output, len(self.scenario_ids))

    def input_spec(self) -> InputSpec:
        return self.spec

    def encode(self, dataset: Dataset, split: str) -> Encoded:
        rows = dataset.split(split).reset_index(drop=True)
        transformed = self.transform(rows)
        names = [*self.spec.categorical, *self.spec.dense]
        features = {name: transformed[name] for name in names}
        for row_feature, column, index, _ in self.tables.values():
            features[row_feature] = rows[column].map(index).to_numpy(np.int64)
        slices = {name: np.asarray(preprocessing.slice_names(name), dtype=object)[transformed[name]]
                  for name in preprocessing.SLICES}
        return Encoded(features, rows[LABEL].to_numpy(np.float32), rows[USER_ID].to_numpy(),
                       rows[SCENARIO].to_numpy(), slices)

    def transform(self, rows) -> Dict[str, np.ndarray]:
        """The Transform graph on raw interaction rows (ids as the examples carry them, `[B, 1]`);
        the knowledge outputs are not per row here (see `_normalize`)."""
        outputs = {}
        for start in range(0, len(rows), ENCODE_CHUNK):
            chunk = rows.iloc[start:start + ENCODE_CHUNK]
            raw = {name: tf.constant(chunk[name].astype(str).to_numpy().reshape(-1, 1))
                   for name in RAW_FEATURES}
            for name, value in self.transform_layer(self._with_knowledge(raw, len(chunk))).items():
                if name not in KNOWLEDGE_FEATURES:
                    outputs.setdefault(name, []).append(value.numpy())
        return {name: np.concatenate(parts) for name, parts in outputs.items()}

    def _normalize(self, name: str, vectors: np.ndarray) -> np.ndarray:
        return preprocessing.transform_knowledge(self.transform_layer, name, vectors, self._raw_knowledge_dims(),
                                                 self.scenario_ids[0])

    def _raw_knowledge_dims(self) -> Dict[str, int]:
        return {name: self.knowledge.dim for name in self.tables}

    def _with_knowledge(self, raw: dict, rows: int) -> dict:
        """Zero vectors for the knowledge inputs the graph was analysed with (split encoding reads
        the other outputs; the knowledge comes from the tables)."""
        raw.update({name: tf.zeros([rows, dim]) for name, dim in self._raw_knowledge_dims().items()})
        return raw

    def tf_dataset(self, encoded: Encoded, batch_size: int, shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        """Batches of `(features, label)`, assembled from in-memory columns by row index: tf.data
        handles one index per example and gathers the features (and knowledge vectors, which are not
        stored per row) once per batch, instead of building and batching a dict per example."""
        columns = {name: tf.constant(values) for name, values in encoded.features.items()}
        labels = tf.constant(encoded.labels)
        rows = tf.data.Dataset.range(len(encoded.labels))
        if shuffle_seed is not None:
            rows = rows.shuffle(len(encoded.labels), seed=shuffle_seed, reshuffle_each_iteration=True)
        tables = {name: (row, tf.constant(vectors)) for name, (row, _, _, vectors) in self.tables.items()}

        def assemble(index):
            features = {name: tf.gather(column, index) for name, column in columns.items()}
            for name, (row, table) in tables.items():
                features[name] = tf.gather(table, features.pop(row))
            return features, tf.gather(labels, index)
        return rows.batch(batch_size).map(assemble, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def report(self, ranking, encoded: Encoded, batch_size: int) -> dict:
        scores = ranking.predict(self.tf_dataset(encoded, batch_size), verbose=0)
        return metrics.report(encoded.labels, scores, encoded.users, encoded.scenarios, self.scenario_ids,
                              slices=encoded.slices)


# -- the Transform, fitted on train -----------------------------------------------------------------

def knowledge_tables(dataset: Dataset, knowledge: Optional[Knowledge]) -> Dict[str, tuple]:
    """knowledge input -> (row feature, id column, {id: row}, `[rows, dim]` vectors) for every id
    of the data set: the vectors batches gather by row index."""
    if knowledge is None:
        return {}
    users = sorted(set(dataset.interactions["user_id"]))
    levels = [(USER_KNOWLEDGE, USER_ROW, "user_id", users, knowledge.user_matrix(users)),
              (SCENARIO_KNOWLEDGE, SCENARIO_ROW, "scenario", dataset.scenario_ids,
               knowledge.scenario_matrix(dataset.scenario_ids))]
    if knowledge.has_items:
        items = sorted(set(dataset.interactions["item_id"]))
        levels.append((ITEM_KNOWLEDGE, ITEM_ROW, "item_id", items, knowledge.item_matrix(items)))
    return {name: (row_feature, column, {key: row for row, key in enumerate(ids)}, vectors)
            for name, row_feature, column, ids, vectors in levels}


def fit_transform(dataset: Dataset, tables: Optional[Dict[str, tuple]] = None, knowledge_reduction: int = 0):
    """`preprocessing_fn` analysed on the train split (tf.Transform, in-memory Beam): a
    `TFTransformOutput`, cached on disk by the data set's and the feature code's fingerprints (and
    the knowledge's: the train rows carry their vectors, whose normalisation is analysed)."""
    import tensorflow_transform as tft

    if dataset.folder is None:
        raise ValueError("fit_transform needs a data set read from a folder (read_dataset)")
    target = _cache_dir() / "transform" / _transform_key(dataset, knowledge_reduction, tables)
    if not (target / "transform_fn").is_dir():
        _analyze(dataset, target, tables, knowledge_reduction)
    return tft.TFTransformOutput(str(target))


def _analyze(dataset: Dataset, target: pathlib.Path, tables: Optional[Dict[str, tuple]], reduction: int) -> None:
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from llm4msr.files import replace_dir, staging_dir

    train = dataset.split("train")
    vectors = {name: matrix[train[column].map(index).to_numpy()]
               for name, (_, column, index, matrix) in (tables or {}).items()}
    batches, adapter_config = _record_batches(train, vectors)
    config = transform_config(dataset, reduction)
    staging = staging_dir(target)
    try:
        # the rows reach Beam as an Arrow file, not as Create elements: Create pickles and
        # bz2-compresses its elements, which took minutes once the rows carried knowledge vectors
        rows_file = _write_arrow(batches, staging / "tmp" / "train.arrow")
        options = PipelineOptions(["--direct_running_mode=in_memory"])
        with beam.Pipeline(runner="DirectRunner", options=options) as pipeline:
            with tft_beam.Context(temp_dir=str(staging / "tmp")):
                rows = (pipeline | beam.Create(range(len(batches)))
                        | beam.Map(lambda index, path=str(rows_file): _read_arrow_batch(path, index)))
                transform_fn = ((rows, adapter_config)
                                | tft_beam.AnalyzeDataset(lambda inputs: preprocessing.preprocessing_fn(inputs, config)))
                _ = transform_fn | tft_beam.WriteTransformFn(str(staging))
        shutil.rmtree(staging / "tmp", ignore_errors=True)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_arrow(batches, path: pathlib.Path) -> pathlib.Path:
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.ipc.new_file(str(path), batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return path


def _read_arrow_batch(path: str, index: int):
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(path)).get_batch(index)


def _record_batches(rows, vectors: Optional[Dict[str, np.ndarray]] = None, batch_rows: int = 50_000):
    """Train rows as Arrow record batches of `[B, 1]` features and `[B, dim]` knowledge vectors
    (tf.Transform's fast input format)."""
    import pyarrow as pa
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

    def column(values, kind):
        return pa.array([[value] for value in values], type=pa.large_list(kind))

    def vector_column(matrix):
        dim = matrix.shape[1]
        offsets = pa.array(np.arange(0, matrix.size + 1, dim, dtype=np.int64))
        return pa.LargeListArray.from_arrays(offsets, pa.array(matrix.astype(np.float32).ravel()))

    arrays = {name: column(rows[name].astype(str).str.encode("utf-8"), pa.large_binary())
              for name in RAW_FEATURES}
    arrays[LABEL] = column(rows[LABEL].astype(int), pa.int64())
    spec = preprocessing.raw_feature_spec()
    for name, matrix in (vectors or {}).items():
        arrays[name] = vector_column(matrix)
        spec[name] = tf.io.FixedLenFeature([matrix.shape[1]], tf.float32)
    table = pa.RecordBatch.from_arrays(list(arrays.values()), list(arrays))
    schema = schema_utils.schema_from_feature_spec(spec)
    config = tensor_adapter.TensorAdapterConfig(
        table.schema, tensor_representation_util.InferTensorRepresentationsFromSchema(schema))
    return [table.slice(start, batch_rows) for start in range(0, len(rows), batch_rows)], config


def transform_config(dataset: Dataset, knowledge_reduction: int = 0) -> dict:
    """The `custom_config` of `preprocessing_fn`, as the pipeline's Transform gets it."""
    return {"dataset_dir": dataset.folder,
            "id_min_train_rows": preprocessing.ID_MIN_TRAIN_ROWS, "knowledge_reduction": knowledge_reduction}


def _transform_key(dataset: Dataset, knowledge_reduction: int = 0, tables: Optional[Dict[str, tuple]] = None) -> str:
    from llm4msr.pipeline.data.canonical import dataset_fingerprint

    config = {**transform_config(dataset, knowledge_reduction), "dataset_dir": dataset_fingerprint(dataset.folder)}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, (_, _, _, vectors) in sorted((tables or {}).items()):  # the vectors the reduction is fitted on
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(vectors).tobytes())
    digest.update(pathlib.Path(preprocessing.__file__).read_bytes())
    digest.update(pathlib.Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LLM4MSR_CACHE_DIR") or pathlib.Path.home() / ".cache" / "llm4msr")


# -- llm4msr train ------------------------------------------------------------------------------------

def load_knowledge(knowledge_dir, mode: str, data_dir=None) -> Optional[Knowledge]:
    """The knowledge folder when the mode needs one; a clear error when it is missing or (given
    `data_dir`) was extracted from another data set."""
    if mode == "none":
        return None
    if knowledge_dir is None:
        raise UserFacingError(f"--knowledge {mode} needs knowledge vectors: pass --knowledge-dir DIR "
                              f"(written by `llm4msr knowledge extract`), or use --knowledge none")
    knowledge = read_knowledge(knowledge_dir)
    if data_dir is not None:
        knowledge.check_made_from(data_dir)
    return knowledge


def train(data_dir, config: ModelConfig, knowledge_dir=None, training: Optional[TrainConfig] = None,
          verbose: int = 2, knowledge_reduction: int = KNOWLEDGE_REDUCTION) -> dict:
    """Trains with the one training loop and reports eval and test metrics."""
    training = training or TrainConfig()
    strategy = distribution_strategy(training.distribute)  # before the Transform starts TensorFlow
    knowledge = load_knowledge(knowledge_dir, config.knowledge, data_dir)
    dataset = read_dataset(data_dir)
    encoder = ExampleEncoder(dataset, knowledge, knowledge_reduction)
    splits = {name: encoder.encode(dataset, name) for name in ("train", "eval", "test")}
    for name, encoded in splits.items():
        if not len(encoded.labels):
            raise UserFacingError(f"{data_dir}: the {name} split is empty")
    ranking, summary = fit_encoded(encoder, splits, config, training, verbose, strategy)
    return {
        "data": str(data_dir), **summary,
        "eval": encoder.report(ranking, splits["eval"], training.batch_size),
        "test": encoder.report(ranking, splits["test"], training.batch_size),
        "config": config.to_dict(), "training": training.to_dict(), "input_spec": encoder.input_spec().to_dict(),
        "knowledge_reduction": encoder.knowledge_reduction,
    }


def fit_encoded(encoder: ExampleEncoder, splits: dict, config: ModelConfig, training: TrainConfig, verbose: int = 0,
                strategy=None):
    """`training.fit` on encoded splits: the train split reshuffled every epoch with the seed."""
    train_batches = encoder.tf_dataset(splits["train"], training.batch_size, shuffle_seed=training.seed)
    eval_batches = encoder.tf_dataset(splits["eval"], training.batch_size)
    return fit(config, encoder.input_spec(), train_batches, eval_batches, training, verbose=verbose,
               strategy=strategy)


def format_report(result: dict) -> str:
    """A small table: test AUC, gAUC, logloss and calibration overall, per scenario and per slice."""
    lines = [f"{result['backbone']} knowledge={result['knowledge']} seed={result['seed']}: "
             f"{result['epochs']} epochs (best {result['best_epoch']}), {result['train_seconds']:.1f} s",
             metrics.format_table(result["test"])]
    return "\n".join(lines)
