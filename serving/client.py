"""gRPC client for TF Serving (or `llm4msr serve`) with the official `tensorflow_serving.apis` stubs.

    client = ServingClient("127.0.0.1:8500", PushedKnowledgeStore.latest("runs/serving/llm4msr"))
    client.recommend("42", "S1", candidates=["1", "2", "3"], k=2)   # [("3", 0.81), ("1", 0.64)]

`score` fills in the knowledge vectors from the store (the user's and the scenario's once, the
items' one per candidate when the model takes item knowledge) and calls `predict_raw`. The store follows
the model: when the answer comes from another version than the store's, the store of that version
is loaded and the request is repeated pinned to it, so vectors and weights always match.
Transient failures (UNAVAILABLE: server restarting, connection refused) are retried by gRPC with
exponential backoff (the service config below); every call has a deadline.
"""
import json
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from llm4msr.contract import (ITEM_KNOWLEDGE, MODEL_NAME, PREDICTION_KEY, RAW_SIGNATURE, SCENARIO_KNOWLEDGE,
                              USER_KNOWLEDGE)
from llm4msr.serving.knowledge_store import KnowledgeStore
from llm4msr.serving.layout import DEFAULT_MAX_BATCH, MAX_MESSAGE_BYTES

_RETRY = {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
          "retryableStatusCodes": ["UNAVAILABLE"]}
SERVICE_CONFIG = {"methodConfig": [{
    "name": [{"service": "tensorflow.serving.PredictionService"}, {"service": "tensorflow.serving.ModelService"}],
    "retryPolicy": _RETRY}]}
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    # reconnect soon after a restart instead of gRPC's default 1 s..120 s backoff
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def raw_request(user_id: str, scenario: str, item_ids: Sequence[str], user_vector: np.ndarray,
                scenario_vector: np.ndarray, model_name: str = MODEL_NAME,
                item_vectors: Optional[np.ndarray] = None) -> predict_pb2.PredictRequest:
    """A `predict_raw` request scoring `item_ids` for one user in one scenario. The user, the scenario
    and their knowledge vectors are sent once (1 row): the signature repeats them per candidate.
    `item_vectors` `[N, dim]` (models with item knowledge): one row per candidate."""
    # numpy bytes and contiguous float arrays: make_tensor_proto's fast paths (3 ms -> 0.6 ms per request)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = RAW_SIGNATURE
    inputs = request.inputs
    inputs["user_id"].CopyFrom(tf.make_tensor_proto(np.array([user_id.encode()], object), tf.string))
    inputs["scenario"].CopyFrom(tf.make_tensor_proto(np.array([scenario.encode()], object), tf.string))
    inputs["item_id"].CopyFrom(tf.make_tensor_proto(np.array([i.encode() for i in item_ids], object), tf.string))
    for name, vector in ((USER_KNOWLEDGE, user_vector), (SCENARIO_KNOWLEDGE, scenario_vector)):
        inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(vector, np.float32)[None, :]))
    if item_vectors is not None:
        inputs[ITEM_KNOWLEDGE].CopyFrom(tf.make_tensor_proto(np.ascontiguousarray(item_vectors, np.float32)))
    return request


class ServingClient:
    def __init__(self, target: str = "127.0.0.1:8500", store: Optional[KnowledgeStore] = None,
                 model_name: str = MODEL_NAME, timeout: float = 5.0, max_batch: int = DEFAULT_MAX_BATCH,
                 version_label: Optional[str] = None):
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.store, self.model_name, self.timeout = store, model_name, timeout
        self.max_batch, self.version_label = max_batch, version_label

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self.predictions.Predict(request, timeout=self.timeout)

    def score(self, user_id: str, scenario: str, item_ids: Sequence[str]) -> np.ndarray:
        """Click probabilities of `item_ids` (float32 [N]), in `max_batch` chunks."""
        if self.store is None:
            raise ValueError("score needs a knowledge store (ServingClient(..., store=...))")
        item_ids = [str(i) for i in item_ids]
        chunks = [item_ids[i:i + self.max_batch] for i in range(0, len(item_ids), self.max_batch)]
        return np.concatenate([self._score_chunk(str(user_id), scenario, c) for c in chunks] or [np.zeros(0)])

    def _score_chunk(self, user_id: str, scenario: str, item_ids: List[str]) -> np.ndarray:
        response = self.predict(self._request(user_id, scenario, item_ids, version=None))
        served = response.model_spec.version.value
        if self.store.version is not None and served and served != self.store.version:
            self.store = self.store.for_version(served)  # the model moved on: follow it
            response = self.predict(self._request(user_id, scenario, item_ids, version=served))
        return tf.make_ndarray(response.outputs[PREDICTION_KEY]).reshape(-1)

    def _request(self, user_id, scenario, item_ids, version):
        request = raw_request(user_id, scenario, item_ids, self.store.user_vector(user_id),
                              self.store.scenario_vector(scenario), self.model_name,
                              self.store.item_vectors(item_ids) if self.store.has_items else None)
        if version:
            request.model_spec.version.value = version
        elif self.version_label:
            request.model_spec.version_label = self.version_label
        return request

    def recommend(self, user_id: str, scenario: str, candidates: Sequence[str], k: int = 10) -> List[Tuple[str, float]]:
        """The `k` best candidates with their probabilities, best first."""
        scores = self.score(user_id, scenario, candidates)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(str(candidates[i]), float(scores[i])) for i in top]

    def metadata(self) -> Dict[str, dict]:
        """signature name -> {"inputs"/"outputs": {tensor: (dtype name, shape)}, "method": ...}"""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        response = self.predictions.GetModelMetadata(request, timeout=self.timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {name: {"inputs": _tensors(sig.inputs), "outputs": _tensors(sig.outputs), "method": sig.method_name}
                for name, sig in signatures.signature_def.items()}

    def status(self) -> List[dict]:
        """[{"version", "state" (AVAILABLE, LOADING, END ...), "error_code", "error_message"}] for every version
        the server knows (END with an error: the version failed to load)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self.models.GetModelStatus(request, timeout=self.timeout)
        return [{"version": v.version, "state": get_model_status_pb2.ModelVersionStatus.State.Name(v.state),
                 "error_code": v.status.error_code, "error_message": v.status.error_message}
                for v in response.model_version_status]


def _tensors(infos) -> Dict[str, tuple]:
    return {name: (tf.dtypes.as_dtype(info.dtype).name, tuple(d.size for d in info.tensor_shape.dim))
            for name, info in infos.items()}
