"""Registering KatoService with decoding done by us, not by grpc.

grpc answers a request it cannot deserialize with INTERNAL; a client that sends bad bytes
must get INVALID_ARGUMENT instead (architecture.md §7). So every handler receives the raw bytes, parsed
here; what does not parse becomes an ``Undecodable`` that the servicer answers with
INVALID_ARGUMENT (``request``, with the parser's complaint).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from kato_grpc.access import Caller
from kato_grpc.errors import InvalidArgument, KatoError, ResourceExhausted
from kato_grpc.v1 import kato_service_pb2 as svc
from kato_server.errors import to_status

SERVICE = svc.DESCRIPTOR.services_by_name["KatoService"]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request whose bytes are not a valid message of the method's input type, or more
    bytes than the method takes (``size`` > ``limit``)."""

    reason: str
    size: int = 0
    limit: int = 0

    def error(self) -> KatoError:
        if self.limit:
            return ResourceExhausted(
                f"the request is {self.size:,} bytes, over the limit of {self.limit:,} (KATO_MAX_MESSAGE_BYTES)",
                reason="MESSAGE_TOO_LARGE",
                metadata={"bytes": str(self.size), "limit": str(self.limit)},
            )
        return InvalidArgument.for_field("request", f"cannot be decoded: {self.reason}", reason="UNDECODABLE_REQUEST")


def _parser(message_type: type[Message], limit: int) -> Callable[[bytes], Message | Undecodable]:
    """Decodes a request of at most ``limit`` bytes (grpc's own limit is the largest of every
    method's: ``validation.message_limit``)."""

    def parse(data: bytes) -> Message | Undecodable:
        if len(data) > limit:
            return Undecodable("too large", len(data), limit)
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Undecodable(type(exc).__name__)

    return parse


class Guarded(Protocol):
    """What the handlers are built from: a guard and the unary use cases (``servicer.py``)."""

    def guard(
        self, rpc: str, context: grpc.aio.ServicerContext[Any, Any], work: Callable[[Caller], Awaitable[Any]]
    ) -> Awaitable[Any]: ...

    def unary_calls(self) -> dict[str, Callable[[Any, Caller], Awaitable[Message]]]: ...


def _unary(
    name: str, guarded: Guarded, call: Callable[[Any, Caller], Awaitable[Message]]
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
    async def handle(request: Message | Undecodable, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        if isinstance(request, Undecodable):
            await context.abort_with_status(to_status(request.error()))
        result: Message = await guarded.guard(name, context, lambda caller: call(request, caller))
        return result

    return handle


def add_service(servicer: Guarded, server: grpc.aio.Server, limit: Callable[[str], int]) -> None:
    """Register every method of ``kato.v1.KatoService`` on ``server``: each unary use case
    behind the servicer's guard; streams are the servicer's own methods. ``limit``: the bytes
    a request message of a method may have."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    calls = servicer.unary_calls()
    for method in SERVICE.methods:
        parse = _parser(message_factory.GetMessageClass(method.input_type), limit(method.name))
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming and method.server_streaming:
            # ObserveStream's messages are Observe's, field for field (a test holds them so):
            # they are decoded and encoded as those, and the stream shares Observe's code.
            parse, serialize = _parser(svc.ObserveRequest, limit(method.name)), svc.ObserveResponse.SerializeToString
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                getattr(servicer, method.name), request_deserializer=parse, response_serializer=serialize
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(method.name, servicer, calls[method.name]),
                request_deserializer=parse,
                response_serializer=serialize,
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                getattr(servicer, method.name), request_deserializer=parse, response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                getattr(servicer, method.name), request_deserializer=parse, response_serializer=serialize
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))


M = TypeVar("M", bound=Message)


async def decoded(requests: AsyncIterator[M | Undecodable]) -> AsyncIterator[M]:
    """A stream's requests, raising INVALID_ARGUMENT at the first undecodable one."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error()
        yield request
