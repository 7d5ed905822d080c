"""The meta layers learn from knowledge: the click signal is planted only in the user knowledge
vector of users never seen in training, so ids cannot carry it and only `knowledge=user` can win."""
import numpy as np

import llm4msr  # noqa: F401
import tensorflow as tf

from llm4msr.trainer import metrics
from llm4msr.trainer.features import InputSpec
from llm4msr.trainer.model import compile_ranking_model

DIM, SCENARIOS, PER_USER = 16, 2, 24


def synthetic(rng, users, direction):
    """Users with random knowledge vectors; P(click) = sigmoid(3 * k_u . direction)."""
    knowledge = rng.normal(size=(len(users), DIM)).astype(np.float32)
    user = np.repeat(users, PER_USER)
    row = np.repeat(np.arange(len(users)), PER_USER)
    probability = 1 / (1 + np.exp(-3 * knowledge[row] @ direction))
    features = {"user_id": user.astype(np.int64), "item_id": rng.integers(1, 50, user.size),
                "scenario": rng.integers(0, SCENARIOS, user.size), "user_knowledge": knowledge[row]}
    return features, (rng.random(user.size) < probability).astype(np.float32)


def trained_auc(model_config: dict, spec, train, test_features, test_labels, epochs: int) -> float:
    """Trains `model_config` from seed 3 on `train` (shuffled, batches of 256) and returns its test AUC."""
    tf.keras.utils.set_random_seed(3)
    ranking = compile_ranking_model(model_config, spec)
    ranking.fit(tf.data.Dataset.from_tensor_slices(train).shuffle(8000, seed=3).batch(256), epochs=epochs, verbose=0)
    return metrics.auc(test_labels, ranking.predict(test_features, batch_size=1024, verbose=0))


def test_user_knowledge_beats_no_knowledge_when_the_signal_is_only_in_knowledge():
    rng = np.random.default_rng(7)
    direction = rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)
    train = synthetic(rng, np.arange(1, 301), direction)
    # test users are out of vocabulary (index 0): their id embedding says nothing
    test_features, test_labels = synthetic(rng, np.zeros(80, np.int64), direction)
    spec = InputSpec({"user_id": 301, "item_id": 50, "scenario": SCENARIOS}, user_knowledge_dim=DIM)
    model = {"backbone": "shared_bottom", "embedding_dim": 8, "hidden_units": [32], "tower_units": [8],
             "meta_layers": 1, "projection_dim": 8, "learning_rate": 3e-3}
    aucs = {knowledge: trained_auc({**model, "knowledge": knowledge}, spec, train, test_features, test_labels, epochs=6)
            for knowledge in ("none", "user")}
    assert aucs["none"] < 0.6, aucs
    assert aucs["user"] > aucs["none"] + 0.15, aucs


def test_item_knowledge_beats_ids_when_the_signal_is_only_in_item_text():
    """Every item is new at test time (out of vocabulary); whether a user clicks depends only on a
    direction in the item's knowledge vector, so the id-only model cannot beat chance."""
    rng = np.random.default_rng(11)
    direction = rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)

    def rows(items, n):
        vectors = rng.normal(size=(len(items), DIM)).astype(np.float32)
        pick = rng.integers(0, len(items), n)
        probability = 1 / (1 + np.exp(-3 * vectors[pick] @ direction))
        features = {"user_id": rng.integers(0, 40, n), "item_id": items[pick].astype(np.int64),
                    "scenario": rng.integers(0, SCENARIOS, n), "item_knowledge": vectors[pick]}
        return features, (rng.random(n) < probability).astype(np.float32)

    train = rows(np.arange(1, 401), 8000)
    test_features, test_labels = rows(np.zeros(300, np.int64), 2000)  # unseen items: the OOV index 0
    spec = InputSpec({"user_id": 40, "item_id": 401, "scenario": SCENARIOS}, item_knowledge_dim=DIM)
    model = {"backbone": "mmoe", "embedding_dim": 8, "expert_units": [16], "tower_units": [8], "learning_rate": 3e-3}
    aucs = {knowledge: trained_auc({**model, "knowledge": knowledge}, spec, train, test_features, test_labels, epochs=5)
            for knowledge in ("none", "item")}
    assert aucs["none"] < 0.6, aucs
    assert aucs["item"] > aucs["none"] + 0.15, aucs


def test_id_dropout_teaches_the_knowledge_path_to_stand_in_for_a_new_users_id():
    """Users have enough rows for their ids to learn their taste, so without id dropout the model
    leans on the id and has never seen the unknown-id slot; new users (the out-of-vocabulary last
    index) are then scored better when training dropped ids."""
    rng = np.random.default_rng(5)
    direction = rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)
    train = synthetic(rng, np.arange(0, 300), direction)
    oov = 300
    test_features, test_labels = synthetic(rng, np.full(200, oov, np.int64), direction)
    spec = InputSpec({"user_id": oov + 1, "item_id": 50, "scenario": SCENARIOS}, user_knowledge_dim=DIM)
    model = {"backbone": "dnn", "knowledge": "user", "embedding_dim": 8, "hidden_units": [32], "projection_dim": 8,
             "learning_rate": 3e-3}
    aucs = {rate: trained_auc({**model, "id_dropout": rate}, spec, train, test_features, test_labels, epochs=6)
            for rate in (0.0, 0.3)}
    assert aucs[0.3] > aucs[0.0] + 0.025, aucs
