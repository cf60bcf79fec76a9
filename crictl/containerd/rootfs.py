"""Reading a few files (the image's /etc/passwd and /etc/group) out of a snapshot's mounts
without mounting it: a bind mount is a directory, an overlay is its upperdir then lowerdirs."""

from __future__ import annotations

from pathlib import Path

from crictl.gen.containerd.api.types import mount_pb2


def layer_dirs(mounts: list[mount_pb2.Mount]) -> list[Path]:
    """The directories to look in, topmost first."""
    dirs: list[Path] = []
    for m in mounts:
        if m.type == "bind":
            dirs.append(Path(m.source))
        elif m.type == "overlay":
            opts = dict(o.split("=", 1) for o in m.options if "=" in o)
            if "upperdir" in opts:
                dirs.append(Path(opts["upperdir"]))
            dirs += [Path(d) for d in opts.get("lowerdir", "").split(":") if d]
    return dirs


def read_text(mounts: list[mount_pb2.Mount], path: str) -> str:
    """The file's text from the topmost layer that has it; "" if none has it."""
    rel = path.lstrip("/")
    for d in layer_dirs(mounts):
        candidate = d / rel
        if candidate.is_file():
            return candidate.read_text(errors="replace")
    return ""
