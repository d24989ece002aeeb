"""Signed artifact links: HMAC links served by the API on local roots, S3 presigned URLs on S3 roots."""

from __future__ import annotations

import hmac
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import polars as pl
import pytest

from batchrouter.batches.lifecycle import submit
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.config import DeliveryConfig, Settings, StorageConfig, load_settings
from batchrouter.core.storage import Storage
from batchrouter.output import links
from batchrouter.output.links import (
    LinkError,
    LinkExpired,
    LinkNotFound,
    LinkPathRefused,
    LinkSignatureInvalid,
    LinkUnknownArtifact,
    LinkWorkspaceMismatch,
    link_secret,
    resolve_link,
    sign_link,
    signature,
)

NOW = 1_900_000_000
MANIFEST = b"item_id,model,prompt\na,gpt-4o-mini,hello\n"


def write_artifacts(storage: Storage, info: BatchInfo) -> None:
    storage.write_parquet(pl.DataFrame({"item_id": ["a"], "output_text": ["hi"]}), *info.folder("outputs.parquet"))
    storage.write_parquet(
        pl.DataFrame({"item_id": ["a"], "status": ["succeeded"], "reserve_usd_micros": [9], "cost_usd_micros": [4]}),
        *info.folder("receipts.parquet"),
    )
    storage.write_json({"quote_id": "q1"}, *info.folder("quote.json"))


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage(settings.storage)


@pytest.fixture
def batch(storage: Storage) -> BatchInfo:
    info = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    write_artifacts(storage, info)
    return info


Fields = tuple[str, ...]


def fields(url: str) -> Fields:
    """(workspace, batch_id, artifact, expires, sig) as the API would take them from a link."""
    parts = urlsplit(url)
    prefix, workspace, batch_id, artifact = parts.path.rsplit("/", 3)
    assert prefix.endswith("/v1/artifacts")
    query = parse_qs(parts.query)
    return workspace, batch_id, artifact, query["expires"][0], query["sig"][0]


def test_link_round_trip_resolves_to_the_artifact_key(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    url = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=600, now=NOW)
    key = resolve_link(settings, storage, *fields(url), now=NOW + 1)
    assert key == f"batches/{batch.batch_id}/outputs.parquet"
    assert storage.read_bytes(key) == storage.read_bytes(*batch.folder("outputs.parquet"))


def test_link_has_the_documented_shape(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    configured = load_settings(delivery=DeliveryConfig(api_base="https://api.example.com/"))
    url = sign_link(configured, storage, "acme", batch.batch_id, "receipts.parquet", expires_s=600, now=NOW)
    assert url.startswith(f"https://api.example.com/v1/artifacts/acme/{batch.batch_id}/receipts.parquet?")
    _, _, _, expires, sig = fields(url)
    assert int(expires) == NOW + 600
    assert sig == signature(link_secret(configured, storage), "acme", batch.batch_id, "receipts.parquet", NOW + 600)


def test_link_defaults_to_the_api_host_and_port(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    url = sign_link(settings, storage, "acme", batch.batch_id, "quote.json", now=NOW)
    assert url.startswith(f"http://{settings.api.host}:{settings.api.port}/v1/artifacts/")
    assert int(fields(url)[3]) == NOW + settings.delivery.link_expires_s


def test_every_linkable_artifact_round_trips(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    storage.write_json({"batch_id": batch.batch_id}, *batch.folder("summary.json"))
    for artifact in sorted(links.LINKABLE):
        url = sign_link(settings, storage, "acme", batch.batch_id, artifact, expires_s=60, now=NOW)
        assert resolve_link(settings, storage, *fields(url), now=NOW) == f"batches/{batch.batch_id}/{artifact}"


@pytest.mark.parametrize("after", [600, 601, 10**6])
def test_expired_link_is_refused(settings: Settings, storage: Storage, batch: BatchInfo, after: int) -> None:
    url = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=600, now=NOW)
    with pytest.raises(LinkExpired) as caught:
        resolve_link(settings, storage, *fields(url), now=NOW + after)
    assert caught.value.code == "link_expired"


def test_link_without_now_uses_the_clock(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    fresh = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=60)
    assert resolve_link(settings, storage, *fields(fresh)).endswith("outputs.parquet")
    stale = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=60, now=time.time() - 61)
    with pytest.raises(LinkExpired):
        resolve_link(settings, storage, *fields(stale))


def _flip(hex_text: str) -> str:
    return ("1" if hex_text[0] != "1" else "2") + hex_text[1:]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda f: ("acme2", *f[1:]), id="workspace"),
        pytest.param(lambda f: (f[0], "acme-other-0123456789", *f[2:]), id="batch"),
        pytest.param(lambda f: (f[0], f[1], "receipts.parquet", *f[3:]), id="artifact"),
        pytest.param(lambda f: (*f[:3], str(int(f[3]) + 1), f[4]), id="expiry-later"),
        pytest.param(lambda f: (*f[:3], str(int(f[3]) - 1), f[4]), id="expiry-earlier"),
        pytest.param(lambda f: (*f[:4], _flip(f[4])), id="sig"),
        pytest.param(lambda f: (*f[:4], f[4][:-1]), id="sig-truncated"),
        pytest.param(lambda f: (*f[:4], f[4].upper()), id="sig-uppercase"),
        pytest.param(lambda f: (*f[:4], ""), id="sig-empty"),
        pytest.param(lambda f: (*f[:3], "-5", f[4]), id="expiry-negative"),
        pytest.param(lambda f: (*f[:3], f"{f[3]}.0", f[4]), id="expiry-not-integer"),
    ],
)
def test_tampered_link_has_a_bad_signature(
    settings: Settings, storage: Storage, batch: BatchInfo, tamper: Callable[[Fields], Fields]
) -> None:
    url = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=600, now=NOW)
    with pytest.raises(LinkSignatureInvalid) as caught:
        resolve_link(settings, storage, *tamper(fields(url)), now=NOW)
    assert caught.value.code == "bad_signature"


def test_signature_is_compared_in_constant_time(
    settings: Settings, storage: Storage, batch: BatchInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(links.hmac, "compare_digest", spy)
    url = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=600, now=NOW)
    resolve_link(settings, storage, *fields(url), now=NOW)
    assert calls == [(fields(url)[4], fields(url)[4])]


def test_link_validly_signed_for_another_workspace_is_refused(
    settings: Settings, storage: Storage, batch: BatchInfo
) -> None:
    # A server-signed link naming workspace "other" for acme's batch: only a bug could issue it, and it must not work.
    sig = signature(link_secret(settings, storage), "other", batch.batch_id, "outputs.parquet", NOW + 60)
    with pytest.raises(LinkWorkspaceMismatch) as caught:
        resolve_link(settings, storage, "other", batch.batch_id, "outputs.parquet", NOW + 60, sig, now=NOW)
    assert caught.value.code == "cross_workspace"


def test_sign_link_refuses_a_batch_of_another_workspace(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    with pytest.raises(LinkWorkspaceMismatch):
        sign_link(settings, storage, "other", batch.batch_id, "outputs.parquet", expires_s=60)


TRAVERSALS = [
    "../batch.json",
    "outputs.parquet/../x",
    "%2e%2e",
    "%2e%2e%2fbatch.json",
    "%252e%252e",
    "outputs%2Eparquet",
    "..",
    ".",
    "/etc/passwd",
    "/outputs.parquet",
    "outputs.parquet\x00",
    "outputs.parquet\x00.png",
    "..\\batch.json",
    "source/orders.csv",
    "",
]


@pytest.mark.parametrize("artifact", TRAVERSALS)
def test_traversal_in_the_artifact_is_refused_even_when_signed(
    settings: Settings, storage: Storage, batch: BatchInfo, artifact: str
) -> None:
    sig = signature(link_secret(settings, storage), "acme", batch.batch_id, artifact, NOW + 60)
    with pytest.raises(LinkPathRefused) as caught:
        resolve_link(settings, storage, "acme", batch.batch_id, artifact, NOW + 60, sig, now=NOW)
    assert caught.value.code == "path_traversal"
    with pytest.raises(LinkPathRefused):
        sign_link(settings, storage, "acme", batch.batch_id, artifact, expires_s=60)


@pytest.mark.parametrize("batch_id", ["..", "../batches", "x/../../etc", "%2e%2e", "/abs", "b\x00", ".secrets"])
def test_traversal_in_the_batch_id_is_refused(settings: Settings, storage: Storage, batch_id: str) -> None:
    sig = signature(link_secret(settings, storage), "acme", batch_id, "outputs.parquet", NOW + 60)
    with pytest.raises(LinkPathRefused):
        resolve_link(settings, storage, "acme", batch_id, "outputs.parquet", NOW + 60, sig, now=NOW)


@pytest.mark.parametrize("workspace", ["..", "a/b", "%61cme", "acme\x00", "/acme"])
def test_traversal_in_the_workspace_is_refused(
    settings: Settings, storage: Storage, batch: BatchInfo, workspace: str
) -> None:
    sig = signature(link_secret(settings, storage), workspace, batch.batch_id, "outputs.parquet", NOW + 60)
    with pytest.raises(LinkPathRefused):
        resolve_link(settings, storage, workspace, batch.batch_id, "outputs.parquet", NOW + 60, sig, now=NOW)


@pytest.mark.parametrize(
    "artifact",
    ["batch.json", "status.json", "settlement.json", "OUTPUTS.PARQUET", "outputs.parquet ", "ｏutputs.parquet"],
)
def test_unknown_artifact_is_refused_even_when_signed(
    settings: Settings, storage: Storage, batch: BatchInfo, artifact: str
) -> None:
    sig = signature(link_secret(settings, storage), "acme", batch.batch_id, artifact, NOW + 60)
    with pytest.raises(LinkUnknownArtifact) as caught:
        resolve_link(settings, storage, "acme", batch.batch_id, artifact, NOW + 60, sig, now=NOW)
    assert caught.value.code == "unknown_artifact"


def test_missing_artifact_is_not_found(settings: Settings, storage: Storage, batch: BatchInfo) -> None:
    url = sign_link(settings, storage, "acme", batch.batch_id, "summary.json", expires_s=60, now=NOW)
    with pytest.raises(LinkNotFound) as caught:
        resolve_link(settings, storage, *fields(url), now=NOW)
    assert caught.value.http_status == 404


def test_unknown_batch_is_not_found(settings: Settings, storage: Storage) -> None:
    sig = signature(link_secret(settings, storage), "acme", "acme-nope-0123456789", "outputs.parquet", NOW + 60)
    with pytest.raises(LinkNotFound):
        resolve_link(settings, storage, "acme", "acme-nope-0123456789", "outputs.parquet", NOW + 60, sig, now=NOW)


@pytest.mark.parametrize("expires_s", [0, -1, 604_801])
def test_lifetime_outside_one_second_to_seven_days_is_refused(
    settings: Settings, storage: Storage, batch: BatchInfo, expires_s: int
) -> None:
    with pytest.raises(LinkError):
        sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=expires_s)


def test_every_refusal_is_a_link_error_with_a_distinct_code() -> None:
    kinds = [
        LinkExpired,
        LinkSignatureInvalid,
        LinkWorkspaceMismatch,
        LinkPathRefused,
        LinkUnknownArtifact,
        LinkNotFound,
    ]
    assert all(issubclass(kind, LinkError) for kind in kinds)
    assert len({kind.code for kind in kinds}) == len(kinds)


def test_secret_comes_from_the_configured_environment_variable(
    settings: Settings, storage: Storage, batch: BatchInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHROUTER_LINK_SECRET", "production-secret")
    assert link_secret(settings, storage) == b"production-secret"
    url = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=60, now=NOW)
    assert not Path(storage.path(".secrets", "link-secret")).exists()
    monkeypatch.setenv("BATCHROUTER_LINK_SECRET", "rotated-secret")
    with pytest.raises(LinkSignatureInvalid):
        resolve_link(settings, storage, *fields(url), now=NOW)


def test_secret_variable_name_is_configurable(
    storage: Storage, batch: BatchInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_LINK_KEY", "from-my-variable")
    configured = load_settings(delivery=DeliveryConfig(link_secret_env="MY_LINK_KEY"))
    assert link_secret(configured, storage) == b"from-my-variable"


def test_development_secret_is_created_once_and_kept_private(
    settings: Settings, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCHROUTER_LINK_SECRET", raising=False)
    first = link_secret(settings, storage)
    path = Path(storage.path(".secrets", "link-secret"))
    assert path.read_bytes() == first and len(first) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert link_secret(settings, Storage(settings.storage)) == first
    assert [p.name for p in path.parent.iterdir()] == ["link-secret"]  # no temporary file left behind


def test_links_survive_a_new_process_reading_the_development_secret(
    settings: Settings, storage: Storage, batch: BatchInfo
) -> None:
    url = sign_link(settings, storage, "acme", batch.batch_id, "outputs.parquet", expires_s=60, now=NOW)
    reopened = Storage(load_settings().storage)
    assert resolve_link(load_settings(), reopened, *fields(url), now=NOW).endswith("outputs.parquet")


# -- S3 roots: presigned URLs -----------------------------------------------------------------------


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.integration
def test_s3_root_gives_a_presigned_url_that_fetches_the_artifact(s3_endpoint: str) -> None:
    config = StorageConfig(root="s3://links-test/prefix", endpoint_url=s3_endpoint, region="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="links-test")
    storage = Storage(config)
    settings = load_settings(storage=config)
    info = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    write_artifacts(storage, info)
    url = sign_link(settings, storage, "acme", info.batch_id, "outputs.parquet", expires_s=300)
    assert url.startswith(f"{s3_endpoint}/links-test/prefix/batches/{info.batch_id}/outputs.parquet?")
    assert "Signature" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == storage.read_bytes(*info.folder("outputs.parquet"))
