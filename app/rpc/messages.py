"""The messages and methods of ``inference.GRPCInferenceService``, built at import time.

KServe's ``grpc_predict_v2.proto`` and the part of Triton's ``grpc_service.proto`` and
``model_config.proto`` that this service answers, written here as data (message, field name,
number, type) and turned into a protobuf descriptor pool at run time: no ``protoc`` step, no
generated ``_pb2`` module tied to one protobuf release, and the wire format is all a client
sees. Fields of Triton's messages that a convolution never fills (a model's batching policy,
instance groups, shared memory regions) are left out; a client that sends them has them
skipped as unknown fields. ``tests/app/test_grpc_messages.py`` checks every field here against
the descriptors that ``tritonclient.grpc`` ships, name, number, type and repetition.

``MESSAGES[name]`` is a message class; ``METHODS`` lists the service's unary RPCs with their
request and response classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = ["MESSAGES", "METHODS", "PACKAGE", "SERVICE"]

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"
_Field = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _Field.TYPE_BOOL,
    "bytes": _Field.TYPE_BYTES,
    "double": _Field.TYPE_DOUBLE,
    "float": _Field.TYPE_FLOAT,
    "int32": _Field.TYPE_INT32,
    "int64": _Field.TYPE_INT64,
    "string": _Field.TYPE_STRING,
    "uint32": _Field.TYPE_UINT32,
    "uint64": _Field.TYPE_UINT64,
}
# A field: (name, number, type), the type a scalar's name, a message's or enum's name, with
# "repeated " or "map<string, T>" in front as in a .proto file; "oneof NAME:" a oneof's member.
FieldSpec = tuple[str, int, str]
_TENSOR_METADATA = [
    ("name", 1, "string"),
    ("datatype", 2, "string"),
    ("shape", 3, "repeated int64"),
]
_OUTPUT_TENSOR = [*_TENSOR_METADATA, ("parameters", 4, "map<InferParameter>")]
_NAME_VERSION = [("name", 1, "string"), ("version", 2, "string")]
_STATISTIC = [("count", 1, "uint64"), ("ns", 2, "uint64")]

# message name -> fields, with nested messages as "Outer.Inner".
_MESSAGES: dict[str, list[FieldSpec]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": _NAME_VERSION,
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, "string"),
        ("version", 2, "string"),
        ("extensions", 3, "repeated string"),
    ],
    "ModelMetadataRequest": _NAME_VERSION,
    "ModelMetadataResponse": [
        ("name", 1, "string"),
        ("versions", 2, "repeated string"),
        ("platform", 3, "string"),
        ("inputs", 4, "repeated ModelMetadataResponse.TensorMetadata"),
        ("outputs", 5, "repeated ModelMetadataResponse.TensorMetadata"),
    ],
    "ModelMetadataResponse.TensorMetadata": _TENSOR_METADATA,
    "InferParameter": [
        ("bool_param", 1, "oneof parameter_choice: bool"),
        ("int64_param", 2, "oneof parameter_choice: int64"),
        ("string_param", 3, "oneof parameter_choice: string"),
        ("double_param", 4, "oneof parameter_choice: double"),
        ("uint64_param", 5, "oneof parameter_choice: uint64"),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, "repeated bool"),
        ("int_contents", 2, "repeated int32"),
        ("int64_contents", 3, "repeated int64"),
        ("uint_contents", 4, "repeated uint32"),
        ("uint64_contents", 5, "repeated uint64"),
        ("fp32_contents", 6, "repeated float"),
        ("fp64_contents", 7, "repeated double"),
        ("bytes_contents", 8, "repeated bytes"),
    ],
    "ModelInferRequest": [
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("id", 3, "string"),
        ("parameters", 4, "map<InferParameter>"),
        ("inputs", 5, "repeated ModelInferRequest.InferInputTensor"),
        ("outputs", 6, "repeated ModelInferRequest.InferRequestedOutputTensor"),
        ("raw_input_contents", 7, "repeated bytes"),
    ],
    "ModelInferRequest.InferInputTensor": [*_OUTPUT_TENSOR, ("contents", 5, "InferTensorContents")],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, "string"),
        ("parameters", 2, "map<InferParameter>"),
    ],
    "ModelInferResponse": [
        ("model_name", 1, "string"),
        ("model_version", 2, "string"),
        ("id", 3, "string"),
        ("parameters", 4, "map<InferParameter>"),
        ("outputs", 5, "repeated ModelInferResponse.InferOutputTensor"),
        ("raw_output_contents", 6, "repeated bytes"),
    ],
    "ModelInferResponse.InferOutputTensor": [
        *_OUTPUT_TENSOR,
        ("contents", 5, "InferTensorContents"),
    ],
    "RepositoryIndexRequest": [("repository_name", 1, "string"), ("ready", 2, "bool")],
    "RepositoryIndexResponse": [("models", 1, "repeated RepositoryIndexResponse.ModelIndex")],
    "RepositoryIndexResponse.ModelIndex": [
        *_NAME_VERSION,
        ("state", 3, "string"),
        ("reason", 4, "string"),
    ],
    "ModelConfigRequest": _NAME_VERSION,
    "ModelConfigResponse": [("config", 1, "ModelConfig")],
    # model_config.proto, the fields a convolution model fills.
    "ModelConfig": [
        ("name", 1, "string"),
        ("platform", 2, "string"),
        ("max_batch_size", 4, "int32"),
        ("input", 5, "repeated ModelInput"),
        ("output", 6, "repeated ModelOutput"),
        ("parameters", 14, "map<ModelParameter>"),
        ("backend", 17, "string"),
    ],
    "ModelInput": [
        ("name", 1, "string"),
        ("data_type", 2, "DataType"),
        ("dims", 4, "repeated int64"),
        ("optional", 8, "bool"),
    ],
    "ModelOutput": [
        ("name", 1, "string"),
        ("data_type", 2, "DataType"),
        ("dims", 3, "repeated int64"),
    ],
    "ModelParameter": [("string_value", 1, "string")],
    "ModelStatisticsRequest": _NAME_VERSION,
    "ModelStatisticsResponse": [("model_stats", 1, "repeated ModelStatistics")],
    "ModelStatistics": [
        *_NAME_VERSION,
        ("last_inference", 3, "uint64"),
        ("inference_count", 4, "uint64"),
        ("execution_count", 5, "uint64"),
        ("inference_stats", 6, "InferStatistics"),
        ("batch_stats", 7, "repeated InferBatchStatistics"),
    ],
    "InferStatistics": [
        ("success", 1, "StatisticDuration"),
        ("fail", 2, "StatisticDuration"),
        ("queue", 3, "StatisticDuration"),
        ("compute_input", 4, "StatisticDuration"),
        ("compute_infer", 5, "StatisticDuration"),
        ("compute_output", 6, "StatisticDuration"),
        ("cache_hit", 7, "StatisticDuration"),
        ("cache_miss", 8, "StatisticDuration"),
    ],
    "InferBatchStatistics": [
        ("batch_size", 1, "uint64"),
        ("compute_input", 2, "StatisticDuration"),
        ("compute_infer", 3, "StatisticDuration"),
        ("compute_output", 4, "StatisticDuration"),
    ],
    "StatisticDuration": _STATISTIC,
}
# model_config.proto's DataType, whole: a config names its tensors' types with it.
_DATA_TYPES = [
    "INVALID",
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "STRING",
    "BF16",
]

# The unary RPCs answered (method -> request and response message). The service's other
# RPCs (ModelStreamInfer, model load and unload, shared memory, trace and log settings) are
# answered UNIMPLEMENTED by grpcio, as for any method a server does not register.
_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
)


def _field(
    message: Any, path: str, name: str, number: int, spec: str, oneofs: dict[str, int]
) -> None:
    """Add field ``name`` to ``message`` (whose dotted path in the package is ``path``)."""
    field = message.field.add(name=name, number=number, label=_Field.LABEL_OPTIONAL)
    if spec.startswith("oneof "):
        oneof, _, spec = spec[len("oneof ") :].partition(": ")
        if oneof not in oneofs:
            oneofs[oneof] = len(message.oneof_decl)
            message.oneof_decl.add(name=oneof)
        field.oneof_index = oneofs[oneof]
    if spec.startswith("map<"):
        entry = "".join(part.capitalize() for part in name.split("_")) + "Entry"
        value = message.nested_type.add(name=entry)
        value.options.map_entry = True
        _field(value, f"{path}.{entry}", "key", 1, "string", {})
        _field(value, f"{path}.{entry}", "value", 2, spec[len("map<") : -1], {})
        spec = f"repeated .{PACKAGE}.{path}.{entry}"
    if spec.startswith("repeated "):
        field.label, spec = _Field.LABEL_REPEATED, spec[len("repeated ") :]
    if spec in _SCALARS:
        field.type = _SCALARS[spec]
    else:
        field.type = _Field.TYPE_ENUM if spec == "DataType" else _Field.TYPE_MESSAGE
        field.type_name = spec if spec.startswith(".") else f".{PACKAGE}.{spec}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="convengine/grpc_service.proto", package=PACKAGE, syntax="proto3"
    )
    enum = proto.enum_type.add(name="DataType")
    for number, name in enumerate(_DATA_TYPES):
        enum.value.add(name=f"TYPE_{name}", number=number)
    made: dict[str, Any] = {}
    for path, fields in _MESSAGES.items():
        outer, _, inner = path.partition(".")
        if inner:
            message = made[outer].nested_type.add(name=inner)
        else:
            message = proto.message_type.add(name=outer)
        made[path] = message
        oneofs: dict[str, int] = {}
        for name, number, spec in fields:
            _field(message, path, name, number, spec, oneofs)
    service = proto.service.add(name=SERVICE.rpartition(".")[2])
    for method in _METHODS:
        service.method.add(
            name=method,
            input_type=f".{PACKAGE}.{method}Request",
            output_type=f".{PACKAGE}.{method}Response",
        )
    return proto


def _classes(paths: Sequence[str]) -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file())
    return {
        path: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{path}"))
        for path in paths
    }


MESSAGES = _classes(list(_MESSAGES))
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    method: (MESSAGES[f"{method}Request"], MESSAGES[f"{method}Response"]) for method in _METHODS
}
