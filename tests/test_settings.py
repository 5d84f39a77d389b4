"""archiver/settings.py: where the store and the catalog live, and how S3 is reached."""
from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from archiver.errors import UsageError
from archiver.settings import S3Options, Settings, home_dir, s3_options
from archiver.urls import normalise_endpoint, normalise_store_url

resolve = Settings.resolve


def Locations(store_url, catalog_path):  # noqa: N802 - the two fields these tests compare
    return (store_url, catalog_path)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return (tmp_path / "home").resolve()


def url_of(p: Path) -> str:
    return "file://" + str(p.resolve())


def test_default_store_and_catalog_under_home(home):
    loc = resolve(env={"ARCHIVER_HOME": str(home)})
    assert _loc(loc) == Locations(url_of(home / "store"), home / "catalog.db")


def test_home_defaults_to_dot_archiver(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home_dir({}) == Path.home() / ".archiver" == tmp_path / ".archiver"
    assert home_dir({"ARCHIVER_HOME": ""}) == tmp_path / ".archiver"
    assert home_dir({"ARCHIVER_HOME": "~/elsewhere"}) == tmp_path / "elsewhere"
    loc = resolve(env={})
    assert loc.store_url == url_of(tmp_path / ".archiver" / "store")
    assert loc.catalog_path == tmp_path / ".archiver" / "catalog.db"


def test_home_from_process_environment(monkeypatch, home):
    monkeypatch.setenv("ARCHIVER_HOME", str(home))
    monkeypatch.delenv("ARCHIVER_STORE", raising=False)
    monkeypatch.delenv("ARCHIVER_CATALOG", raising=False)
    assert _loc(resolve()) == Locations(url_of(home / "store"), home / "catalog.db")


def test_precedence_store_arg_over_env_over_home(home, tmp_path):
    env = {"ARCHIVER_HOME": str(home), "ARCHIVER_STORE": "s3://env-bucket/p"}
    assert resolve(env=env).store_url == "s3://env-bucket/p"
    assert resolve("s3://arg-bucket/q", env=env).store_url == "s3://arg-bucket/q"
    assert resolve(str(tmp_path / "argstore"), env=env).store_url == url_of(tmp_path / "argstore")
    assert resolve(env={"ARCHIVER_HOME": str(home), "ARCHIVER_STORE": ""}).store_url == url_of(home / "store")


def test_local_paths_become_absolute_file_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_store_url("rel/store") == url_of(tmp_path / "rel" / "store")
    assert normalise_store_url("./rel/../rel/store/") == url_of(tmp_path / "rel" / "store")
    assert normalise_store_url(str(tmp_path / "a")) == url_of(tmp_path / "a")
    assert normalise_store_url("file://" + str(tmp_path / "a")) == url_of(tmp_path / "a")
    assert normalise_store_url("file://" + str(tmp_path / "a") + "/") == url_of(tmp_path / "a")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert normalise_store_url("~/s") == url_of(tmp_path / "s")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert normalise_store_url(str(tmp_path / "link")) == url_of(tmp_path / "real")  # one name per store
    for u in (normalise_store_url("x"), normalise_store_url(str(tmp_path))):
        assert u.startswith("file:///") and Path(u[len("file://"):]).is_absolute()


def test_s3_urls_trailing_slash_stripped():
    assert normalise_store_url("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert normalise_store_url("s3://bucket/prefix//") == "s3://bucket/prefix"
    assert normalise_store_url("s3://bucket/") == "s3://bucket"
    assert normalise_store_url("s3://bucket/a/b") == "s3://bucket/a/b"


def test_other_store_gets_its_own_catalog(home):
    env = {"ARCHIVER_HOME": str(home)}
    loc = resolve("s3://bucket/prefix/", env=env)
    digest = blake3.blake3(b"s3://bucket/prefix").hexdigest()[:16]
    assert _loc(loc) == Locations("s3://bucket/prefix", home / "catalogs" / f"{digest}.db")
    # the same store spelled differently shares the catalog; another store does not
    assert resolve("s3://bucket/prefix", env=env).catalog_path == loc.catalog_path
    assert resolve("s3://bucket/other", env=env).catalog_path != loc.catalog_path
    assert resolve("s3://bucket/other", env=env).catalog_path.parent == home / "catalogs"


def test_default_store_spelled_differently_uses_catalog_db(home):
    env = {"ARCHIVER_HOME": str(home)}
    for spelling in (str(home / "store"), str(home / "store") + "/", "file://" + str(home / "store"),
                     str(home / "x" / ".." / "store")):
        assert resolve(spelling, env=env).catalog_path == home / "catalog.db", spelling
        assert resolve(env=dict(env, ARCHIVER_STORE=spelling)).catalog_path == home / "catalog.db"


def test_local_non_default_store_catalog(home, tmp_path):
    loc = resolve(str(tmp_path / "elsewhere"), env={"ARCHIVER_HOME": str(home)})
    digest = blake3.blake3(url_of(tmp_path / "elsewhere").encode()).hexdigest()[:16]
    assert loc.catalog_path == home / "catalogs" / f"{digest}.db"


def test_catalog_override(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    env = {"ARCHIVER_HOME": str(home), "ARCHIVER_CATALOG": str(tmp_path / "env.db")}
    assert resolve(env=env).catalog_path == tmp_path / "env.db"
    assert resolve("s3://b/p", env=env).catalog_path == tmp_path / "env.db"
    assert resolve(catalog=tmp_path / "arg.db", env=env).catalog_path == tmp_path / "arg.db"  # arg beats env
    assert resolve(catalog=str(tmp_path / "arg.db"), env=env).catalog_path == tmp_path / "arg.db"
    assert resolve(env=dict(env, ARCHIVER_CATALOG="~/c.db")).catalog_path == tmp_path / "c.db"
    assert resolve(env=dict(env, ARCHIVER_CATALOG="")).catalog_path == home / "catalog.db"


def test_store_path_with_percent_sign_is_not_decoded(tmp_path, monkeypatch):
    """The catalog's name for a local store and the directory opened must agree: a literal
    '%41' in a path stays '%41' (it is percent-encoded in the file:// URL, not decoded)."""
    from archiver.repository import Repository

    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    store = tmp_path / "st%41"
    loc = resolve(str(store), env={"ARCHIVER_HOME": str(tmp_path / "home")})
    assert loc.store_url == "file://" + str(store.resolve()).replace("%", "%25")
    with Repository.open(resolve(str(store)), create=True):
        pass
    assert (store / "store.json").is_file()
    assert not (tmp_path / "stA").exists()
    assert resolve(loc.store_url, env={"ARCHIVER_HOME": "/h"}).store_url == loc.store_url  # idempotent


def _loc(settings: Settings) -> tuple:
    return (settings.store_url, settings.catalog_path)


def test_s3_options_from_environment_once():
    assert s3_options({}) == S3Options()
    opts = s3_options({"ARCHIVER_S3_CHECKSUM": "When_Required", "AWS_MAX_ATTEMPTS": "3"})
    assert opts.checksum_when_required and opts.max_attempts == 3
    # the archiver variable wins over the AWS one
    assert s3_options({"ARCHIVER_S3_MAX_ATTEMPTS": "5", "AWS_MAX_ATTEMPTS": "3"}).max_attempts == 5
    for bad in ("x", "0", "-1"):
        with pytest.raises(UsageError, match="ARCHIVER_S3_MAX_ATTEMPTS"):
            s3_options({"ARCHIVER_S3_MAX_ATTEMPTS": bad})


def test_settings_carry_s3_options_and_explicit_beats_environment(home):
    env = {"ARCHIVER_HOME": str(home), "ARCHIVER_S3_MAX_ATTEMPTS": "2"}
    assert resolve("s3://b/p", env=env).s3.max_attempts == 2
    explicit = S3Options(max_attempts=9)
    assert resolve("s3://b/p", env=env, s3=explicit).s3 is explicit


# -- the S3 endpoint is part of the store's name (issue 14 item 17) ---------------------------------

def test_endpoint_from_options_or_environment_like_boto3(home):
    base = {"ARCHIVER_HOME": str(home)}
    assert resolve("s3://b/p", env=base).endpoint is None
    assert resolve("s3://b/p", env=dict(base, AWS_ENDPOINT_URL="http://minio:9000")).endpoint == "http://minio:9000"
    both = dict(base, AWS_ENDPOINT_URL="http://global:9000", AWS_ENDPOINT_URL_S3="http://s3only:9000")
    assert resolve("s3://b/p", env=both).endpoint == "http://s3only:9000"  # the service variable wins
    assert resolve("s3://b/p", env=both).s3.endpoint_url == "http://s3only:9000"  # and is what boto3 is given
    assert resolve("s3://b/p", env=dict(both, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS="true")).endpoint is None
    explicit = S3Options(endpoint_url="http://explicit:9000")
    assert resolve("s3://b/p", env=both, s3=explicit).endpoint == "http://explicit:9000"
    # explicit options without an endpoint: boto3 still reads the environment, so do we
    assert resolve("s3://b/p", env=both, s3=S3Options()).endpoint == "http://s3only:9000"
    # not an S3 store: no endpoint, whatever the environment says
    assert resolve(env=dict(base, AWS_ENDPOINT_URL="http://minio:9000")).endpoint is None


@pytest.mark.parametrize("spelling", ["http://MinIO.local:9000", "http://minio.local:9000/", "HTTP://minio.local:9000",
                                      "  http://minio.local:9000//  "])
def test_endpoint_spellings_name_one_service(home, spelling):
    env = {"ARCHIVER_HOME": str(home), "AWS_ENDPOINT_URL": spelling}
    assert resolve("s3://b/p", env=env).endpoint == "http://minio.local:9000"


def test_endpoint_normalisation():
    assert normalise_endpoint("https://h.example:443/") == "https://h.example"
    assert normalise_endpoint("http://h.example:80") == "http://h.example"
    assert normalise_endpoint("http://h.example:8080") == "http://h.example:8080"
    assert normalise_endpoint("http://[::1]:9000") == "http://[::1]:9000"
    assert normalise_endpoint("https://h.example/base/") == "https://h.example/base"
    for aws in ("https://s3.amazonaws.com", "https://s3.eu-west-1.amazonaws.com", "https://S3.US-EAST-2.AMAZONAWS.COM/",
                "https://bucket.vpce-1a2b.s3.us-east-1.vpce.amazonaws.com", "https://s3.cn-north-1.amazonaws.com.cn",
                None, "", "  "):
        assert normalise_endpoint(aws) is None, aws


def test_same_bucket_on_two_services_gets_two_catalogs(home):
    env = {"ARCHIVER_HOME": str(home)}
    aws = resolve("s3://bucket/prefix", env=env)
    a = resolve("s3://bucket/prefix", env=dict(env, AWS_ENDPOINT_URL="http://minio-a:9000"))
    b = resolve("s3://bucket/prefix", env=dict(env, AWS_ENDPOINT_URL="http://minio-b:9000"))
    assert len({aws.catalog_path, a.catalog_path, b.catalog_path}) == 3
    assert {p.parent for p in (aws.catalog_path, a.catalog_path, b.catalog_path)} == {home / "catalogs"}
    # AWS (no endpoint, or an AWS endpoint) keeps the catalog it always had: the hash of the URL alone
    digest = blake3.blake3(b"s3://bucket/prefix").hexdigest()[:16]
    assert aws.catalog_path == home / "catalogs" / f"{digest}.db"
    regional = resolve("s3://bucket/prefix", env=dict(env, AWS_ENDPOINT_URL="https://s3.us-west-2.amazonaws.com"))
    assert regional.catalog_path == aws.catalog_path and regional.endpoint is None
    assert resolve("s3://bucket/prefix", env=dict(env, AWS_ENDPOINT_URL="http://MINIO-A:9000/")).catalog_path \
        == a.catalog_path


def test_two_services_with_the_same_bucket_never_share_a_catalog(s3_server_url, tmp_path, monkeypatch):
    """The same moto server under two spellings (127.0.0.1 and localhost) stands for two
    services that both have this bucket: each gets its own default catalog, and a catalog
    named explicitly refuses the other service."""
    from tests.helpers import make_checkpoint, run_cli
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    service_a = os.environ["AWS_ENDPOINT_URL"]
    service_b = service_a.replace("127.0.0.1", "localhost")
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=1, dim=16)
    mid = run_cli("--store", s3_server_url, "archive", str(src), "--name", "m", "--json").json()["id"]
    assert [r["id"] for r in run_cli("--store", s3_server_url, "list", "--json").json()] == [mid]
    catalogs = list((tmp_path / "home" / "catalogs").glob("*.db"))
    assert len(catalogs) == 1

    monkeypatch.setenv("AWS_ENDPOINT_URL", service_b)
    assert run_cli("--store", s3_server_url, "list", "--json").json() == []  # another service: its own catalog
    assert len(list((tmp_path / "home" / "catalogs").glob("*.db"))) == 1  # (a read creates none)
    r = run_cli("--store", s3_server_url, "--catalog", str(catalogs[0]), "list")
    assert r.code == 2 and "belongs to store" in r.err and service_a in r.err and "--catalog" in r.err
    assert r.err.count("\n") == 1
    r = run_cli("--store", s3_server_url, "--catalog", str(catalogs[0]), "archive", str(src), "--name", "m")
    assert r.code == 2 and "belongs to store" in r.err

    monkeypatch.setenv("AWS_ENDPOINT_URL", service_a)
    assert [r["id"] for r in run_cli("--store", s3_server_url, "list", "--json").json()] == [mid]
