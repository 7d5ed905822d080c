"""The real TFX pipeline end to end on the tiny MovieLens fixture (LocalDagRunner, Beam, MiniLM).

One pipeline root is shared by the tests of this module, in order: the first run (STAR with every
knowledge level: user, scenario and item) trains, blesses and pushes; the later runs reuse its cached components (as a user's rerun would) and change one
thing each: an AUC floor and a calibration band no model meets, then a curated schema the data violate.
"""
import glob
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from llm4msr.errors import UserFacingError
from llm4msr.pipeline import runner
from llm4msr.pipeline.config import PipelineConfig
from llm4msr.pipeline.data.prepare import prepare
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, read_knowledge

IN_MEMORY = ["--direct_running_mode=in_memory"]  # the tiny fixture does not pay for worker processes


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_movielens):
    root = tmp_path_factory.mktemp("pipeline")
    prepare("movielens-latest-small", root / "data", data_dir=tiny_movielens, download=False)
    return root


REDUCTION = 8  # the Transform reduces the 384-wide MiniLM vectors; the pushed store holds the reduced ones


def _config(workspace, **overrides) -> PipelineConfig:
    values = dict(dataset_dir=str(workspace / "data"), root=str(workspace / "run"),
                  serving_dir=str(workspace / "serving"), knowledge_cache_dir=str(workspace / "cache"),
                  training={"epochs": 2, "batch_size": 256}, beam_args=IN_MEMORY,
                  model={"backbone": "star", "knowledge": "all"}, knowledge_reduction=REDUCTION,
                  # S2 has ~25 test examples here: its AUC and calibration are noise; the bound tests are below
                  auc_floor=0.0, calibration_band=[0.5, 2.0], max_normalized_logloss=1.5)
    values.update(overrides)
    return PipelineConfig(**values)


@pytest.fixture(scope="module")
def first_run(workspace):
    return runner.run_local(_config(workspace))


def _latest(workspace, component, output) -> pathlib.Path:
    return pathlib.Path(runner._latest_output(_config(workspace), component, output))


def _records(split_dir: pathlib.Path):
    files = sorted(glob.glob(str(split_dir / "*.gz")))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_every_component_ran_and_the_model_was_pushed(first_run):
    states = {row["component"]: row["state"] for row in first_run["components"]}
    for component in ("CanonicalExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "KnowledgeExtractor",
                      "KnowledgeJoiner", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert states.get(component) == "COMPLETE", (component, states)
    evaluation = first_run["evaluation"]
    assert evaluation["blessed"], evaluation["failures"]
    assert {"overall", "scenario=S0", "scenario=S1", "scenario=S2"} <= set(evaluation["slices"])
    assert evaluation["slices"]["overall"]["auc"] > 0.5
    assert first_run["pushed"] and (pathlib.Path(first_run["pushed"]) / "saved_model.pb").is_file()
    pushed = pathlib.Path(first_run["pushed"])
    assert (pushed / "assets" / "user_id").is_file()  # the Transform vocabularies travel along
    store = read_knowledge(pushed / "assets.extra" / "knowledge")  # so does the knowledge store, reduced
    assert store.dim == REDUCTION and store.metadata["reduced_from"] == 384 and store.has_items
    from tensorflow_serving.apis import prediction_log_pb2
    warmup = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
              for r in tf.data.TFRecordDataset(str(pushed / "assets.extra" / "tf_serving_warmup_requests"))]
    assert {w.predict_log.request.model_spec.signature_name for w in warmup} == {"serving_default", "predict_raw"}


def test_knowledge_and_joined_examples(first_run, workspace):
    knowledge = read_knowledge(_latest(workspace, "KnowledgeExtractor", "knowledge"))
    assert len(knowledge.users) == 40 + 1 and COLD_START_ID in knowledge.users
    assert sorted(knowledge.scenarios) == ["S0", "S1", "S2"] and knowledge.dim == 384
    assert COLD_START_ID in knowledge.items and len(knowledge.items) > 1000  # every item of items.csv
    joined = _latest(workspace, "KnowledgeJoiner", "joined_examples")
    examples = _records(joined / "Split-train")
    source = _records(_latest(workspace, "CanonicalExampleGen", "examples") / "Split-train")
    assert len(examples) == len(source) > 0
    example = examples[0].features.feature
    user = example["user_id"].bytes_list.value[0].decode()
    scenario = example["scenario"].bytes_list.value[0].decode()
    np.testing.assert_allclose(example["user_knowledge"].float_list.value, knowledge.user_vector(user), rtol=1e-6)
    np.testing.assert_allclose(example["scenario_knowledge"].float_list.value,
                               knowledge.scenario_vector(scenario), rtol=1e-6)
    for example in examples[:50]:
        feature = example.features.feature
        item = feature["item_id"].bytes_list.value[0].decode()
        np.testing.assert_allclose(feature["item_knowledge"].float_list.value, knowledge.item_vector(item), rtol=1e-6)
    graph = _latest(workspace, "Transform", "transform_graph")
    vocabulary = (graph / "transform_fn" / "assets" / "user_id").read_text().split()
    train_users = {e.features.feature["user_id"].bytes_list.value[0].decode() for e in examples}
    assert set(vocabulary) == train_users  # vocabularies come from the train split only


def test_the_three_signatures_answer_on_real_examples(first_run, workspace):
    model = tf.saved_model.load(first_run["pushed"])
    assert {"serving_default", "predict_raw", "transform_features"} <= set(model.signatures)
    examples = _records(_latest(workspace, "KnowledgeJoiner", "joined_examples") / "Split-test")[:16]
    serialized = tf.constant([e.SerializeToString() for e in examples])
    from_examples = model.signatures["serving_default"](examples=serialized)["probability"].numpy()
    assert from_examples.shape == (16, 1) and np.all((from_examples > 0) & (from_examples < 1))

    def column(name):
        return [e.features.feature[name].bytes_list.value[0] for e in examples]

    # predict_raw takes the store's reduced vectors; the examples carry the raw ones: same scores
    from llm4msr.serving.knowledge_store import PushedKnowledgeStore

    store = PushedKnowledgeStore.latest(workspace / "serving")
    raw = {name: tf.constant(column(name)) for name in ("user_id", "item_id", "scenario")}
    raw["user_knowledge"] = tf.constant([store.user_vector(u.decode()) for u in column("user_id")])
    raw["scenario_knowledge"] = tf.constant([store.scenario_vector(s.decode()) for s in column("scenario")])
    raw["item_knowledge"] = tf.constant(store.item_vectors([i.decode() for i in column("item_id")]))
    assert raw["user_knowledge"].shape == (16, REDUCTION)
    from_raw = model.signatures["predict_raw"](**raw)["probability"].numpy()
    np.testing.assert_allclose(from_raw, from_examples, rtol=1e-4, atol=1e-6)
    transformed = model.signatures["transform_features"](examples=serialized)
    assert transformed["scenario"].numpy().max() <= 2 and transformed["user_knowledge"].shape == (16, REDUCTION)
    np.testing.assert_allclose(transformed["user_knowledge"].numpy(), raw["user_knowledge"].numpy(), atol=1e-4)
    assert transformed["item_knowledge"].shape == (16, REDUCTION)
    # saved without traced layer calls, the pushed model still reloads as our Keras model
    reloaded = tf.keras.models.load_model(first_run["pushed"])
    np.testing.assert_allclose(reloaded(transformed).numpy(), from_examples, rtol=1e-4, atol=1e-6)


def test_the_readme_pushed_model_example_scores_the_pushed_version(first_run, workspace):
    from readme_examples import readme_example

    code = readme_example("pushed model")
    assert 'MODEL_DIR = "runs/serving/llm4msr"' in code  # make run's serving dir, replaced by this run's
    scope = {}
    exec(compile(code.replace('"runs/serving/llm4msr"', repr(str(workspace / "serving"))), "README.md", "exec"), scope)
    assert scope["store"].version == int(pathlib.Path(first_run["pushed"]).name)
    probabilities = scope["probabilities"]
    assert probabilities.shape == (3, 1) and np.all((probabilities > 0) & (probabilities < 1))


def test_the_client_fills_item_vectors_from_the_pushed_store(first_run, workspace):
    """Over real gRPC: the client sends one item vector per candidate, from the version's store;
    an item the store does not know gets the cold-start item vector, and the scores are the
    SavedModel's own."""
    from llm4msr.serving.client import ServingClient
    from llm4msr.serving.knowledge_store import PushedKnowledgeStore
    from llm4msr.serving.server import ModelRegistry, make_server

    store = PushedKnowledgeStore.latest(workspace / "serving")
    assert store.has_items
    items = ["1", "2", "no-such-item"]
    np.testing.assert_array_equal(store.item_vectors(items)[2], store.default_item)
    registry = ModelRegistry(workspace / "serving")
    registry.poll()
    server, port = make_server(registry, port=0)
    try:
        with ServingClient(f"127.0.0.1:{port}", store) as client:
            scores = client.score("1", "S0", items)
    finally:
        server.stop(grace=None)
    model = tf.saved_model.load(first_run["pushed"])
    expected = model.signatures["predict_raw"](
        user_id=tf.constant(["1"] * 3), item_id=tf.constant(items), scenario=tf.constant(["S0"] * 3),
        user_knowledge=tf.constant([store.user_vector("1")] * 3),
        scenario_knowledge=tf.constant([store.scenario_vector("S0")] * 3),
        item_knowledge=tf.constant(store.item_vectors(items)))["probability"].numpy().reshape(-1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_rerun_with_nothing_changed_is_cached(first_run, workspace):
    again = runner.run_local(_config(workspace))
    states = {row["component"]: row["state"] for row in again["components"]}
    # the Evaluator too: its baseline is the last blessed model other than the (cached) candidate;
    # the resolver is a metadata query that runs every time
    assert {name: state for name, state in states.items() if state != "CACHED"} == {
        "latest_blessed_model_resolver": "COMPLETE"}


def test_changed_code_is_never_a_cache_hit(workspace, tmp_path, monkeypatch):
    """TFX keys its cache on parameters, not on the code an import path names: each component
    carries a fingerprint of its source (an edited transform/ once reran nothing)."""
    import importlib

    from llm4msr.files import source_fingerprint
    from llm4msr.pipeline import pipeline as pipeline_module

    package = tmp_path / "fingerprinted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "code.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("fingerprinted")
    before = source_fingerprint(module)
    (package / "code.py").write_text("VALUE = 2\n")
    assert source_fingerprint(module) != before

    def cache_keys():
        compiled = pipeline_module.create_pipeline(_config(workspace))
        return {c.id: json.dumps(c.exec_properties, sort_keys=True, default=str) for c in compiled.components}

    current = cache_keys()
    monkeypatch.setattr(pipeline_module, "source_fingerprint", lambda *modules: "edited")
    edited = cache_keys()
    for component in ("CanonicalExampleGen", "KnowledgeExtractor", "KnowledgeJoiner", "Transform", "Trainer"):
        assert current[component] != edited[component], component


def test_a_model_below_the_auc_floor_or_miscalibrated_is_not_pushed_and_the_report_names_slice_and_bound(
        first_run, workspace):
    pushed_before = sorted(os.listdir(workspace / "serving"))
    # one rerun of the Evaluator with two bounds no model here meets: an AUC floor of 0.99, and a
    # calibration band of [0.2, 0.5] (the trained model's calibration is near 1 in every slice, so by
    # the Evaluator's measure it over-predicts, as the model of issue 12 did: 1.32 against 0.9-1.1)
    report = runner.run_local(_config(workspace, auc_floor=0.99, calibration_band=[0.2, 0.5]))
    failures = report["evaluation"]["failures"]
    assert not report["evaluation"]["blessed"]
    assert any("auc = " in failure and "is below the lower bound 0.9900" in failure for failure in failures), failures
    for slice_name in ("overall", "scenario=S0", "scenario=S1", "scenario=S2"):
        assert any(f.startswith(f"{slice_name}: calibration = ") and "is above the upper bound 0.5000" in f
                   for f in failures), (slice_name, failures)
    assert sorted(os.listdir(workspace / "serving")) == pushed_before
    assert "blessed: NO" in runner.format_report(report)


def test_both_paths_see_the_same_features_for_the_same_rows(first_run, workspace, tmp_path, monkeypatch):
    """The TFX Transform graph and `llm4msr train`'s encoder give the same names and indices."""
    import tensorflow_transform as tft

    from llm4msr.pipeline.data.canonical import read_dataset
    from llm4msr.trainer.fast import ExampleEncoder
    from llm4msr.trainer.features import input_spec_from_transform

    monkeypatch.setenv("LLM4MSR_CACHE_DIR", str(tmp_path / "cache"))
    dataset = read_dataset(workspace / "data")
    encoder = ExampleEncoder(dataset)
    pipeline_graph = tft.TFTransformOutput(str(_latest(workspace, "Transform", "transform_graph")))
    pipeline_spec = input_spec_from_transform(pipeline_graph, len(dataset.scenario_ids))
    fast_spec = encoder.input_spec()
    assert pipeline_spec.categorical == fast_spec.categorical and pipeline_spec.dense == fast_spec.dense
    assert {"item_category", "item_year"} <= set(fast_spec.categorical) | set(fast_spec.dense)

    examples = _records(_latest(workspace, "KnowledgeJoiner", "joined_examples") / "Split-test")
    raw = {name: tf.constant([[e.features.feature[name].bytes_list.value[0]] for e in examples])
           for name in ("user_id", "item_id", "scenario")}
    from_pipeline = pipeline_graph.transform_features_layer()(raw)
    import pandas as pd
    rows = pd.DataFrame({name: [v[0].decode() for v in raw[name].numpy()] for name in raw})
    from_fast = encoder.transform(rows)
    for name in [*fast_spec.categorical, *fast_spec.dense, "slice_user_history", "slice_item_popularity"]:
        np.testing.assert_allclose(from_fast[name], from_pipeline[name].numpy(), rtol=1e-5, err_msg=name)
    assert len(set(from_fast["item_category"].tolist())) > 1  # the attributes really vary


def test_the_trainer_keeps_small_splits_in_memory_and_streams_large_ones(first_run, workspace):
    """Cached (the tiny split fits in 1 MB): every epoch sees every train example once, reshuffled;
    a budget of 0 streams from the files every epoch; both give the same examples."""
    import tensorflow_transform as tft
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts

    from llm4msr.trainer import run_fn

    examples = standard_artifacts.Examples()
    examples.uri, examples.split_names = str(_latest(workspace, "KnowledgeJoiner", "joined_examples")), '["train"]'
    factory = tfxio_utils.get_tf_dataset_factory_from_artifact([examples], [])
    accessor = type("Accessor", (), {"tf_dataset_factory": staticmethod(factory)})
    graph = tft.TFTransformOutput(str(_latest(workspace, "Transform", "transform_graph")))
    files = [examples.uri + "/Split-train/*"]
    rows = run_fn._count_records(files)
    assert rows == len(_records(pathlib.Path(examples.uri) / "Split-train")) and rows * run_fn._transformed_row_bytes(
        graph) < 2**20
    assert run_fn._count_records(files, limit=10) == 10  # a split larger than the budget is not read whole

    def epochs(budget_mb):
        data = run_fn._dataset(files, accessor, graph, 64, shuffle=True, seed=0, cache_budget_mb=budget_mb)
        return [[(int(u), int(i)) for f, _ in data for u, i in zip(f["user_id"].numpy(), f["item_id"].numpy())]
                for _ in range(2)]

    cached, streamed = epochs(1), epochs(0)
    assert len(cached[0]) == rows and sorted(cached[0]) == sorted(cached[1]) == sorted(streamed[0])
    assert cached[0] != cached[1]  # reshuffled every epoch


def test_data_violating_a_curated_schema_stops_before_training(first_run, workspace):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils

    schema = io_utils.SchemaReader().read(str(_latest(workspace, "SchemaGen", "schema") / "schema.pbtxt"))
    scenario = next(f for f in schema.feature if f.name == "scenario")
    scenario.ClearField("domain")
    schema.string_domain.add(name="scenario_ids", value=["S0", "S1"])  # production knows two scenarios
    scenario.domain = "scenario_ids"
    curated = workspace / "curated" / "schema.pbtxt"
    io_utils.write_pbtxt_file(str(curated), schema)
    assert isinstance(schema, schema_pb2.Schema)
    with pytest.raises(Exception) as caught:
        runner.run_local(_config(workspace, schema_path=str(curated)))
    message = "".join(str(e) for e in _chain(caught.value))
    assert "the data violate the schema" in message and "scenario" in message, message


def _chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_kubeflow_spec_for_gs_storage_keeps_the_uris_and_reads_no_data(tmp_path):
    """Nothing exists at these URIs: compiling must not read them. kfp's own loader reads the spec."""
    import yaml
    from kfp import components as kfp_components

    from llm4msr.pipeline.pipeline import DATA_READERS

    image, beam = "example.org/llm4msr:test", ["--runner=DataflowRunner", "--temp_location=gs://b/tmp"]
    config = PipelineConfig(dataset_dir="gs://b/data/ml", root="gs://b/llm4msr", serving_dir="gs://b/serving/llm4msr",
                            knowledge_cache_dir="gs://b/cache", beam_args=beam)
    output = tmp_path / "pipeline.json"
    runner.compile_kubeflow(config, str(output), image=image)
    job = json.loads(output.read_text())
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://b/llm4msr/artifacts"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(job["pipelineSpec"]))
    spec = kfp_components.load_component_from_file(str(tmp_path / "spec.yaml")).pipeline_spec

    tasks = spec.root.dag.tasks
    for component in ("CanonicalExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "KnowledgeExtractor",
                      "KnowledgeJoiner", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert tasks[component].caching_options.enable_cache == (component not in DATA_READERS), component
        container = spec.deployment_spec["executors"][f"{component}_executor"]["container"]
        assert container["image"] == image, component
        assert list(container["command"]) == ["python", "-m", "tfx.orchestration.kubeflow.v2.container."
                                              "kubeflow_v2_run_executor"], component
        arguments = list(container["args"])
        assert arguments[0] in ("--executor_class_path", "--executor_spec"), (component, arguments)
        if component in ("CanonicalExampleGen", "StatisticsGen", "KnowledgeExtractor", "KnowledgeJoiner",
                         "Transform", "Evaluator"):  # the Beam components get the config's Beam options
            assert arguments[-len(beam):] == beam, (component, arguments)

    def parameter(component, name):
        return tasks[component].inputs.parameters[name].runtime_value.constant_value.string_value
    assert parameter("CanonicalExampleGen", "dataset_dir") == "gs://b/data/ml"
    assert parameter("CanonicalExampleGen", "dataset_fingerprint") == ""  # fingerprinted when it runs
    assert parameter("KnowledgeExtractor", "cache_dir") == "gs://b/cache"
    assert json.loads(parameter("Transform", "custom_config"))["dataset_dir"] == "gs://b/data/ml"
    assert json.loads(parameter("Trainer", "custom_config"))["dataset_dir"] == "gs://b/data/ml"
    assert json.loads(parameter("Pusher", "push_destination"))["filesystem"]["base_directory"] == "gs://b/serving/llm4msr"
    assert "gs:/b" not in output.read_text().replace("gs://b", "")  # no path folded by pathlib


def test_missing_data_set_is_a_clear_error(tmp_path):
    with pytest.raises(UserFacingError, match="no canonical data set"):
        runner.run_local(PipelineConfig(dataset_dir=str(tmp_path / "nothing"), root=str(tmp_path / "run")))


@pytest.mark.parametrize("config, message", [
    ("auc_floor: high\n", "auc_floor: expected a number >= 0, got 'high'"),
    ("model: {backbone: transformerXL}\n", "unknown backbone 'transformerXL'"),
    ("training: {epochs: -1}\n", "epochs"),
    ("train_epochs: 3\n", "unknown key(s) train_epochs"),
    ("calibration_band: [1.1, 0.9]\n", "calibration_band: expected [low, high] with 0 < low < high"),
    ("knowledge_reduction: -4\n", "knowledge_reduction: expected an integer >= 0"),
    ("llm_precision: int8\n", "llm_precision: expected one of auto, float32, bfloat16, got 'int8'"),
    ("training: {distribute: ring}\n", "TrainConfig.distribute: expected one of"),
    ("metadata_dir: s3://bucket/metadata\n", "metadata_dir: ML Metadata's SQLite store needs a local folder"),
])
def test_a_bad_pipeline_config_is_refused_before_anything_runs(tmp_path, capsys, config, message):
    from llm4msr.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(config)
    code = main(["pipeline", "run", "--config", str(path), "--root", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and message in error and str(path) in error and "Traceback" not in error, error
    assert not (tmp_path / "run").exists()


def test_component_progress_survives_tfx_reparsing_absl_flags_and_quiet_keeps_errors(capsys):
    """One line per finished component, even after a Beam executor re-parses absl flags (which
    resets absl's level to WARNING); quiet holds back absl warnings but not errors."""
    import sys

    from absl import flags, logging as absl_logging

    with runner.component_progress(quiet=True):
        flags.FLAGS(sys.argv[:1], known_only=True)  # what TFX's BaseBeamExecutor does
        absl_logging.info("Component %s is running.", "Transform")
        absl_logging.info("A cached execution %d is used.", 7)
        absl_logging.warning("ArtifactQuery.property_predicate is not supported.")
        absl_logging.error("a real problem")
        absl_logging.info("Component %s is finished.", "Transform")
    out, err = capsys.readouterr()
    assert out.split()[:2] == ["Transform", "CACHED"] and out.count("\n") == 1
    assert "a real problem" in err and "property_predicate" not in err + out


def test_the_baseline_is_the_latest_blessed_model_other_than_the_candidate():
    from tfx.types import standard_artifacts

    from llm4msr.pipeline.baseline import PreviousBlessedModelStrategy

    def model(id_):
        artifact = standard_artifacts.Model()
        artifact.id = id_
        return artifact

    def blessing(model_id, blessed):
        artifact = standard_artifacts.ModelBlessing()
        artifact.set_int_custom_property("current_model_id", model_id)
        artifact.set_int_custom_property("blessed", int(blessed))
        return artifact

    models = [model(1), model(2), model(3), model(4)]
    blessings = [blessing(1, True), blessing(2, True), blessing(3, False), blessing(4, True)]

    def baseline(candidate):
        resolved = PreviousBlessedModelStrategy().resolve_artifacts(
            None, {"candidate": [models[candidate - 1]], "model": models, "model_blessing": blessings})
        assert [b.get_int_custom_property("current_model_id") for b in resolved["model_blessing"]] == \
            [m.id for m in resolved["model"]]
        return [m.id for m in resolved["model"]]

    assert baseline(4) == [2]  # 4 is the candidate (blessed by an earlier run of it), 3 was not blessed
    assert baseline(3) == [4]
    assert PreviousBlessedModelStrategy().resolve_artifacts(
        None, {"candidate": [models[0]], "model": models[:1], "model_blessing": blessings[:1]})["model"] == []


def test_the_joiner_on_the_portable_runner_writes_what_the_direct_runner_wrote(first_run, workspace, tmp_path):
    """The KnowledgeJoiner component's own function, given the first run's inputs, on `PortableRunner`
    (a job service and an SDK worker pool on 127.0.0.1, `beam_cluster.py`)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tfx.types import standard_artifacts

    from beam_cluster import completed_jobs, portable_cluster
    from llm4msr.pipeline import components
    from llm4msr.pipeline.data.split import SPLITS

    def artifact(kind, uri, splits=False):
        made = kind()
        made.uri = str(uri)
        if splits:
            made.splits = list(SPLITS)
        return made
    inputs = dict(examples=artifact(standard_artifacts.Examples, _latest(workspace, "CanonicalExampleGen", "examples"), True),
                  knowledge=artifact(components.KnowledgeArtifact, _latest(workspace, "KnowledgeExtractor", "knowledge")),
                  schema=artifact(standard_artifacts.Schema, _latest(workspace, "SchemaGen", "schema")),
                  anomalies=artifact(standard_artifacts.ExampleAnomalies,
                                     _latest(workspace, "ExampleValidator", "anomalies")))
    outputs = dict(joined_examples=artifact(standard_artifacts.Examples, tmp_path / "joined"),
                   joined_schema=artifact(standard_artifacts.Schema, tmp_path / "schema"))
    for output in outputs.values():
        pathlib.Path(output.uri).mkdir(parents=True)
    with portable_cluster(tmp_path / "cluster") as options:
        components.KnowledgeJoiner.EXECUTOR_SPEC.executor_class._FUNCTION(
            **inputs, **outputs, beam_pipeline=beam.Pipeline(options=PipelineOptions(options)))
    assert completed_jobs(tmp_path / "cluster") == 1
    direct = _latest(workspace, "KnowledgeJoiner", "joined_examples")
    for split in SPLITS:
        made = sorted(r.SerializeToString(deterministic=True) for r in _records(tmp_path / "joined" / f"Split-{split}"))
        expected = sorted(r.SerializeToString(deterministic=True) for r in _records(direct / f"Split-{split}"))
        assert made == expected and made, split
