"""Multi-worker training for real: two `llm4msr train` worker processes on 127.0.0.1 (TF_CONFIG,
MultiWorkerMirroredStrategy) train the tiny fixture together and reach the one-worker AUC."""
import json
import os
import socket
import subprocess
import sys

import pytest

TRAIN = ["train", "--backbone", "star", "--seed", "0", "--epochs", "3", "--batch-size", "256"]
AUC_NOISE = 0.03  # this config on one worker, seeds 0-3: test AUC 0.598-0.617 (sd 0.009, 298 rows)


def _free_ports(count: int):
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def _train(tiny_data, out, tf_config=None):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    environment.pop("TF_CONFIG", None)
    if tf_config:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    command = [sys.executable, "-c", "import sys; from llm4msr.cli import main; sys.exit(main(sys.argv[1:]))", *TRAIN, "--data", str(tiny_data), "--out", str(out)]
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, out) -> dict:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return json.loads(out.read_text())


def test_two_workers_train_one_model_and_reach_the_single_worker_auc(tiny_data, tmp_path):
    # one worker first: it also fills the analysed-Transform cache both workers then read
    single = _finish(_train(tiny_data, tmp_path / "single.json"), tmp_path / "single.json")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = [_train(tiny_data, tmp_path / f"worker{index}.json",
                      {"cluster": cluster, "task": {"type": "worker", "index": index}}) for index in range(2)]
    first, second = (_finish(process, tmp_path / f"worker{index}.json") for index, process in enumerate(workers))

    assert single["workers"] == 1 and first["workers"] == second["workers"] == 2
    # one model: the replicas stay equal, so both workers score the test split alike
    assert first["test"]["overall"]["auc"] == second["test"]["overall"]["auc"]
    assert first["epochs"] == second["epochs"]
    assert abs(first["test"]["overall"]["auc"] - single["test"]["overall"]["auc"]) < AUC_NOISE, (first, single)


def test_tf_config_names_the_cluster_and_the_chief_and_a_bad_one_is_refused(monkeypatch):
    from llm4msr.errors import UserFacingError
    from llm4msr.trainer.training import cluster_size, is_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_size() == 1 and is_chief()
    workers = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}
    monkeypatch.setenv("TF_CONFIG", json.dumps({**workers, "task": {"type": "worker", "index": 1}}))
    assert cluster_size() == 2 and not is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert cluster_size() == 2 and not is_chief()  # with a chief, worker 0 is not it
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserFacingError, match="TF_CONFIG: not valid JSON"):
        cluster_size()
