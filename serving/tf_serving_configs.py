"""The TF Serving configs in `serving/configs/`, read with their protos.

`ModelServerConfig` ships in tensorflow-serving-api; `BatchingParameters`
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto) and `MonitoringConfig`
(tensorflow_serving/config/monitoring_config.proto) do not, so their descriptors are transcribed
here, field names and numbers as in TF Serving 2.16, to check the files the server will read.

`python -m llm4msr.serving.tf_serving_configs --stable V1 --canary V2` prints models.config for
real pushed versions.
"""
import argparse
import pathlib

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"
_T = descriptor_pb2.FieldDescriptorProto


def _message(name, *fields):
    """fields: (name, number, type, label, type_name)"""
    message = descriptor_pb2.DescriptorProto(name=name)
    for field_name, number, kind, label, type_name in fields:
        message.field.add(name=field_name, number=number, type=kind, label=label, type_name=type_name)
    return message


def _build_classes():
    optional, repeated = _T.LABEL_OPTIONAL, _T.LABEL_REPEATED
    int64_value, string_value = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    batching = _message(
        "BatchingParameters",
        ("max_batch_size", 1, _T.TYPE_MESSAGE, optional, int64_value),
        ("batch_timeout_micros", 2, _T.TYPE_MESSAGE, optional, int64_value),
        ("max_enqueued_batches", 3, _T.TYPE_MESSAGE, optional, int64_value),
        ("num_batch_threads", 4, _T.TYPE_MESSAGE, optional, int64_value),
        ("thread_pool_name", 5, _T.TYPE_MESSAGE, optional, string_value),
        ("allowed_batch_sizes", 6, _T.TYPE_INT64, repeated, None),
        ("pad_variable_length_inputs", 7, _T.TYPE_BOOL, optional, None))
    prometheus = _message("PrometheusConfig", ("enable", 1, _T.TYPE_BOOL, optional, None),
                          ("path", 2, _T.TYPE_STRING, optional, None))
    monitoring = _message("MonitoringConfig", ("prometheus_config", 1, _T.TYPE_MESSAGE, optional,
                                               ".tensorflow.serving.PrometheusConfig"))
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with an official copy
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(descriptor_pb2.FileDescriptorProto(
        name="llm4msr/tf_serving_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers.name], message_type=[batching, prometheus, monitoring]))
    factory = message_factory.MessageFactory(pool)
    return tuple(factory.GetPrototype(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
                 for name in ("BatchingParameters", "MonitoringConfig"))


BatchingParameters, MonitoringConfig = _build_classes()


def _read(path, message):
    return text_format.Parse(pathlib.Path(path).read_text(), message)


def read_models_config(path=CONFIG_DIR / "models.config") -> model_server_config_pb2.ModelServerConfig:
    return _read(path, model_server_config_pb2.ModelServerConfig())


def read_batching_config(path=CONFIG_DIR / "batching.config"):
    return _read(path, BatchingParameters())


def read_monitoring_config(path=CONFIG_DIR / "monitoring.config"):
    return _read(path, MonitoringConfig())


def models_config(stable: int, canary: int, base_path: str = None) -> model_server_config_pb2.ModelServerConfig:
    """models.config with the given versions behind the `stable` and `canary` labels."""
    config = read_models_config()
    model = config.model_config_list.config[0]
    if base_path:
        model.base_path = base_path
    model.model_version_policy.specific.ClearField("versions")
    model.model_version_policy.specific.versions.extend(sorted({stable, canary}))
    model.version_labels["stable"], model.version_labels["canary"] = stable, canary
    return config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stable", type=int, required=True)
    parser.add_argument("--canary", type=int, required=True)
    parser.add_argument("--base-path", help="model folder as the server sees it (default: /models/llm4msr)")
    args = parser.parse_args(argv)
    print(text_format.MessageToString(models_config(args.stable, args.canary, args.base_path)), end="")


if __name__ == "__main__":
    main()
