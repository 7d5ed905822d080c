"""A local TF-Serving-compatible gRPC server: the embedded default for development and tests.

It implements `tensorflow.serving.PredictionService` (Predict, Classify, GetModelMetadata) and
`ModelService` (GetModelStatus) with the official protos, for the SavedModel versions under one
push folder, the way `tensorflow_model_server --model_base_path=<dir>` does:

* the newest `num_versions` integer version folders are served; a request without a version gets
  the newest; labels: `canary` = newest, `stable` = the one before it (the newest when alone);
* a poller loads new versions completely (SavedModel + warmup replay of
  `assets.extra/tf_serving_warmup_requests`) and then swaps one reference, so requests in flight
  finish on the version they started with and none fails during a push; a version that fails to
  load is retried with a growing back-off (at once when its files change) while the previous ones
  keep serving, and GetModelStatus reports it as END with the load error, as TF Serving does;
* malformed requests get INVALID_ARGUMENT (NOT_FOUND for an unknown model or version) with a
  message naming what is wrong, before the model runs: a tensor's claimed shape is checked
  against the signature and the maximum batch before it is materialised, an empty batch is
  refused, and NaN or infinite values in a float input (the knowledge vectors of `predict_raw`)
  are refused (the exported signatures refuse them in tf.Examples too);
* limits (`Limits`): at most `max_concurrent_requests` requests at once (RESOURCE_EXHAUSTED
  beyond), each answered within `request_timeout` seconds or the client's deadline if shorter
  (DEADLINE_EXCEEDED; a model call that has started runs to its end, bounded by the maximum
  batch, but queued requests past their deadline never start), messages up to 64 MB.

Classify accepts tf.Examples for a signature taking `examples` and returning `probability`
(TF Serving itself requires a classify-method signature, which the export does not have) and
answers with classes "0" and "1".
"""
import logging
import os
import pathlib
import threading
import time
import warnings
from concurrent import futures
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

from llm4msr.contract import DEFAULT_SIGNATURE, MODEL_NAME, PER_CANDIDATE_INPUT, PREDICTION_KEY
from llm4msr.serving.layout import DEFAULT_MAX_BATCH, MAX_MESSAGE_BYTES, WARMUP_FILE, version_dirs

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State
MAX_RETRY_SECONDS = 300.0  # back-off ceiling for a version that keeps failing to load


@dataclass(frozen=True)
class Limits:
    """What one client can make the server spend (the `llm4msr serve` flags of the same names)."""
    max_concurrent_requests: int = 64  # in flight at once, queued ones included: RESOURCE_EXHAUSTED beyond
    request_timeout: float = 10.0  # seconds from arrival to answer: DEADLINE_EXCEEDED beyond
    model_workers: int = 16  # model calls running at once (the rest wait, within their deadline)

    def __post_init__(self):
        for name in ("max_concurrent_requests", "model_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, got {self.request_timeout}")


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class Servable:
    """One loaded version. `loaded` keeps the variables alive that the signature functions use."""
    version: int
    loaded: object
    functions: Mapping[str, object]  # signature name -> concrete function
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    max_batch: int

    @classmethod
    def load(cls, path: pathlib.Path, version: int, max_batch: int) -> "Servable":
        loaded = tf.saved_model.load(str(path))
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        defs = {name: sig for name, sig in saved.meta_graphs[0].signature_def.items() if not name.startswith("__")}
        servable = cls(version, loaded, dict(loaded.signatures), defs, max_batch)
        servable.warm_up(path / WARMUP_FILE)
        return servable

    def warm_up(self, path: pathlib.Path) -> int:
        """Replays the recorded requests so the first real request does not pay for tracing."""
        if not path.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.HasField("predict_log"):
                request = entry.predict_log.request
                self.predict(request.model_spec.signature_name, request.inputs, request.output_filter)
            elif entry.HasField("classify_log"):
                self.classify(entry.classify_log.request)
            count += 1
        return count

    def predict(self, signature: str, inputs, output_filter=()) -> Dict[str, tf.Tensor]:
        name = signature or DEFAULT_SIGNATURE
        signature_def = self._signature_def(name)
        arrays = check_inputs(name, signature_def, inputs, self.max_batch)
        unknown = sorted(set(output_filter) - set(signature_def.outputs))
        if unknown:
            raise invalid(f"output_filter names {unknown}, not an output of signature {name!r} "
                          f"(outputs: {sorted(signature_def.outputs)})")
        outputs = run(self.functions[name], arrays)
        return {k: v for k, v in outputs.items() if not output_filter or k in output_filter}

    def classify(self, request: classification_pb2.ClassificationRequest) -> classification_pb2.ClassificationResult:
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature_def = self._signature_def(name)
        if set(signature_def.inputs) != {"examples"} or PREDICTION_KEY not in signature_def.outputs:
            raise invalid(f"Classify needs a signature taking 'examples' and returning {PREDICTION_KEY!r}; "
                          f"{name!r} takes {sorted(signature_def.inputs)}")
        examples = serialized_examples(request.input)
        if not examples:
            raise invalid("Classify request has no examples (input.example_list is empty)")
        if len(examples) > self.max_batch:
            raise invalid(f"{len(examples)} examples, more than the maximum batch of {self.max_batch}")
        probability = run(self.functions[name], {"examples": np.asarray(examples, object)})[PREDICTION_KEY]
        result = classification_pb2.ClassificationResult()
        for p in probability.numpy().reshape(-1):
            result.classifications.add().classes.extend([classification_pb2.Class(label="0", score=1 - p),
                                                         classification_pb2.Class(label="1", score=p)])
        return result

    def _signature_def(self, name: str) -> meta_graph_pb2.SignatureDef:
        if name not in self.signature_defs:
            raise invalid(f"unknown signature {name!r}; this model has {sorted(self.signature_defs)}")
        return self.signature_defs[name]


def run(function, arrays: Mapping[str, np.ndarray]) -> Dict[str, tf.Tensor]:
    try:
        return function(**arrays)
    # InvalidArgumentError: e.g. the Transform graph's unknown-scenario assert; UnicodeDecodeError:
    # TF failed on a client's bytes and quoted them in its message, which then does not decode
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as error:
        bad = _first_unparsable_example(arrays.get("examples"))
        if bad is not None:
            raise invalid(f"examples[{bad}] is not a serialized tf.Example") from None
        if isinstance(error, UnicodeDecodeError) or "Could not parse example input" in error.message:
            raise invalid("a value of 'examples' is not a serialized tf.Example (TensorFlow's parser refused it)") \
                from None
        raise invalid(f"the model refused the input: {_op_error(error.message)}") from None


def _first_unparsable_example(examples: Optional[np.ndarray]) -> Optional[int]:
    """The index of the first value that does not parse as a tf.Example (looked for only after the
    model failed: parsing every request twice would cost ~10 us per example)."""
    for index, value in enumerate([] if examples is None else examples.reshape(-1)):
        with warnings.catch_warnings(record=True) as warned:  # protobuf warns, not raises, on some garbage
            warnings.simplefilter("always")
            try:
                example_pb2.Example.FromString(value)
            except (DecodeError, TypeError):
                return index
        if warned:
            return index
    return None


def _op_error(message: str) -> str:
    """The line of a TF runtime error that says what failed (not "Graph execution error:"), without
    the brackets of an assertion's data: `assertion failed: [unknown scenario id 'S9'; ...]`."""
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith(("Graph execution error", "Detected at node", "<stack",
                                                                 "[[", "File "))]
    line = lines[0] if lines else message
    if line.startswith("assertion failed: [") and line.endswith("]"):
        line = line[len("assertion failed: ["):-1].replace("] [", " ").replace("\\'", "'")
    return line[:500]


def check_inputs(signature: str, signature_def, inputs, max_batch: int) -> Dict[str, np.ndarray]:
    """The request's tensors as arrays, after checking names, dtypes, shapes and batch size."""
    expected = signature_def.inputs
    missing, unknown = sorted(set(expected) - set(inputs)), sorted(set(inputs) - set(expected))
    if missing or unknown:
        raise invalid(f"signature {signature!r} takes inputs {sorted(expected)}; "
                      + "; ".join(filter(None, [missing and f"missing {missing}", unknown and f"unknown {unknown}"])))
    arrays = {}
    for name, proto in inputs.items():
        spec = expected[name]
        if proto.dtype != spec.dtype:
            raise invalid(f"input {name!r} has dtype {_dtype_name(proto.dtype)}, "
                          f"signature {signature!r} expects {_dtype_name(spec.dtype)}")
        wanted = [d.size for d in spec.tensor_shape.dim]
        claimed = [d.size for d in proto.tensor_shape.dim]
        # the claimed shape is checked before the tensor is materialised: a 100-byte proto with one
        # value can claim [4000000, 384], which make_ndarray would expand to gigabytes
        _check_shape(signature, name, claimed, wanted)
        if claimed and claimed[0] > max_batch:
            raise invalid(f"{claimed[0]} rows (candidates) in one request, more than the maximum batch of "
                          f"{max_batch}; split the request (input {name!r})")
        try:
            array = tf.make_ndarray(proto)
        except Exception as error:
            raise invalid(f"input {name!r} is not a valid tensor: {str(error)[:200]}") from None
        _check_shape(signature, name, array.shape, wanted)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            row = int(np.argwhere(~np.isfinite(array))[0][0]) if array.ndim else 0
            raise invalid(f"input {name!r} holds a non-finite value (NaN or infinity) in row {row}")
        arrays[name] = array
    batch = _check_rows(arrays)
    if batch == 0:
        raise invalid(f"the request has no rows to score (signature {signature!r}); send at least one candidate")
    if batch > max_batch:
        raise invalid(f"{batch} rows (candidates) in one request, more than the maximum batch of {max_batch}; "
                      f"split the request")
    return arrays


def _dtype_name(enum: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:  # DT_INVALID (0) or a number no DataType has
        return f"invalid ({enum})"


def _check_rows(arrays: Mapping[str, np.ndarray]) -> int:
    """The batch (the candidates' rows, when there is a candidate input): every input has its rows,
    or 1 row for the whole request (`predict_raw` repeats those per candidate, see
    `llm4msr.contract.broadcast_to_candidates`)."""
    if PER_CANDIDATE_INPUT in arrays and arrays[PER_CANDIDATE_INPUT].ndim:
        batch = arrays[PER_CANDIDATE_INPUT].shape[0]
    else:
        batch = max((a.shape[0] for a in arrays.values() if a.ndim), default=0)
    for name, array in arrays.items():
        if array.ndim and array.shape[0] not in (1, batch):
            raise invalid(f"inputs have different batch sizes: {name!r} has {array.shape[0]} rows, others {batch} "
                          f"(an input may also have 1 row for the whole request)")
    return batch


def _check_shape(signature: str, name: str, shape, expected) -> None:
    fits = len(shape) == len(expected) and all(e in (-1, s) for s, e in zip(shape, expected))
    if not fits:
        wanted = "[" + ", ".join("None" if e == -1 else str(e) for e in expected) + "]"
        what = "knowledge width" if len(shape) == len(expected) == 2 else "shape"
        raise invalid(f"input {name!r} has shape {list(shape)}, signature {signature!r} expects {wanted} "
                      f"(wrong {what})")


def serialized_examples(model_input) -> list:
    """Classify/Regress `Input` (example_list or example_list_with_context) -> serialized tf.Examples."""
    if model_input.HasField("example_list_with_context"):
        listed = model_input.example_list_with_context
        merged = []
        for example in listed.examples:
            full = tf.train.Example()
            full.CopyFrom(listed.context)
            full.MergeFrom(example)
            merged.append(full.SerializeToString())
        return merged
    return [e.SerializeToString() for e in model_input.example_list.examples]


@dataclass(frozen=True)
class LoadFailure:
    """A version that did not load: retried at `retry_at` (doubling waits), or at once when its
    files change (`stamp`), e.g. when a copy that was still running completes."""
    stamp: Tuple
    attempts: int
    retry_at: float
    message: str
    code: int  # tensorflow.error.Code, as TF Serving reports a failed load


@dataclass(frozen=True)
class Snapshot:
    """What is served at one moment; replaced as a whole, never mutated."""
    servables: Mapping[int, Servable] = field(default_factory=dict)
    labels: Mapping[str, int] = field(default_factory=dict)
    loading: frozenset = frozenset()
    failed: Mapping[int, LoadFailure] = field(default_factory=dict)


class ModelRegistry:
    """The versions of one model under `model_dir`, kept up to date by `poll`."""

    def __init__(self, model_dir, model_name: str = MODEL_NAME, num_versions: int = 2,
                 max_batch: int = DEFAULT_MAX_BATCH, poll_seconds: float = 1.0):
        self.model_dir, self.model_name = pathlib.Path(model_dir), model_name
        self.num_versions, self.max_batch, self.poll_seconds = num_versions, max_batch, poll_seconds
        self.snapshot = Snapshot()
        self._failed: Dict[int, LoadFailure] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def poll(self) -> bool:
        """Loads new versions, drops versions beyond `num_versions` or gone from disk; True if changed."""
        on_disk = {version: pathlib.Path(path) for version, path in version_dirs(self.model_dir).items()}
        current = self.snapshot.servables
        wanted = sorted(on_disk, reverse=True)[:self.num_versions]
        self._failed = {v: f for v, f in self._failed.items() if v in wanted}
        loaded = {v: s for v, s in current.items() if v in on_disk}
        for version in (v for v in wanted if v not in current and self._due(v, on_disk[v])):
            self._publish(loaded, loading={version})
            servable = self._load(on_disk[version], version)
            if servable is not None:
                loaded[version] = servable
        keep = dict(sorted(loaded.items(), reverse=True)[:self.num_versions])
        changed = set(keep) != set(current)
        self._publish(keep)
        return changed

    def _due(self, version: int, path: pathlib.Path) -> bool:
        failure = self._failed.get(version)
        return failure is None or time.monotonic() >= failure.retry_at or failure.stamp != _stamp(path)

    def _load(self, path: pathlib.Path, version: int) -> Optional[Servable]:
        stamp = _stamp(path)
        try:
            servable = Servable.load(path, version, self.max_batch)
        except Exception as error:  # a half-copied folder: the old versions keep serving
            self._record_failure(version, stamp, error)
            return None
        self._failed.pop(version, None)
        log.info("serving version %s of %s from %s", version, self.model_name, path)
        return servable

    def _record_failure(self, version: int, stamp: Tuple, error: Exception) -> None:
        previous = self._failed.get(version)
        attempts = previous.attempts + 1 if previous is not None and previous.stamp == stamp else 1
        wait = min(MAX_RETRY_SECONDS, self.poll_seconds * 2 ** attempts)
        message = f"{type(error).__name__}: {str(error)[:500]}"
        code = error.error_code if isinstance(error, tf.errors.OpError) else tf.errors.UNKNOWN
        self._failed[version] = LoadFailure(stamp, attempts, time.monotonic() + wait, message, code)
        if attempts == 1:
            log.warning("version %s of %s did not load (retrying with back-off, at once if its files change): %s",
                        version, self.model_name, message)

    def _publish(self, servables: Dict[int, Servable], loading=frozenset()) -> None:
        versions = sorted(servables, reverse=True)
        labels = {"canary": versions[0], "stable": versions[min(1, len(versions) - 1)]} if versions else {}
        self.snapshot = Snapshot(dict(servables), labels, frozenset(loading), dict(self._failed))  # one reference swap

    def start(self) -> "ModelRegistry":
        self.poll()
        self._thread = threading.Thread(target=self._poll_forever, name="llm4msr-version-poller", daemon=True)
        self._thread.start()
        return self

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # the poller must outlive a bad folder listing
                log.exception("polling %s failed", self.model_dir)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def resolve(self, spec) -> Servable:
        """ModelSpec -> Servable, as TF Serving resolves name, version and version_label."""
        snapshot = self.snapshot
        if spec.name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: model {spec.name!r} "
                                                          f"(this server serves {self.model_name!r})")
        if spec.HasField("version"):
            version = spec.version.value
        elif spec.version_label:
            if spec.version_label not in snapshot.labels:
                raise invalid(f"Unrecognized servable version label: {spec.version_label!r} "
                              f"(labels: {sorted(snapshot.labels)})")
            version = snapshot.labels[spec.version_label]
        else:
            version = max(snapshot.servables, default=None)
        if version not in snapshot.servables:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: version {version} of "
                                                          f"{self.model_name!r} (available: "
                                                          f"{sorted(snapshot.servables) or 'none yet'})")
        return snapshot.servables[version]


def _stamp(path: pathlib.Path) -> Tuple:
    """The names, sizes and modification times of a version's files: a change means a new attempt."""
    stamp = []
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                info = os.stat(os.path.join(folder, name))
            except OSError:  # removed while we look: the next poll sees the change
                continue
            stamp.append((os.path.relpath(os.path.join(folder, name), path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(stamp))


def _answer(method):
    """Runs a request on a model worker within its time limit (`Limits.request_timeout`, or the
    client's deadline if shorter); request errors become their gRPC status, anything else INTERNAL."""
    def handler(self, request, context):
        seconds = self.limits.request_timeout
        if context.time_remaining() is not None:
            seconds = min(seconds, context.time_remaining())
        try:
            if self.workers is None:
                return method(self, request, context)
            work = self.workers.submit(method, self, request, context)
            try:
                return work.result(timeout=max(seconds, 0.0))
            except futures.TimeoutError:
                work.cancel()  # not started yet: it never will be; started: it runs to its end
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"no answer within {seconds:.3g} s (the server's request timeout, or the client's "
                                   f"deadline if shorter): the server is busy") from None
        except RequestError as error:
            context.abort(error.code, str(error))
        except Exception as error:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {str(error)[:500]}")
    handler.__name__ = method.__name__
    return handler


def _response_spec(target, servable: Servable, spec, signature: str) -> None:
    target.name = spec.name
    target.version.value = servable.version
    target.signature_name = signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: Limits, workers: futures.Executor):
        self.registry, self.limits, self.workers = registry, limits, workers

    @_answer
    def Predict(self, request, context):
        servable = self.registry.resolve(request.model_spec)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        outputs = servable.predict(signature, request.inputs, request.output_filter)
        response = predict_pb2.PredictResponse()
        _response_spec(response.model_spec, servable, request.model_spec, signature)
        for name, tensor in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        return response

    @_answer
    def Classify(self, request, context):
        servable = self.registry.resolve(request.model_spec)
        response = classification_pb2.ClassificationResponse(result=servable.classify(request))
        _response_spec(response.model_spec, servable, request.model_spec,
                       request.model_spec.signature_name or DEFAULT_SIGNATURE)
        return response

    @_answer
    def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            raise invalid(f"metadata_field must be ['signature_def'] (the only one supported), "
                          f"got {list(request.metadata_field)}")
        servable = self.registry.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _response_spec(response.model_spec, servable, request.model_spec, "")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signatures.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Answered on the gRPC thread, not a model worker: a busy server still reports its status."""

    def __init__(self, registry: ModelRegistry, limits: Limits):
        self.registry, self.limits, self.workers = registry, limits, None

    @_answer
    def GetModelStatus(self, request, context):
        spec = request.model_spec
        if spec.name != self.registry.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name!r}")
        snapshot = self.registry.snapshot
        states = {**{v: State.END for v in snapshot.failed}, **{v: State.LOADING for v in snapshot.loading},
                  **{v: State.AVAILABLE for v in snapshot.servables}}
        if spec.HasField("version"):
            if spec.version.value not in states:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find version {spec.version.value} of "
                                                              f"model {spec.name!r}")
            states = {spec.version.value: states[spec.version.value]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state in sorted(states.items()):
            status = response.model_version_status.add(version=version, state=state)
            if state == State.END:  # as TF Serving reports a version that failed to load
                status.status.error_code = snapshot.failed[version].code
                status.status.error_message = snapshot.failed[version].message
        return response


def make_server(registry: ModelRegistry, host: str = "127.0.0.1", port: int = 8500, limits: Limits = Limits()):
    """A started gRPC server (port 0 picks a free one) and the port it listens on."""
    # no SO_REUSEPORT (gRPC sets it by default): a second server on a taken port must fail, not
    # share the port and split the clients between two servers holding different versions
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]
    # one gRPC thread per admitted request (they wait on the model workers within the time limit)
    server = grpc.server(futures.ThreadPoolExecutor(limits.max_concurrent_requests, thread_name_prefix="llm4msr-grpc"),
                         options=options, maximum_concurrent_rpcs=limits.max_concurrent_requests)
    workers = futures.ThreadPoolExecutor(limits.model_workers, thread_name_prefix="llm4msr-model")
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(registry, limits, workers),
                                                                        server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry, limits), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio >= 1.5x raises where older versions returned 0
        bound = 0
    if not bound:
        workers.shutdown(wait=False)
        raise OSError(f"cannot listen on {host}:{port} (is another server using the port?)")
    server.start()
    return server, bound
