"""``hub ui``: the web page over the local registry, for one user on this machine."""

from __future__ import annotations

import click

from cli.backends import registry_of


@click.command(name="ui")
@click.option("--port", default=8765, show_default=True, type=int, help="Port on 127.0.0.1.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.pass_context
def ui(ctx: click.Context, port: int, open_browser: bool) -> None:
    """Browse, search, inspect and compare the local registry's adapters in a web browser.

    Serves the same pages as `hub serve` does under /ui/, read-only and without tokens,
    on 127.0.0.1 only (nobody else on the network can reach it). Stop it with Ctrl-C.

    \b
    Example:
        hub ui --open
        hub --home /data/hub ui --port 9000
    """
    import threading
    import webbrowser

    import uvicorn

    from hub.ui import create_ui_app

    _check_port(port)
    home = registry_of(ctx).home
    url = f"http://127.0.0.1:{port}/ui/"
    click.echo(f"Serving {home} on {url} (read-only; Ctrl-C to stop)", err=True)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(
        create_ui_app(home), host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=5
    )


def _check_port(port: int) -> None:
    """Refuse a port that is taken before starting (uvicorn would print a traceback)."""
    import socket

    from schemas.errors import InvalidArgument

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise InvalidArgument(
                f"cannot listen on 127.0.0.1:{port} ({error.strerror}): another program uses"
                " it; pick another --port"
            ) from None
