"""The web page of the registry: search, adapter, base model, compare and composite pages.

Server-rendered HTML (Jinja2 templates and one stylesheet and script, all from this package:
no request leaves the server). ``mount_ui(app)`` adds it to ``hub serve``'s app under
``/ui/``; ``create_ui_app(home)`` is ``hub ui``, the pages alone over a local registry.
"""

from hub.ui.routes import create_ui_app, mount_ui

__all__ = ["create_ui_app", "mount_ui"]
