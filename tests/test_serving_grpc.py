"""Client <-> server over real gRPC on 127.0.0.1 (free ports): the local server always, and
`tensorflow_model_server` too when that binary is on PATH. The model is the small pushed model of
`serving_fixtures` (same signatures as the pipeline's export)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from llm4msr import cli
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID
from llm4msr.serving.assets import example
from llm4msr.serving.client import ServingClient, raw_request
from llm4msr.serving.knowledge_store import PushedKnowledgeStore
from llm4msr.serving.server import Limits, ModelRegistry, make_server
from serving_fixtures import ITEMS, copy_version, push_model

DIM, MAX_BATCH = 16, 200
CANDIDATES = list(ITEMS[:100])
TF_SERVING = shutil.which("tensorflow_model_server")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving") / "llm4msr"
    root.mkdir()
    push_model(root, 1, dim=DIM)
    return root


@pytest.fixture(scope="module")
def in_process(model_dir):
    return tf.saved_model.load(str(model_dir / "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    def __init__(self, model_dir, port=0, **options):
        self.registry = ModelRegistry(model_dir, max_batch=MAX_BATCH, poll_seconds=0.2, **options).start()
        self.server, port = make_server(self.registry, port=port, limits=Limits(model_workers=8))
        self.target = f"127.0.0.1:{port}"

    def stop(self):
        self.server.stop(grace=None)
        self.registry.stop()


class TensorFlowModelServer:
    def __init__(self, model_dir):
        port = free_port()
        self.process = subprocess.Popen([TF_SERVING, f"--port={port}", "--model_name=llm4msr",
                                         f"--model_base_path={model_dir}", "--file_system_poll_wait_seconds=1"])
        self.target = f"127.0.0.1:{port}"
        with ServingClient(self.target, timeout=2) as client:
            _wait(lambda: any(v["state"] == "AVAILABLE" for v in client.status()), 60)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


def _wait(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if condition():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not true after {seconds} s")


SERVERS = [pytest.param(LocalServer, id="local"),
           pytest.param(TensorFlowModelServer, id="tensorflow_model_server",
                        marks=pytest.mark.skipif(TF_SERVING is None, reason="tensorflow_model_server not on PATH"))]


@pytest.fixture(scope="module", params=SERVERS)
def server(request, model_dir):
    started = request.param(model_dir)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def local(model_dir):
    started = LocalServer(model_dir)
    yield started
    started.stop()


@pytest.fixture
def client(server, model_dir):
    with ServingClient(server.target, PushedKnowledgeStore.latest(model_dir)) as connected:
        yield connected


def _in_process_scores(model, store, user, scenario, items):
    request = raw_request(user, scenario, items, store.user_vector(user), store.scenario_vector(scenario))
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    return model.signatures["predict_raw"](**inputs)["probability"].numpy().reshape(-1)


@pytest.mark.parametrize("user, scenario", [("3", "S0"), ("17", "S1"), ("40", "S2")])
def test_scores_equal_the_in_process_saved_model(client, in_process, user, scenario):
    served = client.score(user, scenario, CANDIDATES)
    expected = _in_process_scores(in_process, client.store, user, scenario, CANDIDATES)
    assert served.shape == (100,) and np.all((served > 0) & (served < 1))
    np.testing.assert_allclose(served, expected, rtol=1e-6)
    assert np.std(served) > 0  # the items really differ


def test_per_candidate_rows_score_as_one_row_per_request(client):
    """The older request form (user, scenario and knowledge repeated on every candidate row) and the
    compact one (1 row, repeated inside the signature) give the same scores."""
    compact = raw_request("17", "S1", CANDIDATES, client.store.user_vector("17"), client.store.scenario_vector("S1"))
    repeated = predict_pb2.PredictRequest()
    repeated.CopyFrom(compact)
    for name, proto in compact.inputs.items():
        if name != "item_id":
            array = tf.make_ndarray(proto)
            repeated.inputs[name].CopyFrom(tf.make_tensor_proto(np.repeat(array, len(CANDIDATES), axis=0)))
    assert repeated.ByteSize() > 10 * compact.ByteSize()  # the knowledge rows dominate
    scores = [tf.make_ndarray(client.predict(r).outputs["probability"]).reshape(-1) for r in (compact, repeated)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)


def test_recommend_is_the_top_k_of_the_scores(client):
    scores = dict(zip(CANDIDATES, client.score("5", "S1", CANDIDATES)))
    top = client.recommend("5", "S1", CANDIDATES, k=10)
    assert [item for item, _ in top] == sorted(scores, key=lambda i: -scores[i])[:10]
    assert [s for _, s in top] == pytest.approx([scores[i] for i, _ in top])


def test_more_candidates_than_the_max_batch_are_split(client, in_process):
    items = list(ITEMS) + ["never-seen-item"]  # 501 candidates > MAX_BATCH, one out of vocabulary
    client.max_batch = MAX_BATCH
    served = client.score("9", "S2", items)
    np.testing.assert_allclose(served, _in_process_scores(in_process, client.store, "9", "S2", items), rtol=1e-6)


def test_unknown_user_gets_the_cold_start_vector(client):
    store = client.store
    np.testing.assert_array_equal(store.user_vector("no-such-user"), store.user_vector(COLD_START_ID))
    np.testing.assert_array_equal(store.user_vector("no-such-user"), store.default_user)
    assert not np.array_equal(store.user_vector("3"), store.default_user)
    unknown = client.score("no-such-user", "S0", CANDIDATES)
    # the unknown id is also out of the user vocabulary: same index as any other unknown user
    np.testing.assert_allclose(unknown, client.score("another-stranger", "S0", CANDIDATES), rtol=1e-6)


def test_serving_default_on_examples_equals_predict_raw(client):
    store = client.store
    serialized = [example("3", "S1", item, store.user_vector("3"), store.scenario_vector("S1")).SerializeToString()
                  for item in CANDIDATES[:8]]
    request = raw_request("3", "S1", CANDIDATES[:8], store.user_vector("3"), store.scenario_vector("S1"))
    request.model_spec.signature_name = "serving_default"
    for name in list(request.inputs):
        del request.inputs[name]
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized))
    from_examples = tf.make_ndarray(client.predict(request).outputs["probability"]).reshape(-1)
    np.testing.assert_allclose(from_examples, client.score("3", "S1", CANDIDATES[:8]), rtol=1e-6)


def test_metadata_lists_the_three_signatures(client):
    metadata = client.metadata()
    assert {"serving_default", "predict_raw", "transform_features"} <= set(metadata)
    raw = metadata["predict_raw"]
    assert raw["inputs"] == {"user_id": ("string", (-1,)), "item_id": ("string", (-1,)),
                             "scenario": ("string", (-1,)), "user_knowledge": ("float32", (-1, DIM)),
                             "scenario_knowledge": ("float32", (-1, DIM))}
    assert raw["outputs"] == {"probability": ("float32", (-1, 1))}
    assert metadata["serving_default"]["inputs"] == {"examples": ("string", (-1,))}


def test_status_reports_the_available_version(client):
    assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": 0, "error_message": ""}]


def test_classify_scores_examples(local, model_dir):
    store = PushedKnowledgeStore.latest(model_dir)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "llm4msr"
    for item in CANDIDATES[:4]:
        request.input.example_list.examples.add().CopyFrom(
            example("3", "S1", item, store.user_vector("3"), store.scenario_vector("S1")))
    with ServingClient(local.target, store) as client:
        response = client.predictions.Classify(request, timeout=5)
        scores = [c.classes[1].score for c in response.result.classifications]
        np.testing.assert_allclose(scores, client.score("3", "S1", CANDIDATES[:4]), rtol=1e-6)
    assert response.model_spec.version.value == 1


# --- malformed requests: refused before the model runs, with a message naming the fault -------------

def _valid_request(store, rows=3):
    return raw_request("3", "S0", ITEMS[:rows], store.user_vector("3"), store.scenario_vector("S0"))


def _set(name, value, dtype=None):
    def change(request):
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype))
    return change


def _both(first, second):
    def change(request):
        first(request)
        second(request)
    return change


def _claimed_shape(*dims) -> tensor_pb2.TensorProto:
    """One float value that claims the shape `dims` (make_ndarray would fill all of it)."""
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5], tensor_shape=shape)


MALFORMED = {
    "unknown model": (lambda r: setattr(r.model_spec, "name", "other"), "NOT_FOUND", "'other'"),
    "unknown version": (lambda r: r.model_spec.version.__setattr__("value", 99), "NOT_FOUND", "version 99"),
    "unknown label": (lambda r: setattr(r.model_spec, "version_label", "blue"), "INVALID_ARGUMENT",
                      "Unrecognized servable version label: 'blue'"),
    "unknown signature": (lambda r: setattr(r.model_spec, "signature_name", "predict_cooked"), "INVALID_ARGUMENT",
                          "unknown signature 'predict_cooked'"),
    "unknown input": (_set("colour", ["red"] * 3), "INVALID_ARGUMENT", "unknown ['colour']"),
    "missing input": (lambda r: r.inputs.pop("item_id"), "INVALID_ARGUMENT", "missing ['item_id']"),
    "wrong dtype": (_set("user_id", [1.0, 2.0, 3.0], tf.float32), "INVALID_ARGUMENT",
                    "input 'user_id' has dtype float32, signature 'predict_raw' expects string"),
    "wrong knowledge width": (_set("user_knowledge", np.zeros((3, DIM + 1), np.float32)), "INVALID_ARGUMENT",
                              f"shape [3, {DIM + 1}], signature 'predict_raw' expects [None, {DIM}] "
                              f"(wrong knowledge width)"),
    "scalar instead of a batch": (_set("item_id", "1"), "INVALID_ARGUMENT", "input 'item_id' has shape []"),
    "ragged batch": (_set("user_id", ["3", "3"]), "INVALID_ARGUMENT", "different batch sizes"),
    "more users than candidates": (_both(_set("item_id", ["1"]), _set("user_id", ["3", "3", "3"])),
                                   "INVALID_ARGUMENT", "'user_id' has 3 rows, others 1"),
    "unknown scenario": (_set("scenario", ["S9"] * 3), "INVALID_ARGUMENT",
                         "unknown scenario id 'S9' (known: S0, S1, S2)"),
    "no candidates": (_set("item_id", np.array([], object), tf.string), "INVALID_ARGUMENT",
                      "the request has no rows to score (signature 'predict_raw')"),
    "unknown output": (lambda r: r.output_filter.append("logit"), "INVALID_ARGUMENT", "output_filter"),
    "NaN knowledge": (_set("user_knowledge", np.full((1, DIM), np.nan, np.float32)), "INVALID_ARGUMENT",
                      "input 'user_knowledge' holds a non-finite value (NaN or infinity) in row 0"),
    "infinite knowledge": (_set("scenario_knowledge", np.full((1, DIM), np.inf, np.float32)), "INVALID_ARGUMENT",
                           "'scenario_knowledge' holds a non-finite value"),
    # ~100 bytes claiming [4,000,000, DIM]: refused before it is expanded (it took 27 s and 6.8 GB)
    "shape bomb": (lambda r: r.inputs["user_knowledge"].CopyFrom(_claimed_shape(4_000_000, DIM)),
                   "INVALID_ARGUMENT", "4000000 rows (candidates) in one request, more than the maximum batch"),
}


@pytest.mark.parametrize("fault", MALFORMED)
def test_malformed_requests_are_refused_with_a_clear_message(local, model_dir, fault):
    change, code, message = MALFORMED[fault]
    request = _valid_request(PushedKnowledgeStore.latest(model_dir))
    change(request)
    with ServingClient(local.target) as client, pytest.raises(grpc.RpcError) as caught:
        client.predict(request)
    assert caught.value.code().name == code, caught.value.details()
    assert message in caught.value.details()


def _examples_request(*serialized) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "llm4msr"
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(serialized, object), tf.string))
    return request


def _example(store, scenario="S0", user_vector=None):
    vector = store.user_vector("3") if user_vector is None else user_vector
    return example("3", scenario, "1", vector, store.scenario_vector("S0")).SerializeToString()


BAD_EXAMPLES = {  # serving_default: the knowledge rides in the tf.Example, checked inside the signature
    "no examples": (lambda store: [], "the request has no rows to score (signature 'serving_default')"),
    "garbage bytes": (lambda store: [_example(store), b"\xff\xfe not a proto \x00"],
                      "examples[1] is not a serialized tf.Example"),
    "unknown scenario": (lambda store: [_example(store, "S9")], "unknown scenario id 'S9' (known: S0, S1, S2)"),
    "NaN knowledge": (lambda store: [_example(store, user_vector=np.full(DIM, np.nan))],
                      "input 'user_knowledge' holds a non-finite value (NaN or infinity)"),
    "infinite knowledge": (lambda store: [_example(store, user_vector=np.full(DIM, -np.inf))],
                           "input 'user_knowledge' holds a non-finite value (NaN or infinity)"),
}


@pytest.mark.parametrize("fault", BAD_EXAMPLES)
def test_bad_examples_are_refused_with_a_clear_message(local, model_dir, fault):
    make, message = BAD_EXAMPLES[fault]
    with ServingClient(local.target) as client, pytest.raises(grpc.RpcError) as caught:
        client.predict(_examples_request(*make(PushedKnowledgeStore.latest(model_dir))))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert message in caught.value.details()


def test_too_many_candidates_in_one_request(local, model_dir):
    request = _valid_request(PushedKnowledgeStore.latest(model_dir), rows=MAX_BATCH + 1)
    with ServingClient(local.target) as client, pytest.raises(grpc.RpcError) as caught:
        client.predict(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{MAX_BATCH + 1} rows (candidates) in one request, more than the maximum batch of {MAX_BATCH}" \
        in caught.value.details()


def test_metadata_needs_the_signature_def_field(local):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(local.target))
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["owner"])
    request.model_spec.name = "llm4msr"
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModelMetadata(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "signature_def" in caught.value.details()


# --- versions --------------------------------------------------------------------------------------

def test_a_version_pushed_under_load_is_picked_up_without_a_failed_request(model_dir, tmp_path):
    push_dir = tmp_path / "llm4msr"
    shutil.copytree(model_dir, push_dir)
    server = LocalServer(push_dir)
    store = PushedKnowledgeStore.latest(push_dir)
    failures, versions, stop = [], set(), threading.Event()

    def traffic():
        with ServingClient(server.target, store) as client:
            while not stop.is_set():
                try:
                    request = raw_request("3", "S0", CANDIDATES, store.user_vector("3"), store.scenario_vector("S0"))
                    versions.add(client.predict(request).model_spec.version.value)
                except grpc.RpcError as error:
                    failures.append(error)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        _wait(lambda: versions == {1}, 10)
        copy_version(push_dir, 1, 2)
        _wait(lambda: 2 in versions, 30)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    with ServingClient(server.target, store) as client:
        assert [(v["version"], v["state"]) for v in client.status()] == [(1, "AVAILABLE"), (2, "AVAILABLE")]
        assert client.score("3", "S0", CANDIDATES[:5]).shape == (5,)
        assert client.store.version == 2  # the client's knowledge store followed the model
        labelled = client.predict(_labelled(store, "stable"))
        assert labelled.model_spec.version.value == 1
        assert client.predict(_labelled(store, "canary")).model_spec.version.value == 2
        copy_version(push_dir, 1, 3)  # a third version retires the oldest (two are kept)
        _wait(lambda: [v["version"] for v in client.status()] == [2, 3], 30)
    server.stop()
    assert not failures, failures[:3]
    assert versions == {1, 2}


def _labelled(store, label):
    request = _valid_request(store)
    request.model_spec.version_label = label
    return request


def test_a_half_written_version_is_retried_while_the_old_one_serves(model_dir, tmp_path):
    push_dir = tmp_path / "llm4msr"
    shutil.copytree(model_dir, push_dir)
    registry = ModelRegistry(push_dir, max_batch=MAX_BATCH)
    registry.poll()
    broken = push_dir / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not yet complete")
    registry.poll()
    assert sorted(registry.snapshot.servables) == [1]
    shutil.rmtree(broken)
    copy_version(push_dir, 1, 2)
    assert registry.poll() and sorted(registry.snapshot.servables) == [1, 2]


def test_a_broken_version_is_retried_with_back_off_and_reported_in_the_status(model_dir, tmp_path, monkeypatch):
    from llm4msr.serving import server

    push_dir = tmp_path / "llm4msr"
    shutil.copytree(model_dir, push_dir)
    clock = [1000.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: clock[0])
    attempts = []
    load = server.Servable.load
    monkeypatch.setattr(server.Servable, "load", lambda *args: attempts.append(args[1]) or load(*args))
    registry = ModelRegistry(push_dir, max_batch=MAX_BATCH, poll_seconds=1.0)
    registry.poll()
    broken = push_dir / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"truncated")
    for seconds in range(20):  # it retried every second forever (0.45 core); now after 2, 4, 8, 16 s
        clock[0] = 1000.0 + seconds
        registry.poll()
    assert attempts == [1, 2, 2, 2, 2] and sorted(registry.snapshot.servables) == [1]
    (broken / "saved_model.pb").write_bytes(b"truncated, and then some")  # a copy still running: retry at once
    registry.poll()
    assert attempts[-1] == 2 and len(attempts) == 6

    grpc_server, port = make_server(registry, port=0)
    try:
        with ServingClient(f"127.0.0.1:{port}") as client:
            status = {v["version"]: v for v in client.status()}
        assert status[1]["state"] == "AVAILABLE"
        assert status[2]["state"] == "END" and status[2]["error_code"] != 0
        assert "SavedModel" in status[2]["error_message"]  # the load error, as TF Serving reports it
    finally:
        grpc_server.stop(grace=None)
    shutil.rmtree(broken)
    copy_version(push_dir, 1, 2)
    assert registry.poll() and sorted(registry.snapshot.servables) == [1, 2] and not registry.snapshot.failed


@pytest.fixture
def slow_model(monkeypatch):
    """Every model call takes 1 s (the in-process server runs `server.run`)."""
    from llm4msr.serving import server

    run = server.run
    monkeypatch.setattr(server, "run", lambda *args: time.sleep(1.0) or run(*args))


def test_requests_beyond_the_limits_get_resource_exhausted_and_deadline_exceeded(model_dir, slow_model):
    registry = ModelRegistry(model_dir, max_batch=MAX_BATCH)
    registry.poll()
    server, port = make_server(registry, port=0, limits=Limits(max_concurrent_requests=2, request_timeout=0.5,
                                                               model_workers=1))
    store = PushedKnowledgeStore.latest(model_dir)
    outcomes = []

    def call():
        with ServingClient(f"127.0.0.1:{port}", timeout=30) as client:
            try:
                client.predict(_valid_request(store))
                outcomes.append("OK")
            except grpc.RpcError as error:
                outcomes.append(error.code().name)

    try:
        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:  # one runs (1 s, past the 0.5 s limit), one waits for the worker, one is one too many
            thread.start()
            time.sleep(0.1)
        for thread in threads:
            thread.join()
        with ServingClient(f"127.0.0.1:{port}") as client:
            assert client.status()[0]["state"] == "AVAILABLE"  # status does not wait for a model worker
    finally:
        server.stop(grace=None)
    assert sorted(outcomes) == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"], outcomes


def test_the_client_retries_until_the_server_is_up(model_dir):
    registry = ModelRegistry(model_dir, max_batch=MAX_BATCH)
    registry.poll()  # loaded beforehand: the port opens 0.3 s after the first attempt
    port, servers = free_port(), []
    starter = threading.Timer(0.3, lambda: servers.append(make_server(registry, port=port)[0]))
    with ServingClient(f"127.0.0.1:{port}", PushedKnowledgeStore.latest(model_dir), timeout=10) as client:
        starter.start()
        try:
            assert client.score("3", "S0", CANDIDATES[:3]).shape == (3,)
        finally:
            starter.join()
            for server in servers:
                server.stop(grace=None)


# --- command line ---------------------------------------------------------------------------------

def test_recommend_prints_titles_and_scores(local, model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title,categories\n" +
                                    "".join(f'{i},"Movie {i}, The (1999)",Drama\n' for i in CANDIDATES))
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("item_id\n" + "\n".join(CANDIDATES[:50]) + "\n")
    code = cli.main(["recommend", "--user", "3", "--scenario", "S1", "--candidates", str(candidates),
                     "--data", str(data), "--k", "3", "--server", local.target, "--model-dir", str(model_dir)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 4 and f"top 3 of 50 for user 3 in scenario S1 (model version 1, {local.target})" \
        in out[0]
    with ServingClient(local.target, PushedKnowledgeStore.latest(model_dir)) as client:
        expected = client.recommend("3", "S1", CANDIDATES[:50], 3)
    for line, (item, score) in zip(out[1:], expected):
        assert f"{score:.4f}" in line and f"Movie {item}, The (1999)" in line


def test_recommend_every_scenario_through_an_embedded_server(model_dir, tmp_path, capsys):
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("\n".join(CANDIDATES) + "\n")
    code = cli.main(["recommend", "--candidates", str(candidates), "--k", "5", "--model-dir", str(model_dir),
                     "--embedded-server"])
    out = capsys.readouterr().out.splitlines()
    headers = [line for line in out if line.startswith("top 5 of 100 for user 1 in scenario")]  # min("1".."40")
    assert code == 0 and len(out) == 3 * 6 and [h.split()[9] for h in headers] == ["S0", "S1", "S2"]


def test_recommend_without_candidates_is_a_clear_error(model_dir, capsys):
    code = cli.main(["recommend", "--user", "3", "--scenario", "S1", "--candidates", os.devnull,
                     "--model-dir", str(model_dir)])
    assert code == 2 and "no candidates" in capsys.readouterr().err


@pytest.mark.parametrize("arguments,message", [
    (["--candidates", "/nonexistent/candidates.txt"], "--candidates /nonexistent/candidates.txt: cannot read it"),
    (["--candidates", os.devnull, "--k", "-3"], "--k must be at least 1, got -3"),
    (["--candidates", os.devnull, "--k", "0"], "--k must be at least 1, got 0"),
])
def test_recommend_refuses_bad_arguments_without_a_traceback(model_dir, arguments, message, capsys):
    code = cli.main(["recommend", "--user", "3", "--scenario", "S1", "--model-dir", str(model_dir), *arguments])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error


def test_recommend_names_the_server_error(model_dir, tmp_path, capsys):
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("1\n2\n")
    nobody = f"127.0.0.1:{free_port()}"
    code = cli.main(["recommend", "--user", "3", "--scenario", "S1", "--candidates", str(candidates),
                     "--model-dir", str(model_dir), "--server", nobody, "--timeout", "1"])
    error = capsys.readouterr().err
    assert code == 2 and f"llm4msr: error: {nobody}: " in error
    assert "UNAVAILABLE" in error or "DEADLINE_EXCEEDED" in error


def test_serve_command_binds_localhost_and_stops_on_sigterm(model_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", "import sys; from llm4msr.cli import main; sys.exit(main())",
                                "serve", "--model-dir", str(model_dir), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert f"serving llm4msr versions [1] from {model_dir} on 127.0.0.1:{port}" in line, line
        with ServingClient(f"127.0.0.1:{port}", PushedKnowledgeStore.latest(model_dir)) as client:
            assert client.status()[0]["state"] == "AVAILABLE"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()


def test_a_second_server_on_a_taken_port_refuses_to_start(model_dir, capsys):
    first = LocalServer(model_dir)
    try:
        port = first.target.rsplit(":", 1)[1]
        with pytest.raises(OSError, match="is another server using the port"):
            make_server(first.registry, port=int(port))
        code = cli.main(["serve", "--model-dir", str(model_dir), "--port", port])
        assert code == 2 and "cannot listen on 127.0.0.1:" + port in capsys.readouterr().err
    finally:
        first.stop()


def test_a_claimed_shape_is_refused_before_the_tensor_is_materialised(monkeypatch):
    from tensorflow.core.protobuf import meta_graph_pb2

    from llm4msr.serving import server

    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["user_knowledge"].CopyFrom(meta_graph_pb2.TensorInfo(
        dtype=types_pb2.DT_FLOAT, tensor_shape=_claimed_shape(-1, DIM).tensor_shape))

    def never(proto):
        raise AssertionError("the claimed tensor was materialised")
    monkeypatch.setattr(server.tf, "make_ndarray", never)
    for bomb, message in ((_claimed_shape(4_000_000, DIM), "4000000 rows"),
                          (_claimed_shape(3, 100_000_000), "wrong knowledge width")):
        with pytest.raises(server.RequestError, match=message):
            server.check_inputs("predict_raw", signature, {"user_knowledge": bomb}, MAX_BATCH)


# --- fuzz: whatever a request holds, the answer is a result or a client error, quickly --------------

def _random_tensor():
    from hypothesis import strategies as st

    dims = st.lists(st.integers(-3, 10**12) | st.integers(0, 4), max_size=3)
    shape = st.builds(lambda d, unknown: tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in d], unknown_rank=unknown), dims, st.booleans())
    dtypes = st.sampled_from([types_pb2.DT_FLOAT, types_pb2.DT_STRING, types_pb2.DT_INT64, types_pb2.DT_DOUBLE,
                              types_pb2.DT_HALF, types_pb2.DT_BOOL]) | st.integers(0, 200)
    return st.builds(
        lambda dtype, shape, floats, strings, ints, content: tensor_pb2.TensorProto(
            dtype=dtype, tensor_shape=shape, float_val=floats, string_val=strings, int64_val=ints,
            tensor_content=content),
        dtypes, shape, st.lists(st.floats(width=32), max_size=40), st.lists(st.binary(max_size=20), max_size=8),
        st.lists(st.integers(-2**63, 2**63 - 1), max_size=8), st.binary(max_size=64))


def test_fuzz_request_validation_answers_with_a_client_error_never_a_crash(model_dir):
    from hypothesis import HealthCheck, given, settings, strategies as st

    from llm4msr.serving import server

    servable = server.Servable.load(model_dir / "1", 1, MAX_BATCH)
    store = PushedKnowledgeStore.latest(model_dir)
    names = ["user_id", "item_id", "scenario", "user_knowledge", "scenario_knowledge", "colour"]

    @settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(names), _random_tensor(), max_size=3), st.lists(st.sampled_from(names),
                                                                                             max_size=2))
    def check(replaced, removed):
        request = _valid_request(store)
        for name in removed:
            request.inputs.pop(name, None)
        for name, proto in replaced.items():
            request.inputs[name].CopyFrom(proto)
        try:
            outputs = servable.predict("predict_raw", request.inputs)
        except server.RequestError as error:
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT and len(str(error)) < 1000
        else:
            assert 0 < outputs["probability"].shape[0] <= MAX_BATCH

    check()


def test_fuzz_serialized_examples_answer_with_a_client_error_never_a_crash(model_dir):
    from hypothesis import given, settings, strategies as st

    from llm4msr.serving import server

    servable = server.Servable.load(model_dir / "1", 1, MAX_BATCH)
    valid = _example(PushedKnowledgeStore.latest(model_dir))
    mutated = st.builds(lambda cut, noise: valid[:cut] + noise + valid[cut + len(noise):],
                        st.integers(0, len(valid)), st.binary(min_size=1, max_size=8))

    @settings(max_examples=150, deadline=2000)
    @given(st.lists(st.binary(max_size=200) | mutated | st.just(valid), min_size=1, max_size=4))
    def check(serialized):
        request = _examples_request(*serialized)
        try:
            servable.predict("serving_default", request.inputs)
        except server.RequestError as error:
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT and len(str(error)) < 1000

    check()
