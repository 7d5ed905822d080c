"""The Keras model library: shapes, per-scenario isolation, meta-layer maths and gradients,
save/load round trips, reuse in a user's own model, and config errors naming the field."""
import numpy as np
import pytest

import llm4msr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from llm4msr.trainer import backbones, layers
from llm4msr.trainer.features import ConfigError, InputSpec
from llm4msr.trainer.model import KNOWLEDGE_MODES, build_model

SCENARIOS, BATCH, DIM = 3, 12, 10
SPEC = InputSpec(categorical={"user_id": 20, "item_id": 30, "scenario": SCENARIOS}, dense=["year"],
                 user_knowledge_dim=DIM, scenario_knowledge_dim=DIM, item_knowledge_dim=DIM)
TINY = dict(embedding_dim=4, hidden_units=[8, 6], tower_units=[4], expert_units=[6], num_experts=2,
            projection_dim=4, meta_rank=2, meta_layers=1, meta_generator_units=8, meta_tower_units=[4])
MULTI_SCENARIO = ["shared_bottom", "mmoe", "ple", "star"]


def features(seed=0, batch=BATCH):
    rng = np.random.default_rng(seed)
    return {"user_id": rng.integers(0, 20, batch), "item_id": rng.integers(0, 30, batch),
            "scenario": np.arange(batch) % SCENARIOS, "year": rng.normal(size=batch).astype(np.float32),
            "user_knowledge": rng.normal(size=(batch, DIM)).astype(np.float32),
            "scenario_knowledge": rng.normal(size=(batch, DIM)).astype(np.float32),
            "item_knowledge": rng.normal(size=(batch, DIM)).astype(np.float32)}


def model_for(backbone, knowledge="none", **overrides):
    tf.keras.utils.set_random_seed(1)
    return build_model({**TINY, "backbone": backbone, "knowledge": knowledge, **overrides}, SPEC)


def predict(model, batch):
    return model({name: batch[name] for name in model.input_names}, training=False).numpy()


@pytest.mark.parametrize("knowledge", [*KNOWLEDGE_MODES, ["user", "item"], "scenario+item"])
@pytest.mark.parametrize("backbone", sorted(backbones.BACKBONES))
def test_every_backbone_and_knowledge_mode_predicts_probabilities(backbone, knowledge):
    model = model_for(backbone, knowledge)
    batch = features()
    out = predict(model, batch)
    assert out.shape == (BATCH, 1) and out.dtype == np.float32
    assert np.all((out > 0) & (out < 1))
    # [B, 1] scalars, as parsed tf.Examples give them, produce the same predictions
    column = {k: (v[:, None] if v.ndim == 1 else v) for k, v in batch.items()}
    np.testing.assert_allclose(predict(model, column), out, rtol=1e-5)
    levels = knowledge.split("+") if "+" in knowledge else KNOWLEDGE_MODES[knowledge] if isinstance(knowledge, str) \
        else knowledge
    expected_inputs = {"user_id", "item_id", "scenario", "year"} | {f"{level}_knowledge" for level in levels}
    assert set(model.input_names) == expected_inputs
    layer_names = {layer.name for layer in model.layers}
    assert ("item_content" in layer_names) == ("item" in levels)
    assert ("semantic_match" in layer_names) == ("item" in levels and "user" in levels)


def test_dcn_cross_option_adds_a_tfrs_cross_layer():
    model = model_for("dnn", "both", cross_layers=2)
    crosses = [layer for layer in model.layers if layer.name.startswith("cross_")]
    assert [layer.name for layer in crosses] == ["cross_0", "cross_1"]
    assert all(isinstance(layer, tfrs.layers.dcn.Cross) for layer in crosses)
    assert predict(model, features()).shape == (BATCH, 1)


def _perturb_scenario(model, scenario):
    """Adds noise to the `scenario` slice of every per-scenario variable; returns how many."""
    rng, changed = np.random.default_rng(5), 0
    for variable in model.variables:
        if "per_scenario" in variable.name:
            block = variable.shape[0] // SCENARIOS
            value = variable.numpy()
            value[scenario * block:(scenario + 1) * block] += np.abs(rng.normal(size=value[:block].shape)) + 0.5
            variable.assign(value)
            changed += 1
    return changed


@pytest.mark.parametrize("backbone,knowledge", [(b, "none") for b in MULTI_SCENARIO] + [("star", "both")])
def test_examples_use_only_their_own_scenario_parameters(backbone, knowledge):
    model = model_for(backbone, knowledge, ple_levels=2)
    batch = features(batch=30)
    before = predict(model, batch)
    assert _perturb_scenario(model, scenario=1) >= 2
    after = predict(model, batch)
    own = batch["scenario"] == 1
    np.testing.assert_array_equal(after[~own], before[~own])
    assert np.abs(after[own] - before[own]).min() > 1e-6


def test_star_training_statistics_are_per_scenario():
    norm = backbones.PartitionedNormalization(2)
    x = tf.constant([[1.0], [3.0], [100.0], [300.0]])
    out = norm([x, tf.constant([0, 0, 1, 1])], training=True).numpy()
    np.testing.assert_allclose(out[:, 0], [-1, 1, -1, 1], atol=1e-2)  # each scenario normalised alone
    np.testing.assert_allclose(norm.moving_mean.numpy()[:, 0], [0.02, 2.0], rtol=1e-5)


def test_fused_meta_layers_equal_their_reference_maths():
    """The knowledge projector's fused form equals Dense(LayerNorm(k)) (plain: Dense(k)); the meta
    dense layer's GEMM-only form equals `act(x U V^T + b) + x` with the full per-example weight
    `W = U V^T`."""
    rng = np.random.default_rng(3)
    k = tf.constant(rng.normal(size=(7, 24)).astype(np.float32) * 2 + 0.5)
    for normalize in (True, False):
        projector = layers.KnowledgeProjector(5, activation="relu", normalize=normalize)
        projector(k)
        for variable in projector.weights:
            variable.assign(rng.normal(size=variable.shape).astype(np.float32))

        def unfused(knowledge):
            return projector.dense(projector.norm(knowledge) if normalize else knowledge)
        np.testing.assert_allclose(projector(k).numpy(), unfused(k).numpy(), rtol=1e-4, atol=1e-4)
        # ...and so are its gradients (its kernel's is a custom gradient)
        gradients = []
        for forward in (projector, unfused):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(forward(k)))
            gradients.append(tape.gradient(loss, projector.trainable_variables))
        assert len(gradients[0]) == (4 if normalize else 2)
        for fused, plain in zip(*gradients):
            np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-3, atol=1e-3)
    x, z = (tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in [(6, 5), (6, 3)])
    layer = layers.MetaDense(rank=3, generator_units=4)
    layer([x, z])
    for variable in layer.weights:
        variable.assign(0.3 * rng.normal(size=variable.shape).astype(np.float32))
    u, v, b = (value.numpy() for value in layer.generator(z))
    full = np.einsum("bdr,ber->bde", u, v)  # [B, d, d]
    expected = np.maximum(np.einsum("bd,bde->be", x.numpy(), full) + b, 0) + x.numpy()
    np.testing.assert_allclose(layer([x, z]).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_scenario_tower_projected_once_per_scenario_equals_each_row_alone():
    """A batch projects one row per scenario and gathers back; each example scored alone (its own
    projection) must get the same logit."""
    rng = np.random.default_rng(4)
    scenario = np.array([2, 0, 2, 1, 0, 2])
    table = rng.normal(size=(SCENARIOS, DIM)).astype(np.float32)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    user = rng.normal(size=(6, 4)).astype(np.float32)
    tower = layers.ScenarioMetaTower(SCENARIOS, num_layers=1, projection_dim=4, rank=2, generator_units=8,
                                     hidden_units=[4], hierarchical=True)
    batched = tower([x, table[scenario], user, scenario]).numpy()
    alone = [tower([x[i:i + 1], table[scenario[i:i + 1]], user[i:i + 1], scenario[i:i + 1]]).numpy()
             for i in range(len(scenario))]
    np.testing.assert_allclose(batched, np.concatenate(alone), rtol=1e-5, atol=1e-6)
    assert layers.ScenarioMetaTower.from_config(tower.get_config()).num_scenarios == SCENARIOS


def test_meta_weights_depend_on_knowledge_and_start_near_identity():
    tf.keras.utils.set_random_seed(0)  # independent of the tests run before it
    layer = layers.MetaDense(rank=2, generator_units=8)
    x = tf.random.normal([6, 5], seed=1)
    z = tf.random.normal([6, 3], seed=2)
    y = layer([x, z])
    assert 0 < float(tf.reduce_max(tf.abs(y - x))) < 1.0  # residual dominates at initialisation
    # the heads' biases (the last entry of every block of g + 1) start at zero, their weights do not
    generator = layer.generator
    blocks = generator.hidden_units + 1
    u_biases, u_weights = generator.u_kernel.numpy()[:, blocks - 1::blocks], generator.u_kernel.numpy()[:, :blocks - 1]
    vb_biases = generator.vb_kernel.numpy()[blocks - 1::blocks]
    assert u_biases.shape == (5, 2) and vb_biases.shape == (3, 5)
    assert not u_biases.any() and not vb_biases.any() and np.abs(u_weights).min() > 0
    assert not np.allclose(layer([x, z]).numpy(), layer([x, z + 1.0]).numpy())


def test_gradients_reach_the_generators_of_both_levels():
    model = model_for("mmoe", "both")
    batch = features()
    with tf.GradientTape() as tape:
        probability = model({name: batch[name] for name in model.input_names}, training=True)
        loss = tf.keras.losses.binary_crossentropy(np.arange(BATCH)[:, None] % 2, probability)
    variables = [v for v in model.trainable_variables if "generator" in v.name or "projector" in v.name]
    gradients = tape.gradient(loss, variables)
    names = {v.name.split("/")[0] for v in variables}
    assert {"user_meta", "scenario_meta"} <= names
    for variable, gradient in zip(variables, gradients):
        assert gradient is not None and float(tf.norm(gradient)) > 0, variable.name


@pytest.mark.parametrize("backbone", sorted(backbones.BACKBONES))
def test_keras_format_round_trip_gives_identical_predictions(backbone, tmp_path):
    model = model_for(backbone, "both", cross_layers=1 if backbone == "dnn" else 0,
                      id_dropout=0.2 if backbone == "dnn" else 0.0)
    batch = features()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_array_equal(predict(loaded, batch), predict(model, batch))


@pytest.mark.parametrize("backbone,knowledge,save_traces", [("dnn", "none", True), ("star", "all", False)])
def test_saved_model_round_trip_gives_identical_predictions(backbone, knowledge, save_traces, tmp_path):
    # traced call functions make SavedModel saving slow (~30 s for star/both on 2 cores); without
    # them Keras rebuilds the layers from their registered configs
    model = model_for(backbone, knowledge, cross_layers=1, id_dropout=0.2)
    batch = features()
    model.save(str(tmp_path / "saved"), save_format="tf", save_traces=save_traces)
    loaded = tf.keras.models.load_model(str(tmp_path / "saved"))
    np.testing.assert_allclose(predict(loaded, batch), predict(model, batch), rtol=1e-6, atol=1e-7)
    assert isinstance(loaded.get_layer(backbone), backbones.BACKBONES[backbone])  # revived as our class


def test_layers_and_backbones_compose_into_a_users_own_functional_model(tmp_path):
    inputs = {"user_id": tf.keras.Input((), dtype=tf.int64, name="user_id"),
              "scenario": tf.keras.Input((), dtype=tf.int64, name="scenario"),
              "user_knowledge": tf.keras.Input((DIM,), name="user_knowledge")}
    x = layers.FeatureEmbedding({"user_id": 20, "scenario": SCENARIOS}, 4)(
        {k: inputs[k] for k in ("user_id", "scenario")})
    x = layers.UserMetaStack(num_layers=1, projection_dim=4, rank=2)([x, inputs["user_knowledge"]])
    logit = backbones.BACKBONES["star"](num_scenarios=SCENARIOS, hidden_units=[8])([x, inputs["scenario"]])
    model = tf.keras.Model(inputs, tf.keras.layers.Activation("sigmoid")(logit))
    batch = {k: v for k, v in features().items() if k in inputs}
    model.save(str(tmp_path / "own.keras"))
    loaded = tf.keras.models.load_model(str(tmp_path / "own.keras"))
    np.testing.assert_array_equal(loaded(batch).numpy(), model(batch).numpy())


@pytest.mark.parametrize("config,field", [
    ({"backbone": "foo"}, "ModelConfig.backbone: unknown backbone 'foo'"),
    ({"knowledge": "every"}, "ModelConfig.knowledge"),
    ({"hidden_units": [8, 0]}, "ModelConfig.hidden_units[1]"),
    ({"tower_units": []}, "ModelConfig.tower_units"),
    ({"embedding_dim": 0}, "ModelConfig.embedding_dim"),
    ({"meta_rank": 2.5}, "ModelConfig.meta_rank"),
    ({"dropout": 1.0}, "ModelConfig.dropout"),
    ({"knowledge_dropout": -0.1}, "ModelConfig.knowledge_dropout"),
    ({"id_dropout": 1.0}, "ModelConfig.id_dropout"),
    ({"id_dropout": 0.1, "id_dropout_features": ["user"]}, "ModelConfig.id_dropout_features: ['user']"),
    ({"id_dropout_features": "user_id"}, "ModelConfig.id_dropout_features"),
    ({"hiden_units": [8]}, "ModelConfig.hiden_units: unknown field"),
])
def test_malformed_model_configs_name_the_field(config, field):
    with pytest.raises(ConfigError) as error:
        build_model(config, SPEC)
    assert field in str(error.value)


@pytest.mark.parametrize("spec,field", [
    ({"categorical": {"user_id": 5}}, "InputSpec.scenario_feature"),
    ({"categorical": {"scenario": 0}}, "InputSpec.categorical['scenario']"),
    ({"categorical": {"scenario": 2}, "dense": ["scenario"]}, "InputSpec.dense"),
    ({"categorical": {"scenario": 2}, "user_knowledge_dim": -1}, "InputSpec.user_knowledge_dim"),
])
def test_malformed_input_specs_name_the_field(spec, field):
    with pytest.raises(ConfigError) as error:
        build_model({}, spec)
    assert field in str(error.value)


def test_id_dropout_sends_a_share_of_training_ids_to_the_oov_slot_and_none_at_inference():
    dropout = layers.IdDropout(oov_index=99, rate=0.3)
    ids = tf.range(20000, dtype=tf.int64) % 50
    tf.keras.utils.set_random_seed(0)
    trained = dropout(ids, training=True).numpy()
    dropped = trained == 99
    assert 0.28 < dropped.mean() < 0.32
    np.testing.assert_array_equal(trained[~dropped], ids.numpy()[~dropped])
    np.testing.assert_array_equal(dropout(ids, training=False).numpy(), ids.numpy())
    np.testing.assert_array_equal(dropout(ids).numpy(), ids.numpy())
    # in a model: the user_id layer drops to the last index only while training
    model = model_for("dnn", "user", id_dropout=0.5)
    batch = features()
    np.testing.assert_array_equal(predict(model, batch), predict(model, batch))
    oov = {**batch, "user_id": np.full(BATCH, SPEC.categorical["user_id"] - 1)}
    assert not np.allclose(predict(model, batch), predict(model, oov))


def test_knowledge_mode_without_knowledge_inputs_names_the_width():
    spec = InputSpec(categorical={"scenario": 2}, user_knowledge_dim=0, scenario_knowledge_dim=4)
    with pytest.raises(ConfigError, match=r"InputSpec\.user_knowledge_dim: knowledge='both'"):
        build_model({"knowledge": "both"}, spec)
    build_model({"knowledge": "scenario"}, spec)  # the scenario level alone is fine
    with pytest.raises(ConfigError, match=r"InputSpec\.item_knowledge_dim: knowledge='all'.*extract the item level"):
        build_model({"knowledge": "all"}, InputSpec(categorical={"scenario": 2}, user_knowledge_dim=4,
                                                    scenario_knowledge_dim=4))


@pytest.mark.parametrize("knowledge", ["everything", ["user", "items"], []])
def test_unknown_knowledge_modes_and_levels_name_the_field(knowledge):
    with pytest.raises(ConfigError, match=r"ModelConfig\.knowledge: unknown knowledge"):
        build_model({"knowledge": knowledge}, SPEC)


def test_knowledge_of_the_wrong_width_is_rejected_when_fed():
    model = model_for("dnn", "user")
    batch = features()
    batch["user_knowledge"] = batch["user_knowledge"][:, :DIM - 2]
    with pytest.raises(ValueError, match="user_knowledge|expected shape"):
        predict(model, batch)


def test_lazy_adam_is_keras_adam_on_dense_gradients_and_row_sparse_on_embeddings():
    """Dense variables get Keras' Adam step; a table gets Adam on the rows the batch touched (their
    duplicate gradients summed) and nothing else moves, in the table or in its moment slots."""
    from llm4msr.trainer.optimizer import LazyAdam

    rng = np.random.default_rng(0)
    table, kernel = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    lr, beta_1, beta_2, eps = 1e-2, 0.9, 0.999, 1e-7
    variables = [tf.Variable(table), tf.Variable(kernel)]
    lazy, keras_adam = LazyAdam(lr), tf.keras.optimizers.Adam(lr)
    lazy.build(variables)
    slots_before = len(lazy.variables())
    reference_kernel = tf.Variable(kernel)
    expected, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    for step, scale in enumerate([1.0, 30.0, 0.1, 5.0, 0.01, 2.0], start=1):  # moments that matter
        rows = np.array([1, 3, 3, 7 + step])  # repeated and changing rows
        with tf.GradientTape(persistent=True) as tape:
            loss = scale * tf.reduce_sum(tf.matmul(tf.gather(variables[0], rows), variables[1]) ** 2)
            reference_loss = scale * tf.reduce_sum(tf.matmul(tf.gather(variables[0], rows), reference_kernel) ** 2)
        gradients = tape.gradient(loss, variables)
        assert isinstance(gradients[0], tf.IndexedSlices)
        touched = np.unique(rows)
        summed = tf.math.unsorted_segment_sum(gradients[0].values, gradients[0].indices, 50).numpy()[touched]
        m[touched] = beta_1 * m[touched] + (1 - beta_1) * summed
        v[touched] = beta_2 * v[touched] + (1 - beta_2) * summed ** 2
        step_size = lr * np.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
        expected[touched] -= step_size * m[touched] / (np.sqrt(v[touched]) + eps)
        keras_adam.apply_gradients([(tape.gradient(reference_loss, reference_kernel), reference_kernel)])
        lazy.apply_gradients(zip(gradients, variables))
    np.testing.assert_allclose(variables[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), reference_kernel.numpy(), rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(50), [1, 3, *range(8, 14)])
    np.testing.assert_array_equal(variables[0].numpy()[untouched], table[untouched])
    assert not lazy.get_slot(variables[0], "m").numpy()[untouched].any()
    assert len(lazy.variables()) == slots_before  # build created every slot up front


def test_an_expert_subset_and_the_gate_mixing_equal_the_whole_bank_and_the_weighted_sum():
    bank = layers.ExpertBank(num_experts=6, units=[5, 3])  # two layers: the GEMM and the einsum path
    x = tf.constant(np.random.default_rng(1).normal(size=(7, 4)), tf.float32)
    everything = bank(x).numpy()
    np.testing.assert_allclose(bank.experts(x, 2, 2).numpy(), everything[:, 2:4], rtol=1e-6, atol=1e-6)
    gates = np.random.default_rng(2).normal(size=(7, 6)).astype(np.float32)
    weights = np.exp(gates) / np.exp(gates).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(layers.mix_experts(tf.constant(gates), bank(x)).numpy(),
                               np.einsum("be,beh->bh", weights, everything), rtol=1e-5, atol=1e-6)
