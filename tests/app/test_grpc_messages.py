"""The service's gRPC messages, built from data at run time, match the descriptors NVIDIA's
tritonclient.grpc ships: every field's name, number, type and repetition, every method's
request and response."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from app.rpc.messages import MESSAGES, METHODS, SERVICE


def _theirs(path: str):
    top, _, nested = path.partition(".")
    for module in (service_pb2, model_config_pb2):
        if top in module.DESCRIPTOR.message_types_by_name:
            descriptor = module.DESCRIPTOR.message_types_by_name[top]
            for part in filter(None, nested.split(".")):
                descriptor = descriptor.nested_types_by_name[part]
            return descriptor
    raise AssertionError(f"tritonclient has no message {path}")


def _shape(field) -> tuple:
    target = field.message_type or field.enum_type
    return (field.number, field.type, field.label, target.full_name if target else None)


@pytest.mark.parametrize("path", list(MESSAGES))
def test_every_field_is_triton_s(path):
    ours, theirs = MESSAGES[path].DESCRIPTOR, _theirs(path)
    assert ours.full_name == theirs.full_name
    for field in ours.fields:
        assert field.name in theirs.fields_by_name, f"{path}.{field.name} is not Triton's"
        assert _shape(field) == _shape(theirs.fields_by_name[field.name]), f"{path}.{field.name}"


def test_methods_are_the_service_s():
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert theirs.full_name == SERVICE
    for name, (request, response) in METHODS.items():
        method = theirs.methods_by_name[name]
        assert request.DESCRIPTOR.full_name == method.input_type.full_name
        assert response.DESCRIPTOR.full_name == method.output_type.full_name


def test_a_request_round_trips_between_both_descriptions():
    theirs = service_pb2.ModelInferRequest(model_name="conv2d", id="7")
    theirs.parameters["stride"].int64_param = 2
    tensor = theirs.inputs.add(name="x", datatype="FP32", shape=[1, 1, 2, 2])
    tensor.parameters["binary_data_size"].int64_param = 16
    theirs.raw_input_contents.append(np.arange(4, dtype="<f4").tobytes())
    ours = MESSAGES["ModelInferRequest"].FromString(theirs.SerializeToString())
    assert ours.SerializeToString() == theirs.SerializeToString()
    assert ours.parameters["stride"].int64_param == 2 and list(ours.inputs[0].shape) == [1, 1, 2, 2]
