"""The one mapping from crictld's errors to gRPC status codes, and the per-call log line.

Every CRI method handler is wrapped here: a CrictlError becomes its status code with its message,
a disk full or over quota (ENOSPC, EDQUOT) RESOURCE_EXHAUSTED, any other exception INTERNAL
(and is logged with its traceback), and each call logs one
structured line with its method, status code, duration and, for a call that failed, the error
message kubelet got: at INFO, except a read that succeeded, at DEBUG (`READS`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from crictl import errors, metrics, trace
from crictl.api import server
from crictl.http2 import StatusCode

log = logging.getLogger("crictl.api.calls")

STATUS_CODES: Mapping[type[errors.CrictlError], StatusCode] = {
    errors.InvalidArgument: StatusCode.INVALID_ARGUMENT,
    errors.NotFound: StatusCode.NOT_FOUND,
    errors.AlreadyExists: StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: StatusCode.PERMISSION_DENIED,
    errors.Unavailable: StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: StatusCode.RESOURCE_EXHAUSTED,
    errors.Unimplemented: StatusCode.UNIMPLEMENTED,
    errors.Internal: StatusCode.INTERNAL,
}

# What kubelet asks all the time and changes nothing: a success is logged at DEBUG (containerd's
# CRI logs these at trace level). kubelet relists every second and reads statuses on each pod
# sync, so at INFO they were most of the log, and writing the line was a tenth of a read's time
# and daemon CPU
# (docs/performance.md, "The per-call log line"). A read that fails is logged at INFO still.
READS = frozenset(
    {
        "Version",
        "Status",
        "RuntimeConfig",
        "PodSandboxStatus",
        "ListPodSandbox",
        "StreamPodSandboxes",
        "ContainerStatus",
        "ListContainers",
        "StreamContainers",
        "ContainerStats",
        "ListContainerStats",
        "StreamContainerStats",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "StreamPodSandboxStats",
        "ListMetricDescriptors",
        "ListPodSandboxMetrics",
        "StreamPodSandboxMetrics",
        "ImageStatus",
        "ListImages",
        "StreamImages",
        "ImageFsInfo",
    }
)

# What the server hands each call (crictl/api/server.py): its status, set by `_fail`.
Context: TypeAlias = server.Context
UnaryHandler = Callable[[Any, Context], Awaitable[Any]]
StreamHandler = Callable[[Any, Context], AsyncIterator[Any]]


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def status_code(error: errors.CrictlError) -> StatusCode:
    for kind in type(error).__mro__:
        code = STATUS_CODES.get(kind)
        if code is not None:
            return code
    return StatusCode.UNKNOWN


async def _fail(method: str, error: BaseException, context: Context) -> tuple[StatusCode, str]:
    if isinstance(error, errors.CrictlError):
        code = status_code(error)
        message = str(error)
    elif isinstance(error, OSError) and error.errno in _NO_SPACE:
        # a file the call's pass writes (a pod's hosts, a container's state): no defect
        code = StatusCode.RESOURCE_EXHAUSTED
        message = f"{method}: {error}"
    else:
        code = StatusCode.INTERNAL
        message = f"internal error in {method}: {type(error).__name__}: {error}"
        log.exception("unexpected error", extra={"rpc": method}, exc_info=error)
    context.set_code(code)
    context.set_details(message)
    return code, message


def _log_call(
    method: str, code: StatusCode, seconds: float, spans: trace.Trace, error: str
) -> None:
    name = method.rsplit("/", 1)[-1]
    metrics.CRI_CALLS.labels(name, code.name).observe(seconds)
    level = logging.DEBUG if code is StatusCode.OK and name in READS else logging.INFO
    if not log.isEnabledFor(level):
        return
    extra: dict[str, Any] = {"rpc": method, "code": code.name, "ms": round(seconds * 1000, 3)}
    if error:
        extra["error"] = error
    if spans.spans:
        extra["spans"] = spans.summary()
    if spans.timeline:
        extra["timeline"] = sorted(spans.timeline, key=lambda t: t[1])
    log.log(level, "cri call", extra=extra)


def _after_answer(
    method: str, code: StatusCode, started: float, spans: trace.Trace, error: str
) -> None:
    """Logs a unary call once its answer has gone to the server: it sends the answer after the
    handler returns, awaiting the send, so the line is made and written on the loop's next turn
    while the answer is on its way, not before it (the duration is taken now)."""
    seconds = time.perf_counter() - started
    asyncio.get_running_loop().call_soon(_log_call, method, code, seconds, spans, error)


def wrap_unary(method: str, handler: UnaryHandler) -> UnaryHandler:
    async def wrapped(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        code, error = StatusCode.OK, ""
        spans = trace.Trace()
        token = trace.CURRENT.set(spans)
        try:
            return await handler(request, context)
        except Exception as e:  # every error leaves through the one mapping
            code, error = await _fail(method, e, context)
            return None
        except asyncio.CancelledError:
            # The client went away or its deadline passed: the call did not answer OK (the
            # work it woke goes on: the queue shields it).
            code = StatusCode.CANCELLED
            raise
        finally:
            trace.CURRENT.reset(token)
            _after_answer(method, code, started, spans, error)

    return wrapped


def wrap_stream(method: str, handler: StreamHandler) -> StreamHandler:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        code, error = StatusCode.OK, ""
        spans = trace.Trace()
        token = trace.CURRENT.set(spans)
        try:
            async for item in handler(request, context):
                yield item
        except Exception as e:
            code, error = await _fail(method, e, context)
        except asyncio.CancelledError:
            code = StatusCode.CANCELLED
            raise
        finally:
            trace.CURRENT.reset(token)
            _log_call(method, code, time.perf_counter() - started, spans, error)

    return wrapped
