"""`llm4msr train` end to end on the tiny MovieLens fixture, its knowledge errors, and the numpy
metrics it reports."""
import json

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from llm4msr.cli import main
from llm4msr.contract import KNOWLEDGE_REDUCTION
from llm4msr.trainer import metrics
from llm4msr.trainer.fast import ExampleEncoder

METRICS = {"auc", "gauc", "logloss", "calibration", "examples"}




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
    assert result["input_spec"]["user_knowledge_dim"] == (KNOWLEDGE_REDUCTION if knowledge == "both" else 0)
    assert "overall" in capsys.readouterr().out


def test_knowledge_mode_without_knowledge_dir_fails_clearly(tiny_data, tmp_path, capsys):
    code, result = run_train(tiny_data, tmp_path, "--knowledge", "user")
    assert code == 2 and result is None
    assert "--knowledge user needs knowledge vectors: pass --knowledge-dir" in capsys.readouterr().err


def test_knowledge_dir_that_is_not_a_knowledge_folder_fails_clearly(tiny_data, tmp_path, capsys):
    code, _ = run_train(tiny_data, tmp_path, "--knowledge", "scenario", "--knowledge-dir", str(tmp_path))
    assert code == 2
    assert "is not a knowledge folder" in capsys.readouterr().err


def test_knowledge_extracted_from_another_data_set_is_refused(tiny_data, tiny_knowledge, tmp_path, capsys):
    import shutil

    from llm4msr.pipeline.data.canonical import dataset_fingerprint

    other = tmp_path / "other-knowledge"
    shutil.copytree(tiny_knowledge, other)
    metadata = json.loads((other / "knowledge.json").read_text())
    (other / "knowledge.json").write_text(json.dumps({**metadata, "dataset": "/data/another",
                                                      "inputs": {"dataset": "0123456789abcdef"}}))
    code, _ = run_train(tiny_data, tmp_path, "--knowledge", "both", "--knowledge-dir", str(other))
    error = capsys.readouterr().err
    assert code == 2 and "extracted from /data/another" in error and "llm4msr knowledge extract" in error
    # the benchmark refuses it too, before any worker process starts
    code = main(["benchmark", "--data", str(tiny_data), "--knowledge-dir", str(other), "--backbones", "dnn",
                 "--knowledge", "none,both", "--seeds", "1", "--jobs", "2", "--out", str(tmp_path / "grid")])
    assert code == 2 and "extracted from /data/another" in capsys.readouterr().err
    assert not (tmp_path / "grid" / "results.csv").exists()
    # the same folder recording this data set's contents is accepted
    (other / "knowledge.json").write_text(json.dumps({**metadata, "inputs": {"dataset": dataset_fingerprint(tiny_data)}}))
    code, _ = run_train(tiny_data, tmp_path, "--knowledge", "both", "--knowledge-dir", str(other), "--epochs", "1")
    assert code == 0


def test_batches_hold_every_row_once_per_epoch_with_its_own_label_and_knowledge(tiny_data, tiny_knowledge):
    from llm4msr.pipeline.data.canonical import read_dataset
    from llm4msr.pipeline.knowledge.artifact import read_knowledge

    dataset, knowledge = read_dataset(tiny_data), read_knowledge(tiny_knowledge)
    encoder = ExampleEncoder(dataset, knowledge)
    train = encoder.encode(dataset, "train")
    # a row's identity: its user and item indices, year and label; the user fixes its knowledge vector,
    # as the Transform normalised it
    features = train.features
    expected = sorted(zip(features["user_id"], features["item_id"], features["item_year"], train.labels))
    _, _, user_row, user_vectors = encoder.tables["user_knowledge"]
    vector_of = {index: user_vectors[user_row[user]] for index, user in zip(features["user_id"], train.users)}
    scenario_vectors = encoder.tables["scenario_knowledge"][3]
    data = encoder.tf_dataset(train, batch_size=64, shuffle_seed=3)
    orders = []
    for _ in range(2):  # two epochs
        rows = []
        for batch, labels in data:
            users = batch["user_id"].numpy()
            np.testing.assert_array_equal(batch["user_knowledge"].numpy(), np.stack([vector_of[u] for u in users]))
            scenarios = batch["scenario"].numpy()
            np.testing.assert_array_equal(batch["scenario_knowledge"].numpy(), scenario_vectors[scenarios])
            rows += zip(users, batch["item_id"].numpy(), batch["item_year"].numpy(), labels.numpy())
        assert sorted(rows) == expected
        orders.append(rows)
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert orders[0] != list(zip(features["user_id"], features["item_id"], features["item_year"], train.labels))


def test_transform_vocabularies_order_by_train_frequency_and_put_unknowns_last(tiny_data):
    import pandas as pd

    from llm4msr.pipeline.data.canonical import read_dataset

    dataset = read_dataset(tiny_data)
    encoder = ExampleEncoder(dataset)
    train = dataset.split("train")
    by_frequency = train["item_id"].value_counts()
    top, unseen = by_frequency.index[0], "no-such-item"
    rows = pd.DataFrame({"user_id": [train["user_id"].iloc[0]] * 2, "item_id": [top, unseen], "scenario": ["S0", "S0"]})
    encoded = encoder.transform(rows)
    size = encoder.input_spec().categorical["item_id"]
    assert encoded["item_id"].tolist() == [0, size - 1]  # most frequent first, out of vocabulary last
    assert encoded["slice_item_popularity"].tolist()[1] == 0  # an unseen item is in the "0" bucket
    assert encoded["item_category"][1] == encoder.input_spec().categorical["item_category"] - 1


def test_config_file_sets_what_flags_leave_open(tiny_data, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"backbone": "dnn", "learning_rate": 0.01, "training": {"patience": 1}}))
    out = tmp_path / "r.json"
    code = main(["train", "--data", str(tiny_data), "--config", str(config), "--epochs", "1", "--batch-size", "512",
                 "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["backbone"] == "dnn" and result["config"]["learning_rate"] == 0.01
    assert result["training"] == {"epochs": 1, "patience": 1, "batch_size": 512, "seed": 0, "max_steps": None,
                                  "calibrate": True, "distribute": "auto", "example_cache_mb": 1024}


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


def test_report_has_calibration_and_bucketed_slices_in_bucket_order():
    report = metrics.report([1, 0, 1, 0], [0.9, 0.5, 0.2, 0.8], ["u", "u", "v", "v"], ["S0"] * 4,
                            slices={"slice_user_history": np.array(["21+", "21+", "1-5", "1-5"], dtype=object)})
    assert report["overall"]["calibration"] == pytest.approx(0.6 / 0.5)
    assert list(report["slices"]["slice_user_history"]) == ["1-5", "21+"]
    assert report["slices"]["slice_user_history"]["21+"]["calibration"] == pytest.approx(0.7 / 0.5)


def test_normalized_logloss_is_one_for_the_constant_predictor_and_above_for_an_overconfident_one():
    from llm4msr.pipeline.metrics import Logloss, NormalizedLogloss, constant_logloss
    from tensorflow_model_analysis.metrics import metric_types

    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1])

    def value(predictions, normalized=True):
        sums, derived = (NormalizedLogloss() if normalized else Logloss()).computations()
        combiner = sums.combiner
        accumulator = combiner.create_accumulator()
        for label, prediction in zip(labels, predictions):
            accumulator = combiner.add_input(accumulator, metric_types.StandardMetricInputs(
                labels=np.array([label]), predictions=np.array([prediction]), example_weights=np.array([1.0])))
        halves = [accumulator, combiner.create_accumulator()]
        return list(derived.result(combiner.extract_output(combiner.merge_accumulators(halves))).values())[0]

    assert value(np.full(8, labels.mean())) == pytest.approx(1.0)
    assert value(np.full(8, 0.62)) > 1.0  # over-predicting, as the model of issue 12 (calibration 1.32)
    assert value(np.where(labels == 1, 0.8, 0.2)) < 1.0
    assert constant_logloss(0.5) == pytest.approx(np.log(2))
    predictions = np.where(labels == 1, 0.8, 0.3)
    assert value(predictions, normalized=False) == pytest.approx(log_loss(labels, predictions), rel=1e-6)  # the Evaluator's logloss
    # one pass over the examples for both: TFMA runs equal computations once
    assert Logloss().computations()[0] == NormalizedLogloss().computations()[0]


def test_max_steps_caps_training_across_epochs(tiny_data):
    from llm4msr.pipeline.data.canonical import read_dataset
    from llm4msr.trainer.fast import fit_encoded
    from llm4msr.trainer.model import ModelConfig
    from llm4msr.trainer.training import TrainConfig

    dataset = read_dataset(tiny_data)
    encoder = ExampleEncoder(dataset)
    splits = {name: encoder.encode(dataset, name) for name in ("train", "eval")}
    ranking, summary = fit_encoded(encoder, splits, ModelConfig(), TrainConfig(epochs=5, batch_size=256, max_steps=12))
    assert int(ranking.optimizer.iterations.numpy()) == 12  # 10 steps per epoch here: stopped inside epoch 2
    assert summary["epochs"] == 2


def test_train_config_refuses_bad_values():
    from llm4msr.trainer.training import TrainConfig
    from llm4msr.trainer.validation import ConfigError

    with pytest.raises(ConfigError, match="TrainConfig.epochs: expected an integer >= 1, got -1"):
        TrainConfig(epochs=-1)
    with pytest.raises(ConfigError, match="TrainConfig.example_cache_mb: expected an integer >= 0, got -5"):
        TrainConfig(example_cache_mb=-5)
    with pytest.raises(ConfigError, match="TrainConfig.lr: unknown field"):
        TrainConfig.from_dict({"lr": 1})


def test_platt_fit_recovers_a_known_scale_and_shift():
    from llm4msr.trainer.training import platt

    rng = np.random.default_rng(0)
    logits = rng.normal(size=20_000) * 2
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-(0.5 * logits - 0.7)))).astype(float)
    a, b = platt(logits, labels)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-0.7, abs=0.05)


def test_calibration_after_training_matches_the_eval_click_rate_per_scenario(tiny_data):
    from llm4msr.pipeline.data.canonical import read_dataset
    from llm4msr.trainer import training
    from llm4msr.trainer.fast import fit_encoded
    from llm4msr.trainer.model import ModelConfig
    from llm4msr.trainer.training import TrainConfig

    dataset = read_dataset(tiny_data)
    encoder = ExampleEncoder(dataset)
    splits = {name: encoder.encode(dataset, name) for name in ("train", "eval")}
    old = training.MIN_CALIBRATION_ROWS
    training.MIN_CALIBRATION_ROWS = 50  # the tiny fixture's eval split is small
    try:
        ranking, summary = fit_encoded(encoder, splits, ModelConfig(), TrainConfig(epochs=2, batch_size=256))
    finally:
        training.MIN_CALIBRATION_ROWS = old
    evaluation = splits["eval"]
    scores = ranking.predict(encoder.tf_dataset(evaluation, 256), verbose=0).reshape(-1)
    rows = evaluation.features["scenario"] == 0
    # Platt scaling's first-order condition: on the data it was fitted on, mean prediction = mean label
    assert scores[rows].mean() == pytest.approx(evaluation.labels[rows].mean(), abs=1e-3)
    assert summary["calibration"]["scale"][0] != 1.0
