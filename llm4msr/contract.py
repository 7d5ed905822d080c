"""The names every part of llm4msr shares: examples, transformed features, model inputs and outputs,
and the serving signatures. Pipeline, transform, trainer and serving import them from here, so a
rename happens in one place.

Kept free of heavy imports (TensorFlow is imported inside the two signature helpers only), so the
client and the server's request checks can use it without loading TFX.

Raw example (tf.Example in the pipeline, a row of a `predict_raw` request):

* `user_id`, `item_id`, `scenario`: bytes, one value each;
* `label`: int64 0/1 (examples only);
* `user_knowledge`, `scenario_knowledge`, `item_knowledge`: float32 `[dim]` LLM knowledge vectors
  (joined by the KnowledgeJoiner; filled from the knowledge store by a client).

The model answers `probability`: float32 `[B, 1]`, the click/like probability of each row.
"""
USER_ID, ITEM_ID, SCENARIO = "user_id", "item_id", "scenario"
ID_FEATURES = (USER_ID, ITEM_ID)  # ids with a vocabulary and an embedding
RAW_FEATURES = (USER_ID, ITEM_ID, SCENARIO)  # the string inputs every example and request carries
LABEL = "label"
USER_KNOWLEDGE, SCENARIO_KNOWLEDGE, ITEM_KNOWLEDGE = "user_knowledge", "scenario_knowledge", "item_knowledge"
KNOWLEDGE_FEATURES = (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE, ITEM_KNOWLEDGE)
# the width the Transform reduces every knowledge level to (0: normalised, not reduced); chosen on
# eval (docs/RESULTS.md): equal AUC to the LLM's full width within noise, a smaller store and requests
KNOWLEDGE_REDUCTION = 32

PREDICTION_KEY = "probability"
MODEL_NAME = "llm4msr"
DEFAULT_SIGNATURE = "serving_default"  # serialized tf.Example -> probability
RAW_SIGNATURE = "predict_raw"  # named raw tensors + knowledge vectors -> probability
TRANSFORM_SIGNATURE = "transform_features"  # serialized tf.Example -> transformed features (TFMA's preprocessing)
# predict_raw: one row per candidate; every other input may have 1 row for the whole request
# (item_knowledge, when the model takes it, has a row per candidate too: the client fills it from the store)
PER_CANDIDATE_INPUT = ITEM_ID


def broadcast_to_candidates(features: dict) -> dict:
    """Repeats `predict_raw` inputs that have one row for the whole request for every candidate.

    Done inside the signature, so a request of 1 user x 100 candidates carries each 384-float
    vector once (~3 KB, not ~300 KB).

    Args:
      features: name -> tensor `[1 or B, ...]`; `features[PER_CANDIDATE_INPUT]` has the B rows.

    Returns:
      name -> tensor `[B, ...]`. Any row count other than 1 or B fails (the servers check it first,
      with a clear message).
    """
    import tensorflow as tf

    rows = tf.shape(features[PER_CANDIDATE_INPUT])[:1]
    return {name: tf.broadcast_to(value, tf.concat([rows, tf.shape(value)[1:]], 0))
            for name, value in features.items()}


def refuse_non_finite(features: dict) -> dict:
    """`features` with every knowledge input checked for NaN and infinity inside the signature.

    A request carrying one fails with INVALID_ARGUMENT naming the input (`CheckNumerics`) in any TF
    Serving, for tf.Examples as for raw tensors, instead of being scored.
    """
    import tensorflow as tf

    return {name: tf.debugging.assert_all_finite(value, f"input {name!r} holds a non-finite value (NaN or infinity)")
            if name in KNOWLEDGE_FEATURES else value for name, value in features.items()}
