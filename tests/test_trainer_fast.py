"""`llm4msr train` end to end on the tiny MovieLens fixture, its knowledge errors, and the numpy
metrics it reports."""
import json

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from llm4msr.cli import main
from llm4msr.trainer import metrics
from llm4msr.trainer.fast import Encoder, Vocabulary

METRICS = {"auc", "gauc", "logloss", "examples"}




def run_train(tiny_data, tmp_path, *extra):
    out = tmp_path / "result.json"
    code = main(["train", "--data", str(tiny_data), "--backbone", "star", "--seed", "1", "--epochs", "2",
                 "--batch-size", "256", "--out", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else None)


@pytest.mark.parametrize("knowledge", ["none", "both"])
def test_train_end_to_end_reports_test_metrics(tiny_data, tiny_knowledge, tmp_path, capsys, knowledge):
    extra = ["--knowledge", knowledge] + (["--knowledge-dir", str(tiny_knowledge)] if knowledge != "none" else [])
    code, result = run_train(tiny_data, tmp_path, *extra)
    assert code == 0
    assert result["knowledge"] == knowledge and result["backbone"] == "star"
    assert 1 <= result["epochs"] <= 2 and result["train_seconds"] > 0
    overall = result["test"]["overall"]
    assert set(overall) == METRICS and overall["examples"] == 298  # the fixture's test split
    assert 0 <= overall["auc"] <= 1 and 0 < overall["logloss"] < 5
    assert sorted(result["test"]["scenarios"]) == ["S0", "S1", "S2"]
    assert sum(s["examples"] for s in result["test"]["scenarios"].values()) == 298
    assert result["input_spec"]["user_knowledge_dim"] == (8 if knowledge == "both" else 0)
    assert "overall" in capsys.readouterr().out


def test_knowledge_mode_without_knowledge_dir_fails_clearly(tiny_data, tmp_path, capsys):
    code, result = run_train(tiny_data, tmp_path, "--knowledge", "user")
    assert code == 2 and result is None
    assert "--knowledge user needs knowledge vectors: pass --knowledge-dir" in capsys.readouterr().err


def test_knowledge_dir_that_is_not_a_knowledge_folder_fails_clearly(tiny_data, tmp_path, capsys):
    code, _ = run_train(tiny_data, tmp_path, "--knowledge", "scenario", "--knowledge-dir", str(tmp_path))
    assert code == 2
    assert "is not a knowledge folder" in capsys.readouterr().err


def test_batches_hold_every_row_once_per_epoch_with_its_own_label_and_knowledge(tiny_data, tiny_knowledge):
    from llm4msr.pipeline.data.canonical import read_dataset
    from llm4msr.pipeline.knowledge.artifact import read_knowledge

    dataset, knowledge = read_dataset(tiny_data), read_knowledge(tiny_knowledge)
    encoder = Encoder(dataset, knowledge)
    train = encoder.encode(dataset, "train")
    # a row's identity: its user and item indices, year and label; the user fixes its knowledge vector
    expected = sorted(zip(train.features["user_id"], train.features["item_id"], train.features["year"], train.labels))
    user_index = encoder.vocabularies["user_id"].index
    vector_of = {user_index[u]: knowledge.user_vector(u) for u in set(train.users)}
    data = encoder.tf_dataset(train, batch_size=64, shuffle_seed=3)
    orders = []
    for _ in range(2):  # two epochs
        rows = []
        for features, labels in data:
            users = features["user_id"].numpy()
            np.testing.assert_array_equal(features["user_knowledge"].numpy(), np.stack([vector_of[u] for u in users]))
            scenarios = features["scenario"].numpy()
            np.testing.assert_array_equal(features["scenario_knowledge"].numpy(), encoder.scenario_table[scenarios])
            rows += zip(users, features["item_id"].numpy(), features["year"].numpy(), labels.numpy())
        assert sorted(rows) == expected
        orders.append(rows)
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert orders[0] != [row for row in zip(train.features["user_id"], train.features["item_id"],
                                            train.features["year"], train.labels)]


def test_vocabulary_orders_by_train_frequency_and_maps_unknowns_to_zero():
    vocabulary = Vocabulary(["b", "a", "b", "c", "a", "b"])
    assert vocabulary.size == 4
    assert vocabulary.lookup(["b", "a", "c", "zzz"]).tolist() == [1, 2, 3, 0]


def test_auc_and_logloss_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500), 2)  # rounded: ties must count one half
    assert metrics.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.logloss(labels, scores) == pytest.approx(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)))
    assert np.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_gauc_weights_users_by_impressions_and_skips_single_class_users():
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.2, 0.8, 0.3, 0.5, 0.6]
    users = ["a", "a", "b", "b", "b", "b", "c"]  # a: AUC 1 (2 rows), b: AUC 2/3*... , c: one class
    expected_b = roc_auc_score([0, 1, 0, 1], [0.2, 0.8, 0.3, 0.5])
    assert metrics.gauc(labels, scores, users) == pytest.approx((1.0 * 2 + expected_b * 4) / 6)


def test_report_has_overall_and_per_scenario_slices():
    report = metrics.report([1, 0, 1, 0], [0.9, 0.1, 0.2, 0.8], ["u", "u", "v", "v"], ["S1", "S1", "S0", "S0"],
                            scenario_order=["S0", "S1", "S2"])
    assert list(report["scenarios"]) == ["S0", "S1"]  # S2 has no rows
    assert report["scenarios"]["S1"]["auc"] == 1.0 and report["scenarios"]["S0"]["auc"] == 0.0
    assert report["overall"]["examples"] == 4
