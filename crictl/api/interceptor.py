"""The one mapping from crictld's errors to gRPC status codes, and the per-call log line.

Every CRI method handler is wrapped here: a CrictlError becomes its status code with its message,
any other exception becomes INTERNAL (and is logged with its traceback), and each call logs one
structured line with its method, status code and duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import grpc
import grpc.aio

from crictl import errors, metrics, trace

log = logging.getLogger("crictl.api.calls")

STATUS_CODES: Mapping[type[errors.CrictlError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
UnaryHandler = Callable[[Any, Context], Awaitable[Any]]
StreamHandler = Callable[[Any, Context], AsyncIterator[Any]]


def status_code(error: errors.CrictlError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        code = STATUS_CODES.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


async def _fail(method: str, error: BaseException, context: Context) -> grpc.StatusCode:
    if isinstance(error, errors.CrictlError):
        code = status_code(error)
        message = str(error)
    else:
        code = grpc.StatusCode.INTERNAL
        message = f"internal error in {method}: {type(error).__name__}: {error}"
        log.exception("unexpected error", extra={"rpc": method}, exc_info=error)
    context.set_code(code)
    context.set_details(message)
    return code


def _log_call(method: str, code: grpc.StatusCode, started: float, spans: trace.Trace) -> None:
    seconds = time.perf_counter() - started
    extra: dict[str, Any] = {"rpc": method, "code": code.name, "ms": round(seconds * 1000, 3)}
    if spans.spans:
        extra["spans"] = spans.summary()
    if spans.timeline:
        extra["timeline"] = sorted(spans.timeline, key=lambda t: t[1])
    log.info("cri call", extra=extra)
    metrics.CRI_CALLS.labels(method.rsplit("/", 1)[-1], code.name).observe(seconds)


def wrap_unary(method: str, handler: UnaryHandler) -> UnaryHandler:
    async def wrapped(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        spans = trace.Trace()
        token = trace.CURRENT.set(spans)
        try:
            return await handler(request, context)
        except Exception as e:  # every error leaves through the one mapping
            code = await _fail(method, e, context)
            return None
        except asyncio.CancelledError:
            # The client went away or its deadline passed: the call did not answer OK (the
            # work it woke goes on: the queue shields it).
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            trace.CURRENT.reset(token)
            _log_call(method, code, started, spans)

    return wrapped


def wrap_stream(method: str, handler: StreamHandler) -> StreamHandler:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        spans = trace.Trace()
        token = trace.CURRENT.set(spans)
        try:
            async for item in handler(request, context):
                yield item
        except Exception as e:
            code = await _fail(method, e, context)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            trace.CURRENT.reset(token)
            _log_call(method, code, started, spans)

    return wrapped
