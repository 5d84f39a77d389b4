"""Per-store settings in an s3:// URL (?profile=&endpoint=&region=): parsed strictly, part
of the store's identity where they name a different store, and really used to reach it."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import boto3
import pytest

from archiver import layout
from archiver.errors import UsageError
from archiver.settings import S3Options, Settings
from archiver.urls import full_store_url, normalise_store_url, parse_s3, s3_url_options
from tests.conftest import start_moto_server, stop_server
from tests.helpers import make_checkpoint, run_cli


def test_query_is_parsed_into_s3_options() -> None:
    url = "s3://bkt/some/prefix?profile=dr&endpoint=http://127.0.0.1:9000&region=eu-west-1"
    assert parse_s3(url) == ("bkt", "some/prefix")
    assert s3_url_options(url) == {"profile": "dr", "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"}
    assert normalise_store_url(url) == "s3://bkt/some/prefix"
    assert s3_url_options("s3://bkt/p") == {} and s3_url_options("/some/path") == {}
    assert parse_s3("s3://bkt?region=x") == ("bkt", "")


@pytest.mark.parametrize("url, word", [
    ("s3://b/p?colour=red", "colour"),
    ("s3://b/p?profile=", "empty"),
    ("s3://b/p?profile", "empty"),
    ("s3://b/p?region=a&region=b", "twice"),
    ("s3://b/p?endpoint=ftp://x", "http"),
    ("s3://b/p?endpoint=localhost:9000", "http"),
])
def test_bad_queries_are_usage_errors(url: str, word: str) -> None:
    with pytest.raises(UsageError, match=word):
        s3_url_options(url)
    with pytest.raises(UsageError):
        normalise_store_url(url)


def test_full_store_url_keeps_settings_in_a_fixed_order() -> None:
    a = full_store_url("s3://b/p/?region=r&profile=dr&endpoint=http://h:9")
    assert a == "s3://b/p?endpoint=http://h:9&profile=dr&region=r"
    assert full_store_url(a) == a
    assert full_store_url("s3://b/p/") == "s3://b/p"


def test_url_settings_override_the_defaults_and_name_the_store(tmp_path: Path) -> None:
    env = {"ARCHIVER_HOME": str(tmp_path), "AWS_ENDPOINT_URL": "http://default:1"}
    plain = Settings.resolve("s3://b/p", env=env)
    assert plain.endpoint == "http://default:1" and plain.s3.endpoint_url == "http://default:1"
    a = Settings.resolve("s3://b/p?endpoint=http://127.0.0.1:9001&profile=dr&region=eu-west-1", env=env)
    b = Settings.resolve("s3://b/p?endpoint=http://127.0.0.1:9002", env=env)
    assert a.store_url == b.store_url == "s3://b/p"
    assert (a.s3.endpoint_url, a.s3.profile, a.s3.region) == ("http://127.0.0.1:9001", "dr", "eu-west-1")
    assert a.endpoint == "http://127.0.0.1:9001" and b.endpoint == "http://127.0.0.1:9002"
    assert len({plain.catalog_path, a.catalog_path, b.catalog_path}) == 3  # three stores, three catalogs
    # a copy starts from the defaults, not from this store's own URL settings
    copy = a.for_copy("s3://c/q")
    assert copy.s3.endpoint_url == "http://default:1" and copy.s3.profile is None
    explicit = Settings.resolve("s3://b/p?region=x", s3=S3Options(max_attempts=3), env=env)
    assert explicit.s3.max_attempts == 3 and explicit.s3.region == "x"


@pytest.fixture
def second_moto() -> Iterator[str]:
    """A second, independent moto server (its own process, so its own buckets), on a socket
    bound here and handed down (conftest.start_moto_server): no port chosen, then bound later."""
    proc, url = start_moto_server()
    try:
        yield url
    finally:
        stop_server(proc)


def test_two_servers_each_url_reaches_its_own(moto_server: str, second_moto: str, aws_env, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bucket name on two servers with different keys: each URL's endpoint and
    profile is what is used, so each bucket holds exactly what was written to it."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    creds = tmp_path / "credentials"
    creds.write_text("[primary]\naws_access_key_id = AKIAPRIMARY\naws_secret_access_key = one\n"
                     "[dr]\naws_access_key_id = AKIADISASTER\naws_secret_access_key = two\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")  # no default credentials: only the URL's profile works
    clients = {}
    for name, endpoint in (("primary", moto_server), ("dr", second_moto)):
        clients[name] = boto3.session.Session(profile_name=name).client("s3", endpoint_url=endpoint,
                                                                        region_name="us-east-1")
        clients[name].create_bucket(Bucket="same-name")
    src = f"s3://same-name/arch?profile=primary&endpoint={moto_server}"
    dst = f"s3://same-name/arch?endpoint={second_moto}&profile=dr&region=us-east-1"
    ck = make_checkpoint(tmp_path / "ck", layers=2, dim=64)
    first = run_cli("--store", src, "archive", str(ck), "--name", "m")
    assert first.code == 0, first.err
    mid = first.out.strip()

    def keys(name: str, prefix: str) -> list[str]:
        resp = clients[name].list_objects_v2(Bucket="same-name", Prefix="arch/" + prefix)
        return [o["Key"] for o in resp.get("Contents", [])]

    assert keys("primary", layout.MANIFESTS) == ["arch/" + layout.manifest(mid)]
    assert keys("dr", "") == []  # nothing leaked onto the other server
    r = run_cli("--store", src, "replicate", "--all", "--to", dst, "--json")
    assert r.code == 0, r.err
    assert keys("dr", layout.MANIFESTS) == ["arch/" + layout.manifest(mid)]
    assert sorted(keys("dr", layout.CHUNKS)) == sorted(keys("primary", layout.CHUNKS))
    assert run_cli("--store", dst, "verify", "--all", "--deep").code == 0
    # same bucket and prefix, other endpoint: another store with its own catalog
    assert Settings.resolve(src).catalog_path != Settings.resolve(dst).catalog_path

    nocreds = run_cli("--store", f"s3://same-name/arch?endpoint={moto_server}", "list", "--json")
    assert nocreds.code != 0 and "credentials" in nocreds.json()["error"]
    wrong = run_cli("--store", f"s3://same-name/arch?endpoint={moto_server}&profile=nope", "list", "--json")
    assert wrong.code != 0 and "nope" in wrong.json()["error"]
