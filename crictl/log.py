"""Structured logging: one JSON object per line on stderr.

The daemon writes no log file of its own: stderr goes to whatever started it (journald under
systemd). Secrets never belong in a log line; as a second line of defence the formatter
redacts the values of secret-named fields given through `extra=` (at any depth), objects
that carry credentials, and `Basic`/`Bearer` credentials in any text it writes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# Attributes every LogRecord has; anything else came through `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

REDACTED = "[redacted]"
# Field names whose values are secrets: registry credentials (CRI AuthConfig, the config file's
# registry_auths) and a container's environment (kubelet puts secrets there).
SECRET_FIELDS = frozenset(
    {
        "auth",
        "authorization",
        "password",
        "identity_token",
        "identitytoken",
        "registry_token",
        "registrytoken",
        "token",
        "credentials",
        "creds",
        "env",
        "envs",
    }
)
# Attributes that mark an object as holding credentials (crictl.images.registry.Credentials):
# its repr would show them.
_SECRET_ATTRIBUTES = ("password", "identity_token", "registry_token")
_AUTH_HEADER = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9+/=._~-]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`Basic dXNlcjpwYXNz` -> `Basic [redacted]` (and the same for Bearer tokens)."""
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def redact(value: object, depth: int = 0) -> object:
    """A copy of a log field's value with whatever holds a secret replaced."""
    if depth > 8 or value is None or isinstance(value, int | float):
        return value  # a number holds no secret (the spans' figures of every call's line)
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _secret_name(k) else redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, depth + 1) for v in value]
    if any(getattr(value, attr, None) for attr in _SECRET_ATTRIBUTES):
        return REDACTED
    return value


def _secret_name(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in SECRET_FIELDS


# The last second a line was logged in, formatted: every CRI write logs a line, and
# `strftime` held a fifth of the formatting's GIL samples in a py-spy profile
# (docs/performance.md, "The per-call log line"). A tuple, replaced whole: any thread
# reads it.
_second: tuple[int, str] = (-1, "")


def _timestamp(created: float, msecs: float) -> str:
    global _second
    whole = int(created)
    second = _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int(msecs):03d}Z"


# One encoder for every line (`json.dumps` with `default` makes one a line); it keeps no
# state between lines, so any thread may use it.
_ENCODER = json.JSONEncoder(default=lambda v: redact_text(str(v)))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = REDACTED if _secret_name(key) else redact(value)
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return _ENCODER.encode(entry)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every plugin and migration step at INFO; the daemon logs the outcome.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # grpc's asyncio layer logs "Loaded running loop" at DEBUG for every call it makes: at
    # --log-level debug that was two lines in three of the daemon's log.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.INFO)
