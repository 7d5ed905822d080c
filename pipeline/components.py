"""The pipeline's custom TFX components (Python function components running Beam).

- `CanonicalExampleGen`: the canonical data set (docs/DATA_FORMAT.md) -> `Examples` with
  its authoritative train/eval/test splits and string ids (CsvExampleGen would infer ids as ints).
- `KnowledgeExtractor`: prompts -> frozen LLM -> `KnowledgeArtifact` (vectors, prompts, texts, fingerprint).
- `KnowledgeJoiner`: a Beam join adding `user_knowledge`, `scenario_knowledge` (and `item_knowledge`
  when the knowledge has an item level) to every example,
  refusing data the ExampleValidator found anomalous, and extending the schema with the vectors.
  The joined examples carry the knowledge they were joined with (`<uri>/knowledge/`, beside the
  `Split-*` folders that example readers read), so the Trainer can ship the same knowledge with
  the model it trains on them: a served model and its knowledge store are one version.
"""
import csv
import os
from typing import Dict, Iterable, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact as tfx_artifact
from tfx.types import standard_artifacts

from llm4msr.contract import (ITEM_KNOWLEDGE, KNOWLEDGE_FEATURES, LABEL, RAW_FEATURES, SCENARIO_KNOWLEDGE,
                              USER_KNOWLEDGE)
from llm4msr.errors import UserFacingError
from llm4msr.files import copy_tree, join, open_file
from llm4msr.pipeline.data.split import HISTORY, SPLITS

EXAMPLES_FILE_FORMAT = "tfrecords_gzip"
JOINED_KNOWLEDGE_DIR = "knowledge"  # inside joined examples: the knowledge they were joined with

component = tfx.dsl.components.component
InputArtifact, OutputArtifact, Parameter = (
    tfx.dsl.components.InputArtifact, tfx.dsl.components.OutputArtifact, tfx.dsl.components.Parameter)
BeamComponentParameter = tfx.dsl.components.BeamComponentParameter


class KnowledgeArtifact(tfx_artifact.Artifact):
    """LLM knowledge: the folder format of `llm4msr.pipeline.knowledge.artifact`."""

    TYPE_NAME = "llm4msr.Knowledge"


# -- ExampleGen ------------------------------------------------------------------------------------

@component(use_beam=True)
def CanonicalExampleGen(
    examples: OutputArtifact[standard_artifacts.Examples],
    dataset_dir: Parameter[str],
    dataset_fingerprint: Parameter[str],  # part of the cache key: changed data is never a cache hit
    code_fingerprint: Parameter[str] = "",  # part of the cache key: new code is never a cache hit
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Validates the set (errors name file, line and field), then converts interactions.csv to
    tf.Examples in Beam workers, one read routed to the three splits. The examples record the data
    set's fingerprint (computed here when the pipeline was compiled without reading the data)."""
    from llm4msr.pipeline.data.canonical import INTERACTIONS, dataset_fingerprint as fingerprint_of, read_dataset

    del code_fingerprint
    examples.set_string_custom_property("dataset_fingerprint", dataset_fingerprint or fingerprint_of(dataset_dir))
    read_dataset(dataset_dir)
    path = join(dataset_dir, INTERACTIONS)
    with open_file(path, "rb") as handle:
        header = next(csv.reader([handle.readline().decode("utf-8")]))
    if "split" not in header:
        raise UserFacingError(f"{path}: no 'split' column; write the set with `llm4msr data prepare "
                              f"--source canonical --data-dir {dataset_dir} --out DIR`, which assigns splits")
    _mark_examples(examples)
    with beam_pipeline as pipeline:
        by_split = (pipeline
                    | "ReadInteractions" >> beam.io.ReadFromText(path, skip_header_lines=1)
                    | "ToExample" >> beam.ParDo(_LineToExample(header)).with_outputs(*SPLITS))
        for split in SPLITS:
            _ = by_split[split] | f"Write[{split}]" >> _write_split(examples, split)


class _LineToExample(beam.DoFn):
    """A canonical interactions.csv line -> (split, serialized tf.Example) as a tagged output."""

    def __init__(self, header):
        self._header = header

    def process(self, line: str):
        row = dict(zip(self._header, next(csv.reader([line]))))
        if row["split"] == HISTORY:  # a new user's prompt history: never an example
            return
        feature = {name: _bytes_feature(row[name]) for name in RAW_FEATURES}
        feature[LABEL] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(row[LABEL])]))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        yield beam.pvalue.TaggedOutput(row["split"], example.SerializeToString())


# -- KnowledgeExtractor ----------------------------------------------------------------------------

@component(use_beam=True)
def KnowledgeExtractor(
    knowledge: OutputArtifact[KnowledgeArtifact],
    dataset_dir: Parameter[str],
    dataset_fingerprint: Parameter[str],
    model: Parameter[str] = "minilm",
    backend: Parameter[str] = "encoder",
    precision: Parameter[str] = "auto",
    cache_dir: Parameter[str] = "",
    batch_size: Parameter[int] = 64,
    levels: Parameter[str] = "user,scenario",  # comma-separated; "item" adds one prompt per item
    code_fingerprint: Parameter[str] = "",  # part of the cache key: new code is never a cache hit
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Runs the knowledge Beam pipeline with this pipeline's Beam options; the prompt cache makes
    reruns and new users cheap (see `llm4msr.pipeline.knowledge`)."""
    from llm4msr.pipeline.knowledge.extract import extract_knowledge

    del dataset_fingerprint, code_fingerprint
    counts = extract_knowledge(dataset_dir, knowledge.uri, model=model, backend=backend, precision=precision,
                               cache_dir=cache_dir or None, batch_size=batch_size,
                               beam_pipeline_args=_beam_args(beam_pipeline), progress=False,
                               levels=levels.split(","))
    for key, value in counts.items():
        knowledge.set_string_custom_property(key, str(value))


def _beam_args(beam_pipeline: beam.Pipeline):
    """The pipeline's Beam options as flags for the nested knowledge job. The local DirectRunner's
    worker settings are dropped: the job picks its own (one inference worker with oneDNN, see
    `llm4msr.pipeline.knowledge.beam_job`), as the encoder's TF threads already use every core."""
    options = beam_pipeline.options.get_all_options(drop_default=True)
    if options.get("runner") in (None, "DirectRunner"):
        options = {k: v for k, v in options.items() if not k.startswith("direct_")}
    flags = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            flags.append(f"--{key}")
        else:
            flags.extend(f"--{key}={item}" for item in (value if isinstance(value, list) else [value]))
    return flags


# -- KnowledgeJoiner -------------------------------------------------------------------------------

@component(use_beam=True)
def KnowledgeJoiner(
    examples: InputArtifact[standard_artifacts.Examples],
    knowledge: InputArtifact[KnowledgeArtifact],
    schema: InputArtifact[standard_artifacts.Schema],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    joined_examples: OutputArtifact[standard_artifacts.Examples],
    joined_schema: OutputArtifact[standard_artifacts.Schema],
    code_fingerprint: Parameter[str] = "",  # part of the cache key: new code is never a cache hit
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Joins knowledge vectors to examples; users (items) the extraction never saw get the cold-start
    vector. Stops, with the anomalies listed, when the ExampleValidator did not bless the data."""
    from llm4msr.pipeline.knowledge.artifact import ITEM, SCENARIO, USER, read_knowledge

    del code_fingerprint
    raise_on_anomalies(anomalies)
    store = read_knowledge(knowledge.uri, whole=[SCENARIO])  # user and item rows: read by the job below
    scenario_vectors = {sid: record.vector.tolist() for sid, record in store.scenarios.items()}
    default_user = store.default_user_vector.tolist()
    names = KNOWLEDGE_FEATURES if store.has_items else (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE)
    _write_schema_with_knowledge(schema, joined_schema, store.dim, names)
    _mark_examples(joined_examples)
    copy_tree(knowledge.uri, os.path.join(joined_examples.uri, JOINED_KNOWLEDGE_DIR))
    with beam_pipeline as pipeline:
        users = pipeline | "UserKnowledge" >> _KnowledgeRows(knowledge.uri, USER)
        scenarios = pipeline | "ScenarioKnowledge" >> beam.Create([scenario_vectors])
        # the splits joined in one pass, each example tagged with its split: a join per split and
        # level was 6 shuffles, whose fixed cost was most of the joiner's time on small data
        tagged = ([pipeline
                   | f"Read[{split}]" >> beam.io.ReadFromTFRecord(
                       os.path.join(examples.path(split=split), "*"),
                       coder=beam.coders.BytesCoder(), compression_type=beam.io.filesystem.CompressionTypes.GZIP)
                   | f"Tag[{split}]" >> beam.Map(lambda serialized, split=split: (split, serialized))
                   for split in SPLITS]
                  | "AllSplits" >> beam.Flatten())
        joined = ({"examples": tagged | "KeyByUser" >> beam.Map(_key_by, "user_id"), "knowledge": users}
                  | "JoinUsers" >> beam.CoGroupByKey()
                  | "AddUserKnowledge" >> beam.FlatMap(_add_vector, USER_KNOWLEDGE, default_user,
                                                       beam.pvalue.AsSingleton(scenarios)))
        if store.has_items:
            items = pipeline | "ItemKnowledge" >> _KnowledgeRows(knowledge.uri, ITEM)
            joined = ({"examples": joined | "KeyByItem" >> beam.Map(_key_by, "item_id"), "knowledge": items}
                      | "JoinItems" >> beam.CoGroupByKey()
                      | "AddItemKnowledge" >> beam.FlatMap(_add_vector, ITEM_KNOWLEDGE,
                                                           store.default_item_vector.tolist()))
        by_split = joined | "BySplit" >> beam.Partition(lambda tagged, _: SPLITS.index(tagged[0]), len(SPLITS))
        for split, part in zip(SPLITS, by_split):
            _ = part | f"Untag[{split}]" >> beam.Values() | f"Write[{split}]" >> _write_split(joined_examples, split)


class _KnowledgeRows(beam.PTransform):
    """(id, vector) of one knowledge level but its cold-start row, read from its Parquet shards."""

    def __init__(self, folder: str, level: str):
        super().__init__()
        self.pattern = join(folder, f"{level}/*.parquet")

    def expand(self, pbegin):
        from llm4msr.pipeline.knowledge.artifact import COLD_START_ID

        return (pbegin | "Read" >> beam.io.ReadFromParquet(self.pattern, columns=["id", "vector"])
                | "Keyed" >> beam.FlatMap(
                    lambda row: [] if row["id"] == COLD_START_ID else [(row["id"], row["vector"])]))


def _key_by(tagged: Tuple[str, bytes], feature: str) -> Tuple[str, Tuple[str, bytes]]:
    """(split, serialized example) -> (the example's `feature` value, (split, serialized example))."""
    example = tf.train.Example.FromString(tagged[1])
    return example.features.feature[feature].bytes_list.value[0].decode(), tagged


def _add_vector(joined, name: str, default: list,
                scenario_vectors: Optional[Dict[str, list]] = None) -> Iterable[Tuple[str, bytes]]:
    """(key, {examples, knowledge}) -> the (split, example)s with the key's vector (or `default`) as
    `name`, and with `scenario_vectors` their scenario's vector too (in the same pass: parsing and
    serializing the examples is most of the joiner's cost)."""
    _, groups = joined
    vector = groups["knowledge"][0] if groups["knowledge"] else default
    for split, serialized in groups["examples"]:
        example = tf.train.Example.FromString(serialized)
        feature = example.features.feature
        feature[name].float_list.value.extend(vector)
        if scenario_vectors is not None:
            scenario = feature["scenario"].bytes_list.value[0].decode()
            if scenario not in scenario_vectors:
                raise UserFacingError(f"no knowledge for scenario {scenario!r}: re-run the KnowledgeExtractor")
            feature[SCENARIO_KNOWLEDGE].float_list.value.extend(scenario_vectors[scenario])
        yield split, example.SerializeToString()


def raise_on_anomalies(anomalies) -> None:
    """Raises with a readable summary when any split of `anomalies` is not blessed."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    problems = []
    for split in anomalies.splits if hasattr(anomalies, "splits") else SPLITS:
        path = os.path.join(anomalies.uri, f"Split-{split}", "SchemaDiff.pb")
        if not tf.io.gfile.exists(path):
            continue
        report = anomalies_pb2.Anomalies.FromString(tf.io.gfile.GFile(path, "rb").read())
        for feature, info in sorted(report.anomaly_info.items()):
            problems.append(f"  [{split}] {feature}: {info.short_description} — {info.description}")
        if report.HasField("dataset_anomaly_info"):
            info = report.dataset_anomaly_info
            problems.append(f"  [{split}] <dataset>: {info.short_description} — {info.description}")
    if problems:
        raise UserFacingError("the data violate the schema; training stopped. Anomalies found by "
                              "ExampleValidator:\n" + "\n".join(problems))


def _write_schema_with_knowledge(schema, joined_schema, dim: int, names=(USER_KNOWLEDGE, SCENARIO_KNOWLEDGE)) -> None:
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils

    proto = io_utils.SchemaReader().read(os.path.join(schema.uri, "schema.pbtxt"))
    for name in names:
        feature = next((f for f in proto.feature if f.name == name), None) or proto.feature.add(name=name)
        feature.type = schema_pb2.FLOAT
        feature.shape.Clear()
        feature.shape.dim.add(size=dim)
        feature.presence.min_fraction = 1.0
    io_utils.write_pbtxt_file(os.path.join(joined_schema.uri, "schema.pbtxt"), proto)


# -- shared helpers --------------------------------------------------------------------------------

def _mark_examples(examples) -> None:
    examples.splits = list(SPLITS)
    examples.set_string_custom_property("file_format", EXAMPLES_FILE_FORMAT)
    examples.set_string_custom_property("payload_format", "FORMAT_TF_EXAMPLE")


def _write_split(examples, split: str) -> beam.PTransform:
    return beam.io.WriteToTFRecord(os.path.join(examples.path(split=split), "data_tfrecord"),
                                   file_name_suffix=".gz", coder=beam.coders.BytesCoder())


def _bytes_feature(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode()]))
