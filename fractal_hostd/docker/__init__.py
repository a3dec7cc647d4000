"""Docker Engine access: the API client and the container event stream task."""

from fractal_hostd.docker.client import (
    DockerClient,
    DockerError,
    DockerEventStream,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)

__all__ = [
    "DockerClient",
    "DockerError",
    "DockerEventStream",
    "DockerNotFound",
    "DockerTimeout",
    "DockerUnreachable",
]
