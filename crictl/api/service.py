"""Binds servicer objects to the CRI services, method by method, from the proto descriptors.

A servicer implements an RPC by defining an async method named after it in snake_case
(`RunPodSandbox` -> `run_pod_sandbox(request, context)`; server-streaming RPCs as async
generators). Every RPC a servicer lacks answers UNIMPLEMENTED with a message naming it, so a
client always gets a precise answer and never a crash or a hang.

Given the daemon's loop, each handler is dispatched as `crictl.api.front` says: marked
`@on_front`, it runs on the server's loop; otherwise on the daemon's.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from crictl import errors
from crictl.api.front import dispatch_stream, dispatch_unary
from crictl.api.interceptor import Context, wrap_stream, wrap_unary
from crictl.api.server import GenericHandler, MethodHandler
from crictl.gen.cri.runtime.v1 import api_pb2

RUNTIME_SERVICE: ServiceDescriptor = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
IMAGE_SERVICE: ServiceDescriptor = api_pb2.DESCRIPTOR.services_by_name["ImageService"]


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _message_class(descriptor: Any) -> Any:
    return getattr(api_pb2, descriptor.name)


def _unimplemented(full_name: str) -> errors.Unimplemented:
    return errors.Unimplemented(f"{full_name} is not implemented by crictld yet")


# RPCs whose servicer hands the same answer object back for as long as nothing changed (the
# unfiltered lists, kept per read-model snapshot; kubelet's relist asks for them every second):
# their bytes are kept with the last answer serialized, so a repeat costs no serialization
# (0.6 ms for 300 containers). Those answers are never modified once returned.
REUSED_ANSWERS = frozenset({"ListContainers", "ListPodSandbox"})


class LastSerialized:
    """A response serializer that keeps the last answer it serialized and its bytes: handed the
    same object again, it returns the same bytes. It holds that answer, so no other object can
    take its identity meanwhile."""

    def __init__(self) -> None:
        self._last: tuple[Any, bytes] = (None, b"")  # one tuple: the pair is replaced whole

    def __call__(self, message: Any) -> bytes:
        last, data = self._last
        if message is not last:
            data = message.SerializeToString()
            self._last = (message, data)
        return data


def _method_handler(
    method: MethodDescriptor,
    servicers: tuple[object, ...],
    daemon: asyncio.AbstractEventLoop | None,
) -> MethodHandler:
    full_name = f"/{method.containing_service.full_name}/{method.name}"
    request_class = _message_class(method.input_type)
    response_class = _message_class(method.output_type)
    name = snake_case(method.name)
    impl = next((getattr(s, name) for s in servicers if hasattr(s, name)), None)
    if method.server_streaming:
        if impl is None or not inspect.isasyncgenfunction(impl):
            if impl is not None:
                raise TypeError(f"{full_name} must be an async generator")

            async def missing_stream(_req: Any, _ctx: Context) -> AsyncIterator[Any]:
                raise _unimplemented(full_name)
                yield  # pragma: no cover  (makes this an async generator)

            impl = missing_stream
        elif daemon is not None:
            impl = dispatch_stream(impl, daemon)
        return MethodHandler(
            request_class.FromString,
            response_class.SerializeToString,
            unary_stream=wrap_stream(full_name, impl),
        )
    if impl is None:

        async def missing(_req: Any, _ctx: Context) -> Any:
            raise _unimplemented(full_name)

        impl = missing
    elif not inspect.iscoroutinefunction(impl):
        raise TypeError(f"{full_name} must be an async method")
    elif daemon is not None:
        impl = dispatch_unary(impl, daemon)
    return MethodHandler(
        request_class.FromString,
        LastSerialized() if method.name in REUSED_ANSWERS else response_class.SerializeToString,
        unary_unary=wrap_unary(full_name, impl),
    )


def generic_handler(
    service: ServiceDescriptor,
    *servicers: object,
    daemon: asyncio.AbstractEventLoop | None = None,
) -> GenericHandler:
    """The handler serving every method of `service` from the first servicer that has it;
    with `daemon`, the server runs on a loop of its own and hands `daemon` what is not marked
    `@on_front` (crictl.api.front). Without it every handler runs on the server's loop.

    A public method that matches no RPC is a typo that would silently leave the RPC
    unimplemented, so it is refused here.
    """
    known = {snake_case(m.name) for m in service.methods}
    for servicer in servicers:
        extra = [
            name
            for name, _ in inspect.getmembers(type(servicer), inspect.isfunction)
            if not name.startswith("_") and name not in known
        ]
        if extra:
            raise TypeError(f"{type(servicer).__name__} has methods that are no RPC: {extra}")
    handlers = {m.name: _method_handler(m, servicers, daemon) for m in service.methods}
    return GenericHandler(service.full_name, handlers)
