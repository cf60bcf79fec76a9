"""The one error vocabulary of crictld.

Every layer raises these (or lets unexpected exceptions through); only the API interceptor
(`crictl.api.interceptor`) turns them into gRPC status codes. Messages name what was wrong, since
they reach kubelet's and crictl's users verbatim.
"""

from __future__ import annotations


class CrictlError(Exception):
    """Base of every error crictld means to report to a client."""


class InvalidArgument(CrictlError):
    """The request is malformed; nothing was changed."""


class NotFound(CrictlError):
    """The named object does not exist."""


class AlreadyExists(CrictlError):
    """An object with the same identity but a different definition exists."""


class FailedPrecondition(CrictlError):
    """The object exists but is not in a state that allows the request."""


class Unavailable(CrictlError):
    """A subsystem (containerd, CNI, a registry) cannot be reached right now; retry later."""


class DeadlineExceeded(CrictlError):
    """The work did not finish within the call's deadline (it may go on in the background)."""


class ResourceExhausted(CrictlError):
    """A bounded resource (e.g. streaming sessions in flight) is full; retry later."""


class Unimplemented(CrictlError):
    """The RPC is not served by this version of crictld."""


class Internal(CrictlError):
    """A bug or an inconsistency that is not the caller's fault."""


class PermissionDenied(CrictlError):
    """Credentials were missing or refused (a registry's 401 or 403)."""
