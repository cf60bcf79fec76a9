"""The image workload: pull, inspect, list and remove fixture images on every runtime.

Per round, for each image: PullImage (the image was removed before, so it really pulls),
PullImage again (the node has it: kubelet's `imagePullPolicy: Always`), ImageStatus by tag,
ImageStatus by id (the id PullImage answered), ListImages, RemoveImage.

    .venv/bin/python -m benchmarks.images                      # brings everything up itself
    .venv/bin/python -m benchmarks.images --rounds 10 --images busybox,nginx --json out.json
    .venv/bin/python -m benchmarks.images --registry 127.0.0.1:5000 \\
        --endpoint crictld=unix:///run/crictld/crictld.sock --endpoint containerd=unix:///...

Without `--endpoint` it starts, and tears down at the end: a local registry with the fixture
images (tests.rig.registry / tests.rig.images), containerd's CRI plugin as the reference
(tests.rig.reference) and a crictld daemon owning a private managed containerd
(tests.rig.daemon), each on its own CNI network (all in benchmarks.setup). With `--endpoint` it
only runs against those (and starts a registry unless `--registry` names one they can pull from).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cri_bench import (
    BenchError,
    Result,
    Runtime,
    format_comparison,
    format_cpu,
    format_table,
    parse_endpoint,
    run_workload,
    write_json,
)
from benchmarks.sandboxes import LogLine, breakdown, format_breakdown, read_call_log
from benchmarks.setup import local_node, runtime_logs
from benchmarks.setup import local_registry as local_registry  # cri_bench imports it from here
from benchmarks.setup import local_runtimes as local_runtimes
from crictl.gen.cri.runtime.v1 import api_pb2

PULL_TIMEOUT = 300.0

# Short names for the fixture images (repository:tag in the registry, see tests/rig/images.py).
IMAGES: dict[str, str] = {
    "busybox": "e2e-test-images/busybox:1.29-2",
    "pause": "pause:3.10",
    "test-image-1": "k8s-staging-cri-tools/test-image-1:latest",
    "test-image-2": "k8s-staging-cri-tools/test-image-2:latest",
    "test-image-3": "k8s-staging-cri-tools/test-image-3:latest",
    "nginx": "e2e-test-images/nginx:1.14-2",
    "httpd": "e2e-test-images/httpd:2.4.39-4",
    "test-image-tag": "k8s-staging-cri-tools/test-image-tag:test",
}
DEFAULT_IMAGES = ("busybox", "pause", "test-image-1", "test-image-2", "test-image-3", "nginx")


@dataclass(frozen=True)
class BenchImage:
    label: str  # a short name, or the repository:tag given
    path: str  # repository:tag inside the registry

    def reference(self, registry: str) -> str:
        return f"{registry}/{self.path}"


def parse_images(text: str | None) -> list[BenchImage]:
    """Comma-separated short names (see IMAGES) or repository:tag paths in the registry."""
    names = [n.strip() for n in (text or ",".join(DEFAULT_IMAGES)).split(",") if n.strip()]
    if not names:
        raise BenchError("no images given")
    images = []
    for name in names:
        if name in IMAGES:
            images.append(BenchImage(name, IMAGES[name]))
        elif "/" in name or ":" in name:
            tagged = ":" in name.rsplit("/", 1)[-1]
            images.append(BenchImage(name, name if tagged else f"{name}:latest"))
        else:
            raise BenchError(f"unknown image {name!r}: one of {', '.join(IMAGES)} or REPO:TAG")
    return images


class ImageWorkload:
    """Pull, pull again, status by tag and by id, list, remove: each image, every round."""

    name = "images"

    def __init__(self, registry: str, images: Sequence[BenchImage], by_image: bool = False) -> None:
        self.registry = registry
        self.images = list(images)
        self.by_image = by_image

    def describe(self) -> str:
        labels = ", ".join(i.label for i in self.images)
        return f"{len(self.images)} images from {self.registry} ({labels})"

    def _op(self, op: str, image: BenchImage) -> str:
        return f"{op} [{image.label}]" if self.by_image else op

    def _remove_all(self, rt: Runtime) -> None:
        for image in self.images:
            spec = api_pb2.ImageSpec(image=image.reference(self.registry))
            rt.quietly(rt.image.RemoveImage, api_pb2.RemoveImageRequest(image=spec))

    def setup(self, rt: Runtime) -> None:
        self._remove_all(rt)  # so the first PullImage really pulls

    def teardown(self, rt: Runtime) -> None:
        self._remove_all(rt)

    def run_round(self, rt: Runtime, index: int) -> None:
        for image in self.images:
            ref = image.reference(self.registry)
            spec = api_pb2.ImageSpec(image=ref)
            # The image was removed before, so the first pull really pulls; the second is
            # kubelet's `imagePullPolicy: Always` (every container start pulls an image the node
            # has, so only the registry's manifest is new).
            pulled, _ = (
                rt.call(
                    self._op(op, image),
                    rt.image.PullImage,
                    api_pb2.PullImageRequest(image=spec),
                    timeout=PULL_TIMEOUT,
                    label=image.label,
                )
                for op in ("PullImage", "PullImage(present)")
            )
            rt.call(
                self._op("ImageStatus(tag)", image),
                rt.image.ImageStatus,
                api_pb2.ImageStatusRequest(image=spec),
                label=image.label,
            )
            if pulled is not None and pulled.image_ref:
                rt.call(
                    self._op("ImageStatus(id)", image),
                    rt.image.ImageStatus,
                    api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=pulled.image_ref)),
                    label=image.label,
                )
            rt.call(
                self._op("ListImages", image),
                rt.image.ListImages,
                api_pb2.ListImagesRequest(),
                label=image.label,
            )
            rt.call(
                self._op("RemoveImage", image),
                rt.image.RemoveImage,
                api_pb2.RemoveImageRequest(image=spec),
                label=image.label,
            )


# ------------------------------------------------------------------------------------------
# CLI


def run(
    registry: str,
    runtimes: Sequence[Runtime],
    images: Sequence[BenchImage],
    rounds: int,
    by_image: bool = False,
) -> Result:
    workload = ImageWorkload(registry, images, by_image=by_image)
    return run_workload(
        workload, runtimes, rounds, progress=lambda s: print(s, file=sys.stderr, flush=True)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.images",
        description="Image RPC latency, crictld next to containerd's CRI plugin.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all images (5)")
    parser.add_argument(
        "--images",
        help=f"comma-separated: {', '.join(IMAGES)} or REPO:TAG "
        f"(default {','.join(DEFAULT_IMAGES)})",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        type=parse_endpoint,
        default=[],
        metavar="NAME=ADDR",
        help="benchmark this running CRI endpoint instead of starting crictld and containerd "
        "(repeatable)",
    )
    parser.add_argument(
        "--registry", help="HOST:PORT of a registry with the fixture images (default: start one)"
    )
    parser.add_argument("--workdir", type=Path, help="image build dir (default .cache/rig-images)")
    parser.add_argument(
        "--by-image", action="store_true", help="one table row per operation and image"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    parser.add_argument("--keep-logs", action="store_true", help="keep the runtimes' logs")
    args = parser.parse_args(argv)

    lines: list[LogLine] = []
    try:
        images = parse_images(args.images)
        with (
            runtime_logs(args.keep_logs, "images") as (logs_dir, _failed),
            local_registry(args.registry, args.workdir) as registry,
        ):
            if args.endpoint:
                result = run(registry, args.endpoint, images, args.rounds, args.by_image)
            else:
                with local_node(registry, logs_dir) as node:
                    result = run(registry, node.runtimes, images, args.rounds, args.by_image)
                    log = node.target("crictld").crictld_log
                    lines = read_call_log(log) if log is not None else []
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    print()
    print(format_comparison(result))
    print()
    print(format_cpu(result))
    crictld = next((rt for rt in result.runtimes if rt.name == "crictld"), None)
    if lines and crictld is not None:
        rows, unmatched = breakdown(crictld.trace, lines)
        print()
        print(format_breakdown("crictld", rows, unmatched))
    if args.json:
        write_json([result], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
