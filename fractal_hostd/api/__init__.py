"""The HTTPS API of contract §5: app factory and hypercorn server."""

from fractal_hostd.api.app import create_app
from fractal_hostd.api.server import serve_api

__all__ = ["create_app", "serve_api"]
