"""Generated requests for every KatoService method, from the protobuf descriptors."""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from kato_grpc.v1 import kato_service_pb2 as svc

SERVICE = svc.DESCRIPTOR.services_by_name["KatoService"]
METHODS = list(SERVICE.methods)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def scalar(field: FieldDescriptor, ids: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        if field.name in ("name", "parent", "session", "knowledge_base"):  # resource names
            return ids
        return st.one_of(st.text(max_size=12), st.text(min_size=200, max_size=2000), st.sampled_from(["", "a", "é"]))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if t == FieldDescriptor.TYPE_DOUBLE else 32)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 30)  # known and unknown values
    if t in _INT_RANGES:
        low, high = _INT_RANGES[t]
        return st.one_of(st.integers(-5, 200), st.integers(low, high))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=20)
    raise TypeError(f"no strategy for field type {t}")


def message(descriptor: Descriptor, ids: st.SearchStrategy[str], depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        out = cls()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                _key_field, value_field = field.message_type.fields
                keys = draw(st.lists(st.text(max_size=8), max_size=3))
                target = getattr(out, field.name)
                for key in keys:
                    if value_field.message_type is not None:
                        if value_field.message_type.full_name == "google.protobuf.Value":
                            target[key].number_value = draw(st.floats(allow_nan=True))
                        else:
                            target[key].CopyFrom(draw(message(value_field.message_type, ids, depth + 1)))
                    else:
                        target[key] = draw(scalar(value_field, ids))
                continue
            if field.is_repeated:
                values = draw(st.lists(_value(field, ids, depth), max_size=3))
                target = getattr(out, field.name)
                for value in values:
                    if field.message_type is not None:
                        target.add().CopyFrom(value)
                    else:
                        target.append(value)
                continue
            value = draw(_value(field, ids, depth))
            if field.message_type is not None:
                getattr(out, field.name).CopyFrom(value)
            else:
                setattr(out, field.name, value)
        return out

    return build()


def _value(field: FieldDescriptor, ids: st.SearchStrategy[str], depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Value":
            from google.protobuf import struct_pb2  # noqa: PLC0415 - only for this case

            return st.floats(allow_nan=True).map(lambda f: struct_pb2.Value(number_value=f))
        return message(field.message_type, ids, depth + 1)
    return scalar(field, ids)
