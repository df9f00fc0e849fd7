"""Running the app: ``hub serve`` in one process, or ``--workers N`` uvicorn worker processes
behind one listening socket.

Workers are started fresh (uvicorn spawns them) and import the app by name, so what
``create_app`` is given travels in the environment: ``HUB_SERVE_OPTIONS``, the keyword
arguments as JSON, set by the parent for its children. A worker keeps nothing another one
would need (the store lock, upload records, the LFS signing key and every commit are the
catalog's), so N workers on one host, or on M hosts behind a load balancer, behave as one.

Example:
    >>> serve({"home": "/srv/hub", "db": None}, host="127.0.0.1", port=8000, workers=4)
    ... # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

OPTIONS_ENV = "HUB_SERVE_OPTIONS"
"""The variable holding ``create_app``'s keyword arguments (JSON) for worker processes."""
APP_FACTORY = f"{__name__}:app_from_environment"
PROTOCOL = f"{__name__}:Protocol"
"""uvicorn imports the HTTP protocol class by name in each worker (``__getattr__`` below)."""


def serve(options: dict[str, Any], *, host: str, port: int, workers: int = 1) -> None:
    """Serve ``create_app(**options)`` on ``host:port`` until stopped; with ``workers`` over
    1, in that many processes sharing the socket (uvicorn replaces one that dies).

    ``options`` must be JSON values (paths as strings) for the workers to read them back;
    ``client_timeout`` is also the deadline of a request's headers
    (``hub.server.protocol``)."""
    import uvicorn

    from hub.server.app import create_app
    from hub.server.protocol import deadline_protocol

    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "timeout_keep_alive": 5,
    }
    if workers == 1:
        timeout = float(options.get("client_timeout") or 30.0)
        uvicorn.run(create_app(**options), http=deadline_protocol(timeout), **common)
        return
    os.environ[OPTIONS_ENV] = json.dumps(options)
    uvicorn.run(APP_FACTORY, factory=True, workers=workers, http=PROTOCOL, **common)


def worker_options() -> dict[str, Any]:
    """``create_app``'s keyword arguments, as the parent process set them."""
    text = os.environ.get(OPTIONS_ENV)
    if not text:
        raise RuntimeError(f"{OPTIONS_ENV} is not set: start workers with `hub serve --workers N`")
    options: dict[str, Any] = json.loads(text)
    return options


def app_from_environment() -> FastAPI:
    """The app of one worker process (uvicorn's ``factory``)."""
    from hub.server.app import create_app

    return create_app(**worker_options())


def __getattr__(name: str) -> Any:
    # ``Protocol``: built when a worker asks, from the options then in its environment
    # (a class made by ``deadline_protocol`` cannot be sent to a worker by pickling).
    if name == "Protocol":
        from hub.server.protocol import deadline_protocol

        return deadline_protocol(float(worker_options().get("client_timeout") or 30.0))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
