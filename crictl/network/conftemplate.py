"""The CNI config written from a template when kubelet sends the node's pod CIDR
(UpdateRuntimeConfig), as containerd's `conf_template` does.

Templates are written as containerd's are (Go text/template), with the subset those use:
`{{.PodCIDR}}` (the first CIDR), and loops over `.PodCIDRRanges` (every CIDR) or `.Routes`
(a default route per address family present) of the form

    {{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$r}}"}]{{end}}

Anything else in `{{ }}` is refused with the action named. The result must be JSON; it is
written to `<conf dir>/10-crictld-net.conflist` through a temporary file and a rename, so a
RunPodSandbox reading the directory sees the old file or the new one, never a part.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from pathlib import Path

from crictl import errors

CONF_NAME = "10-crictld-net.conflist"
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
_RANGE = re.compile(r"range \$(\w+), \$(\w+) := \.(PodCIDRRanges|Routes)")
_IF = re.compile(r"if \$(\w+)")


def parse_cidrs(pod_cidr: str) -> list[str]:
    """kubelet's pod_cidr: one CIDR or several, comma-separated (dual stack)."""
    cidrs = [c.strip() for c in pod_cidr.split(",") if c.strip()]
    if not cidrs:
        raise errors.InvalidArgument("runtime_config.network_config.pod_cidr is empty")
    out = []
    for c in cidrs:
        try:
            out.append(str(ipaddress.ip_network(c, strict=False)))
        except ValueError as e:
            raise errors.InvalidArgument(
                f"runtime_config.network_config.pod_cidr: {c[:60]!r} is not a CIDR ({e})"
            ) from None
    return out


def routes(cidrs: list[str]) -> list[str]:
    versions = {ipaddress.ip_network(c).version for c in cidrs}
    return [r for v, r in ((4, "0.0.0.0/0"), (6, "::/0")) if v in versions]


def _block(text: str, start: int) -> tuple[str, int]:
    """The body from `start` to the `{{end}}` that closes it (nested if/range counted), and
    the index after that `{{end}}`."""
    depth = 1
    for m in _ACTION.finditer(text, start):
        word = m.group(1).strip().split(" ", 1)[0]
        if word in ("if", "range"):
            depth += 1
        elif word == "end":
            depth -= 1
            if depth == 0:
                return text[start : m.start()], m.end()
    raise errors.FailedPrecondition("CNI config template: a {{range}} or {{if}} has no {{end}}")


def _render(text: str, values: dict[str, object], variables: dict[str, object]) -> str:
    out: list[str] = []
    pos = 0
    while (m := _ACTION.search(text, pos)) is not None:
        out.append(text[pos : m.start()])
        action = m.group(1).strip()
        pos = m.end()
        if action == ".PodCIDR":
            out.append(str(values["PodCIDR"]))
        elif action.startswith("$") and action[1:] in variables:
            out.append(str(variables[action[1:]]))
        elif (r := _RANGE.fullmatch(action)) is not None:
            body, pos = _block(text, pos)
            items = values[r.group(3)]
            assert isinstance(items, list)
            for i, item in enumerate(items):
                out.append(_render(body, values, {**variables, r.group(1): i, r.group(2): item}))
        elif (c := _IF.fullmatch(action)) is not None and c.group(1) in variables:
            body, pos = _block(text, pos)
            if variables[c.group(1)]:
                out.append(_render(body, values, variables))
        else:
            raise errors.FailedPrecondition(
                f"CNI config template: unsupported action {{{{{action[:60]}}}}}"
            )
    out.append(text[pos:])
    return "".join(out)


def render(template: str, cidrs: list[str]) -> str:
    values: dict[str, object] = {
        "PodCIDR": cidrs[0],
        "PodCIDRRanges": cidrs,
        "Routes": routes(cidrs),
    }
    text = _render(template, values, {})
    try:
        json.loads(text)
    except ValueError as e:
        raise errors.FailedPrecondition(
            f"CNI config template: the result is not JSON: {e}"
        ) from None
    return text


def write(conf_dir: Path, template_path: Path, cidrs: list[str]) -> Path:
    """Renders the template for `cidrs` and replaces the conf dir's file with it at once."""
    try:
        template = template_path.read_text()
    except OSError as e:
        raise errors.FailedPrecondition(f"CNI config template {template_path}: {e}") from e
    text = render(template, cidrs)
    target = conf_dir / CONF_NAME
    fd, tmp = tempfile.mkstemp(prefix=".crictld-net-", dir=conf_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
