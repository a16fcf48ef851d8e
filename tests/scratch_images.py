"""Building tiny images on an engine for tests, from no base image at all."""

from __future__ import annotations

import io
import tarfile

import docker


def build_scratch_image(client: docker.DockerClient, tag: str, image_labels: dict[str, str]) -> str:
    """Build a one-file image ``FROM scratch`` tagged ``tag`` and return its id.

    The file contains the tag, so two tags never share an image id.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY stamp /stamp\n"), ("stamp", tag.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)

    image, _ = client.images.build(fileobj=buffer, custom_context=True, tag=tag, labels=image_labels, rm=True)
    return image.id
