"""The coordinator's HTTP API: :func:`create_app` builds it from explicit settings."""

from aitbc.api.app import create_app

__all__ = ["create_app"]
