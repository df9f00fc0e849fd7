"""The team hub: the registry over HTTP (FastAPI). ``create_app(home)`` builds the app."""

from hub.server.app import create_app

__all__ = ["create_app"]
