"""``hub serve`` and ``hub token``: run the team hub and manage who may use it."""

from __future__ import annotations

import os
from typing import Any

import click

from cli.backends import db_option, db_url, registry_of, store_url
from cli.output import json_option, print_json, print_table


def remote_registry(url: str) -> Any:
    from hub.remote import RemoteRegistry

    return RemoteRegistry(url, token=os.environ.get("HUB_TOKEN"))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--anonymous-read", is_flag=True, help="Let requests without a token read every adapter."
)
@click.option(
    "--base-dir",
    "base_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of base models a pushed adapter may name (ORG/MODEL is looked up under it)"
    " to count the base's parameters. Without one, the server reads no base from its disk.",
)
@click.option(
    "--client-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a client may take to send a request's headers or JSON body, or pause an"
    " upload (else 408 and the connection is closed).",
)
@click.option(
    "--max-anonymous",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests without a valid token handled at once; more are answered 429.",
)
@click.option(
    "--store-downloads",
    type=click.Choice(["redirect", "proxy"]),
    default="redirect",
    show_default=True,
    help="With an object store (--store s3://...): answer downloads with a 302 to a"
    " short-lived presigned URL, or stream the bytes through the server (for a store clients"
    " cannot reach).",
)
@click.option(
    "--presign-expires",
    default=300,
    show_default=True,
    type=click.IntRange(min=1, max=7 * 24 * 3600),
    help="Seconds a presigned download URL stays valid.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes sharing the port. They keep no state of their own (locks,"
    " uploads, signing keys and commits are the catalog's), so any N works, with the SQLite"
    " index in --home or with --db on one host or many.",
)
@db_option
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    anonymous_read: bool,
    base_dirs: tuple[str, ...],
    client_timeout: float,
    max_anonymous: int,
    store_downloads: str,
    presign_expires: int,
    workers: int,
) -> None:
    """Serve the registry over HTTP: the native API and the Hugging Face Hub protocol.

    Clients: `hub push PATH --to http://HOST:PORT`, `hub pull REF --from ...`, and
    HF_ENDPOINT=http://HOST:PORT for huggingface_hub / PeftModel.from_pretrained.
    The OpenAPI schema is at /openapi.json; the web page at /ui/ (log in with a token).
    Idle connections are closed after 5 s.

    \b
    Example:
        hub token create --name ci --write team
        hub serve --host 0.0.0.0 --port 8000 --base-dir /models
        hub serve --db postgresql://hub@db/hub --store s3://team-hub/blobs
        hub serve --db postgresql://hub@db/hub --host 0.0.0.0 --workers 4
    """
    from hub.server.workers import serve as serve_app

    registry = registry_of(ctx)
    home, db, store = registry.home, db_url(ctx), store_url(ctx)
    # Opened once here: a wrong --db or --store, a database that needs `hub db upgrade` or
    # a bucket that does not exist fails now, with one Error: line, not at the first request
    # (nor once per worker).
    where = registry.catalog.location
    registry.store.has("0" * 64)
    blobs = f" (blobs in {registry.store.location})" if store else ""
    registry.close()
    processes = f" ({workers} workers)" if workers > 1 else ""
    click.echo(
        f"Serving {where if db else home}{blobs} on http://{host}:{port}{processes}", err=True
    )
    options = {
        "home": str(home),
        "db": db,
        "store": store,
        "store_downloads": store_downloads,
        "presign_expires": presign_expires,
        "anonymous_read": anonymous_read,
        "base_dirs": list(base_dirs),
        "client_timeout": client_timeout,
        "max_anonymous": max_anonymous,
    }
    serve_app(options, host=host, port=port, workers=workers)


@click.group()
def token() -> None:
    """Create, list and revoke access tokens for `hub serve`.

    \b
    Example:
        hub token create --name ci --write team --read '*'
        hub token ls
        hub token revoke 3f9a1c2b7d4e
    """


_registry = registry_of


@token.command(name="create")
@db_option
@click.option("--name", required=True, help="A label for the token (who or what uses it).")
@click.option("--write", "write", multiple=True, help="Namespace it may push to ('*': all).")
@click.option("--read", "read", multiple=True, help="Namespace it may read ('*': all).")
@click.pass_context
def token_create(
    ctx: click.Context, name: str, write: tuple[str, ...], read: tuple[str, ...]
) -> None:
    """Create a token; it is printed once and stored only as a hash.

    \b
    Example:
        hub token create --name alice --write alice --read team
    """
    from hub.tokens import create_token

    click.echo(create_token(_registry(ctx), name, read=list(read), write=list(write)))


@token.command(name="ls")
@db_option
@json_option
@click.pass_context
def token_ls(ctx: click.Context, as_json: bool) -> None:
    """List tokens (never their secrets).

    \b
    Example:
        hub token ls --json
    """
    from hub.tokens import list_tokens

    tokens = list_tokens(_registry(ctx))
    if as_json:
        print_json([vars(t) for t in tokens])
    else:
        print_table(
            ["ID", "NAME", "READ", "WRITE", "CREATED", "REVOKED"],
            [
                [
                    t.id,
                    t.name,
                    ",".join(t.read) or None,
                    ",".join(t.write) or None,
                    t.created_at,
                    t.revoked_at,
                ]
                for t in tokens
            ],
        )


@token.command(name="revoke")
@db_option
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token by its id (see `hub token ls`).

    \b
    Example:
        hub token revoke 3f9a1c2b7d4e
    """
    from hub.tokens import revoke_token

    revoked = revoke_token(_registry(ctx), token_id)
    click.echo(f"Revoked {revoked.id} ({revoked.name})")
