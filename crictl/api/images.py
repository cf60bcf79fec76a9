"""ImageService: PullImage, ImageStatus, ListImages, RemoveImage, ImageFsInfo.

Status and List are answered from the image cache (SQLite, read through its in-memory index);
pulls and removals go through the
reconciler's image manager, which talks to the registry and containerd.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from crictl.api.chunks import chunks
from crictl.api.front import needs_daemon, on_front
from crictl.api.interceptor import Context
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.images import ImageManager, ImageView, credentials_from


class Images:
    def __init__(self, images: ImageManager) -> None:
        self.images = images

    def _to_cri(self, image: ImageView) -> api_pb2.Image:
        out = api_pb2.Image(
            id=image.id,
            repo_tags=image.repo_tags,
            repo_digests=image.repo_digests,
            size=image.size,
            username=image.username,
            pinned=image.pinned,
        )
        if image.uid is not None:
            out.uid.CopyFrom(api_pb2.Int64Value(value=image.uid))
        return out

    async def pull_image(
        self, request: api_pb2.PullImageRequest, context: Context
    ) -> api_pb2.PullImageResponse:
        auth = request.auth if request.HasField("auth") else None
        creds = credentials_from(auth) if auth is not None else None
        image_id = await self.images.pull(request.image.image, creds)
        return api_pb2.PullImageResponse(image_ref=image_id)

    @on_front()
    async def image_status(
        self, request: api_pb2.ImageStatusRequest, context: Context
    ) -> api_pb2.ImageStatusResponse:
        image = self.images.status(request.image.image)
        if image is None:
            return api_pb2.ImageStatusResponse()  # the CRI's "not present": no error
        response = api_pb2.ImageStatusResponse(image=self._to_cri(image))
        if request.verbose:
            response.info["info"] = json.dumps(
                {
                    "imageSpec": json.loads(image.config),
                    "manifestDigest": image.manifest_digest,
                    "chainID": image.chain_id,
                }
            )
        return response

    @on_front()
    async def list_images(
        self, request: api_pb2.ListImagesRequest, context: Context
    ) -> api_pb2.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            image = self.images.status(wanted)
            found = [image] if image is not None else []
        else:
            found = self.images.list()
        return api_pb2.ListImagesResponse(images=[self._to_cri(i) for i in found])

    @on_front()
    async def stream_images(
        self, request: api_pb2.StreamImagesRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamImagesResponse]:
        listed = await self.list_images(api_pb2.ListImagesRequest(filter=request.filter), context)
        for run in chunks(listed.images):
            yield api_pb2.StreamImagesResponse(images=run)

    async def remove_image(
        self, request: api_pb2.RemoveImageRequest, context: Context
    ) -> api_pb2.RemoveImageResponse:
        await self.images.remove(request.image.image)
        return api_pb2.RemoveImageResponse()

    @on_front(falls_back=True)
    async def image_fs_info(
        self, request: api_pb2.ImageFsInfoRequest, context: Context
    ) -> api_pb2.ImageFsInfoResponse:
        usage = self.images.measured_fs_usage()
        if usage is None:  # none since the last pull or removal: measured on the daemon's loop
            needs_daemon()
            usage = await self.images.fs_usage()
        return api_pb2.ImageFsInfoResponse(
            image_filesystems=[
                api_pb2.FilesystemUsage(
                    timestamp=usage.timestamp,
                    fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
                    used_bytes=api_pb2.UInt64Value(value=usage.used_bytes),
                    inodes_used=api_pb2.UInt64Value(value=usage.inodes_used),
                )
            ]
        )
