"""What a pushed version carries for serving, next to its SavedModel (called at push time):

    <version>/assets.extra/knowledge/                the knowledge store of this version
    <version>/assets.extra/tf_serving_warmup_requests PredictionLogs TF Serving replays at load
"""
from typing import Iterable, Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from llm4msr.contract import (DEFAULT_SIGNATURE, ITEM_KNOWLEDGE, MODEL_NAME, RAW_FEATURES, SCENARIO_KNOWLEDGE,
                              USER_KNOWLEDGE)
from llm4msr.files import copy_tree, join, makedirs, parent, remove_tree
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, read_knowledge
from llm4msr.serving.client import raw_request
from llm4msr.serving.knowledge_store import InMemoryKnowledgeStore
from llm4msr.serving.layout import KNOWLEDGE_DIR, WARMUP_FILE

Sample = Tuple[str, str, Sequence[str]]  # user id, scenario, candidate item ids


def write_serving_assets(version_dir, knowledge_folder, item_ids: Sequence[str],
                         samples: Optional[Iterable[Sample]] = None, model_name: str = MODEL_NAME,
                         examples: Optional[Sequence[bytes]] = None) -> None:
    """Copies the knowledge folder into the version and writes warmup requests: by default, for
    the cold-start user in every scenario, `predict_raw` on `item_ids` and `serving_default` on
    the first of them. `examples` (serialized examples as the pipeline wrote them) warm
    `serving_default` up instead: its examples carry the raw vectors, which a reduced store lacks."""
    target = join(version_dir, KNOWLEDGE_DIR)
    remove_tree(target)
    copy_tree(knowledge_folder, target)
    store = InMemoryKnowledgeStore.from_knowledge(read_knowledge(target))
    if samples is None:
        samples = [(COLD_START_ID, scenario, list(item_ids)) for scenario in sorted(store.scenarios)]
    write_warmup(join(version_dir, WARMUP_FILE), store, list(samples), model_name, examples)


def write_warmup(path, store, samples: Sequence[Sample], model_name: str = MODEL_NAME,
                 examples: Optional[Sequence[bytes]] = None) -> None:
    logs = []
    for user, scenario, items in samples:
        user_vector, scenario_vector = store.user_vector(user), store.scenario_vector(scenario)
        item_vectors = store.item_vectors(items) if store.has_items else None
        logs.append(raw_request(user, scenario, items, user_vector, scenario_vector, model_name, item_vectors))
        if examples is None:
            logs.append(example_request(user, scenario, items[:1], user_vector, scenario_vector, model_name,
                                        None if item_vectors is None else item_vectors[:1]))
    if examples is not None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = DEFAULT_SIGNATURE
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto(list(examples), tf.string))
        logs.append(request)
    makedirs(parent(path))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in logs:
            entry = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(entry.SerializeToString())


def example(user_id: str, scenario: str, item_id: str, user_vector, scenario_vector,
            item_vector=None) -> tf.train.Example:
    """The tf.Example `serving_default` parses: the raw features plus the knowledge vectors."""
    values = dict(zip(RAW_FEATURES, (user_id, item_id, scenario)))
    feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
               for name, value in values.items()}
    vectors = ((USER_KNOWLEDGE, user_vector), (SCENARIO_KNOWLEDGE, scenario_vector), (ITEM_KNOWLEDGE, item_vector))
    for name, vector in vectors:
        if vector is not None:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=list(map(float, vector))))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def example_request(user_id, scenario, item_ids, user_vector, scenario_vector,
                    model_name: str = MODEL_NAME, item_vectors=None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = DEFAULT_SIGNATURE
    serialized = [example(user_id, scenario, item, user_vector, scenario_vector,
                          None if item_vectors is None else item_vectors[index]).SerializeToString()
                  for index, item in enumerate(item_ids)]
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized, tf.string))
    return request
