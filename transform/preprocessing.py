"""The Transform `preprocessing_fn`: vocabularies (with an OOV bucket) for ids, a fixed scenario
index, knowledge vectors passed through. Vocabularies are computed on the train split only
(Transform analyses `train` and applies to every split), so eval/test never leak into them."""
import tensorflow as tf
import tensorflow_transform as tft

ID_FEATURES = ("user_id", "item_id")
SCENARIO, LABEL = "scenario", "label"
KNOWLEDGE_FEATURES = ("user_knowledge", "scenario_knowledge")
OOV_BUCKETS = 1


def preprocessing_fn(inputs, custom_config):
    """`custom_config["scenarios"]` lists the scenario ids in index order (scenarios.json), so the
    index of a scenario, and with it its per-scenario parameters, never depends on the data."""
    outputs = {}
    for name in ID_FEATURES:
        outputs[name] = tft.compute_and_apply_vocabulary(
            _squeeze(inputs[name]), num_oov_buckets=OOV_BUCKETS, vocab_filename=name)
    outputs[SCENARIO] = scenario_index(_squeeze(inputs[SCENARIO]), custom_config["scenarios"])
    for name in KNOWLEDGE_FEATURES:
        if name in inputs:
            outputs[name] = tf.cast(inputs[name], tf.float32)
    if LABEL in inputs:
        outputs[LABEL] = _squeeze(inputs[LABEL])
    return outputs


def scenario_index(scenario: tf.Tensor, scenario_ids) -> tf.Tensor:
    """Maps scenario ids to 0..S-1; an unknown id fails loudly instead of borrowing another's weights."""
    # a comparison against a handful of ids; a lookup table would be re-initialised on every call
    matches = tf.equal(tf.expand_dims(scenario, -1), tf.constant(list(scenario_ids)))
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.reduce_any(matches, axis=-1), True, message=f"unknown scenario id; known: {', '.join(scenario_ids)}")]):
        return tf.argmax(tf.cast(matches, tf.int64), axis=-1)


def _squeeze(tensor: tf.Tensor) -> tf.Tensor:
    """Scalar features arrive as [B, 1] (fixed-shape schema); the model takes [B]."""
    return tf.reshape(tensor, [-1]) if tensor.shape.rank == 2 else tensor
