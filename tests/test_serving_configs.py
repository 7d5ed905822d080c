"""The TF Serving configs in serving/configs/ and the knowledge store (no server needed)."""
import numpy as np
import pytest
from google.protobuf import text_format

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, read_knowledge
from llm4msr.serving import tf_serving_configs as configs
from llm4msr.serving.layout import KNOWLEDGE_DIR, version_dirs
from llm4msr.serving.knowledge_store import InMemoryKnowledgeStore, PushedKnowledgeStore, export_vectors
from serving_fixtures import SCENARIOS, USERS, write_fixture_knowledge


def test_models_config_serves_llm4msr_with_stable_and_canary_labels():
    model = configs.read_models_config().model_config_list.config[0]
    assert (model.name, model.base_path, model.model_platform) == ("llm4msr", "/models/llm4msr", "tensorflow")
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}
    assert sorted(model.model_version_policy.specific.versions) == [1, 2]


def test_models_config_for_pushed_versions():
    text = text_format.MessageToString(configs.models_config(1795644335, 1795649999, "/data/llm4msr"))
    model = text_format.Parse(text, configs.model_server_config_pb2.ModelServerConfig()).model_config_list.config[0]
    assert dict(model.version_labels) == {"stable": 1795644335, "canary": 1795649999}
    assert list(model.model_version_policy.specific.versions) == [1795644335, 1795649999]
    assert model.base_path == "/data/llm4msr"


def test_batching_config():
    batching = configs.read_batching_config()
    assert batching.max_batch_size.value == 1024 and batching.batch_timeout_micros.value == 2000
    assert batching.num_batch_threads.value >= 1 and batching.max_enqueued_batches.value > 0


def test_monitoring_config_exposes_prometheus():
    monitoring = configs.read_monitoring_config()
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_a_misspelled_field_is_caught(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_sizes { value: 8 }\n")
    with pytest.raises(text_format.ParseError, match="max_batch_sizes"):
        configs.read_batching_config(bad)


@pytest.fixture
def pushed(tmp_path):
    version = tmp_path / "7"
    write_fixture_knowledge(version / KNOWLEDGE_DIR, dim=4)
    (version / "saved_model.pb").write_bytes(b"")  # only the layout matters here
    return tmp_path


def test_pushed_store_serves_vectors_and_the_cold_start_default(pushed):
    store = PushedKnowledgeStore.latest(pushed)
    knowledge = read_knowledge(pushed / "7" / KNOWLEDGE_DIR)
    assert store.version == 7 and store.dim == 4 and version_dirs(pushed) == {7: str(pushed / "7")}
    np.testing.assert_array_equal(store.user_vector(USERS[0]), knowledge.user_vector(USERS[0]))
    np.testing.assert_array_equal(store.user_vector("stranger"), knowledge.users[COLD_START_ID].vector)
    np.testing.assert_array_equal(store.scenario_vector("S1"), knowledge.scenario_vector("S1"))
    with pytest.raises(UserFacingError, match="no knowledge for scenario 'S9' \\(known: S0, S1, S2\\)"):
        store.scenario_vector("S9")
    assert store.for_version(7) is store


def test_pushed_store_needs_a_version_with_knowledge(tmp_path, pushed):
    with pytest.raises(UserFacingError, match="no model version under"):
        PushedKnowledgeStore.latest(tmp_path / "empty")
    (pushed / "8").mkdir()
    (pushed / "8" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(UserFacingError, match="version 8 was pushed without its knowledge store"):
        PushedKnowledgeStore.latest(pushed)


def test_in_memory_store_and_the_external_key_layout(pushed):
    knowledge = read_knowledge(pushed / "7" / KNOWLEDGE_DIR)
    store = InMemoryKnowledgeStore.from_knowledge(knowledge, version=7)
    assert COLD_START_ID not in store.users and len(store.users) == len(USERS)
    exported = dict(export_vectors(knowledge, 7))
    assert len(exported) == len(USERS) + 1 + len(SCENARIOS)
    np.testing.assert_array_equal(np.frombuffer(exported[f"llm4msr:7:user:{COLD_START_ID}"], np.float32),
                                  store.default_user)
    np.testing.assert_array_equal(np.frombuffer(exported["llm4msr:7:scenario:S2"], np.float32),
                                  store.scenario_vector("S2"))


def test_kubernetes_manifest_serves_the_configs_it_mounts():
    import yaml

    from llm4msr.serving.tf_serving_configs import CONFIG_DIR

    documents = list(yaml.safe_load_all((CONFIG_DIR.parents[1] / "kubeflow" / "serving.yaml").read_text()))
    deployment, service = documents
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("tensorflow/serving:")
    files = {arg.split("=", 1)[1] for arg in container["args"] if arg.split("=")[0].endswith("_file")}
    assert {f"/models/config/{name}" for name in ("models.config", "batching.config", "monitoring.config")} == files
    for name in files:
        assert (CONFIG_DIR / name.rsplit("/", 1)[1]).is_file()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/models/config", configs.read_models_config().model_config_list.config[0].base_path} == mounts
    assert service["metadata"]["annotations"]["prometheus.io/path"] == \
        configs.read_monitoring_config().prometheus_config.path
    assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}
