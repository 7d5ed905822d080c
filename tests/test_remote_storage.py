"""The product on remote storage: an S3 emulator (moto's server on 127.0.0.1) holds the data set,
the knowledge cache, the pipeline root and the serving dir, all given as s3:// URIs.

TensorFlow reaches s3:// through tensorflow-io's plugin (`tf.io.gfile`), Beam through its boto3
file system (the `--s3_*` options). The commands run as a user runs them, in their own processes;
this process reads the bucket back with boto3 only, so what it checks is what the storage holds.
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "llm4msr-test"
LLM4MSR = [sys.executable, "-m", "llm4msr"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An empty bucket on a moto S3 server; yields (environment for the commands, Beam's S3 flags, boto3 client)."""
    import boto3

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                   # tensorflow-io's S3 file system: the endpoint with its scheme (a bare host means https)
                   "S3_ENDPOINT": endpoint, "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0",
                   "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    server = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1",
                               "-p", str(port)], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(endpoint, server)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        beam_flags = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing", "--s3_secret_access_key=testing",
                      "--s3_region_name=us-east-1", "--s3_disable_ssl"]
        yield environment, beam_flags, client
    finally:
        server.terminate()
        server.wait(10)


def _wait_for(endpoint: str, server: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"the S3 emulator did not start on {endpoint}")
            time.sleep(0.2)


def _run(environment, *args, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run([*LLM4MSR, *args], env=environment, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"llm4msr {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _counts(output: str) -> dict:
    """'wrote ...: 43 prompts, 0 cache hits, 43 inferences, ...' -> {"prompts": 43, ...}"""
    return {name: int(number) for number, name in re.findall(r"(?<![\d.])(\d+) (prompts|cache hits|inferences),", output)}


def _keys(client, prefix: str):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(entry["Key"] for page in pages for entry in page.get("Contents", []))


def _download(client, prefix: str, into: pathlib.Path) -> pathlib.Path:
    """The objects under `prefix` as a local folder (what a reader elsewhere would see)."""
    keys = _keys(client, prefix)
    assert keys, f"nothing under s3://{BUCKET}/{prefix}"
    for key in keys:
        target = into / key[len(prefix):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(target))
    return into


@pytest.fixture(scope="module")
def data_on_s3(s3, tiny_movielens):
    environment, _, client = s3
    _run(environment, "data", "prepare", "--source", "movielens-latest-small", "--data-dir", str(tiny_movielens),
         "--no-download", "--out", f"s3://{BUCKET}/data")
    return f"s3://{BUCKET}/data"


def test_data_prepare_publishes_the_canonical_set_on_s3(s3, data_on_s3, tiny_data):
    _, _, client = s3
    names = [key.split("/", 1)[1] for key in _keys(client, "data/")]
    assert names == [".llm4msr-output", "interactions.csv", "items.csv", "manifest.json", "scenarios.json"]
    written = client.get_object(Bucket=BUCKET, Key="data/interactions.csv")["Body"].read()
    assert written == (tiny_data / "interactions.csv").read_bytes()  # the bytes a local prepare writes
    assert not any(".staging." in key for key in _keys(client, ""))


def test_the_knowledge_job_reads_and_writes_s3_and_its_cache_there_serves_a_rerun(s3, data_on_s3, tmp_path):
    from llm4msr.pipeline.knowledge.artifact import read_knowledge

    environment, beam_flags, client = s3
    out, cache = f"s3://{BUCKET}/knowledge", f"s3://{BUCKET}/cache"
    beam_args = " ".join(["--direct_running_mode=in_memory", *beam_flags])
    extract = ["knowledge", "extract", "--data", data_on_s3, "--out", out, "--cache-dir", cache,
               "--levels", "user,scenario", "--beam-args", beam_args, "--no-progress"]
    first = _counts(_run(environment, *extract).stdout)
    assert first["inferences"] > 0 and first["cache hits"] == 0
    chunks = [key for key in _keys(client, "cache/") if key.endswith(".npz")]
    assert chunks, "the cache on S3 got no chunk"
    knowledge = read_knowledge(_download(client, "knowledge/", tmp_path / "first"))
    assert len(knowledge.users) == 41 and len(knowledge.scenarios) == 3  # 40 users + the cold-start row

    second = _counts(_run(environment, *extract, "--force").stdout)
    assert second["inferences"] == 0 and second["cache hits"] == first["prompts"]  # all from the S3 cache
    again = read_knowledge(_download(client, "knowledge/", tmp_path / "second"))
    assert {u: r.vector.tolist() for u, r in again.users.items()} == \
        {u: r.vector.tolist() for u, r in knowledge.users.items()}


def test_the_pipeline_runs_with_data_root_cache_and_serving_dir_on_s3(s3, data_on_s3, tmp_path):
    """`llm4msr pipeline run` with every location an s3:// URI (ML Metadata's SQLite stays local):
    each component's artifacts are in the bucket, and the version pushed there loads and scores."""
    import numpy as np
    import tensorflow as tf

    from llm4msr.serving.knowledge_store import PushedKnowledgeStore

    environment, beam_flags, client = s3
    config = {"dataset_dir": data_on_s3, "root": f"s3://{BUCKET}/pipeline", "serving_dir": f"s3://{BUCKET}/serving",
              "knowledge_cache_dir": f"s3://{BUCKET}/cache", "metadata_dir": str(tmp_path / "metadata"),
              "model": {"backbone": "shared_bottom", "knowledge": "both"}, "training": {"epochs": 1, "batch_size": 256},
              "beam_args": ["--direct_running_mode=in_memory", *beam_flags],
              # the tiny fixture's scenario S2 has ~25 test examples: the bounds are tested in test_pipeline_e2e
              "auc_floor": 0.0, "calibration_band": [0.2, 5.0], "max_normalized_logloss": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = tmp_path / "report.json"
    _run(environment, "pipeline", "run", "--config", str(tmp_path / "config.json"), "--report", str(report))

    components = {row["component"]: row["state"] for row in json.loads(report.read_text())["components"]}
    assert {"CanonicalExampleGen", "KnowledgeExtractor", "KnowledgeJoiner", "Transform", "Trainer", "Evaluator",
            "Pusher"} <= set(components) and set(components.values()) == {"COMPLETE"}
    outputs = {key.split("/")[2] for key in _keys(client, "pipeline/artifacts/")}
    assert {"CanonicalExampleGen", "KnowledgeExtractor", "StatisticsGen", "KnowledgeJoiner", "Transform", "Trainer",
            "Evaluator", "Pusher"} <= outputs
    assert (tmp_path / "metadata" / "metadata.sqlite").is_file()

    served = _download(client, "serving/", tmp_path / "serving")
    store = PushedKnowledgeStore.latest(served)
    version = served / str(store.version)
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()
    model = tf.saved_model.load(str(version))
    users = sorted(u for u in store.users if not u.startswith("<"))[:4]
    scores = model.signatures["predict_raw"](
        user_id=tf.constant(users), item_id=tf.constant(["1"] * 4), scenario=tf.constant(["S0"] * 4),
        user_knowledge=tf.constant(np.stack([store.user_vector(u) for u in users])),
        scenario_knowledge=tf.constant(np.stack([store.scenario_vector("S0")] * 4)))["probability"].numpy()
    assert scores.shape == (4, 1) and np.all((scores > 0) & (scores < 1))
