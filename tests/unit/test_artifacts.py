"""The artifact store: the local-directory backend and the S3 backend against a real
S3-compatible server (moto_server on a loopback port, started here, stopped by PID)."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Iterator

import boto3
import pytest

from shiftflow.kernel.artifacts import LocalArtifactStore, make_store
from shiftflow.kernel.artifacts.base import ArtifactStore
from shiftflow.kernel.artifacts.s3 import S3ArtifactStore
from shiftflow.kernel.errors import ArtifactNotFound, ArtifactStoreUnavailable, ArtifactTooLarge, ToolError
from shiftflow.kernel.settings import Settings
from tests.tool_servers import MotoServer, free_port

BUCKET = "shiftflow-artifacts"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


def _s3_settings(url: str, **more: str) -> Settings:
    return Settings.from_env({
        "SHIFTFLOW_MODE": "dev", "SHIFTFLOW_ARTIFACT_BACKEND": "s3", "SHIFTFLOW_S3_ENDPOINT_URL": url,
        "SHIFTFLOW_S3_BUCKET": BUCKET, "SHIFTFLOW_S3_PREFIX": "runs", "SHIFTFLOW_S3_ACCESS_KEY_ID": "testing",
        "SHIFTFLOW_S3_SECRET_ACCESS_KEY": "testing", "SHIFTFLOW_ARTIFACT_MAX_BYTES": "4096",
        "SHIFTFLOW_S3_TIMEOUT_SECONDS": "5", **more,
    })


@pytest.fixture
def s3_store(moto: MotoServer) -> S3ArtifactStore:
    """A store on a bucket of its own (the server is shared by the module's tests)."""
    store = make_store(_s3_settings(moto.url, SHIFTFLOW_S3_BUCKET=f"{BUCKET}-{uuid.uuid4().hex[:12]}"))
    assert isinstance(store, S3ArtifactStore)
    store.client.create_bucket(Bucket=store.bucket)
    return store


@pytest.fixture
def local_store(tmp_path) -> LocalArtifactStore:
    store = make_store(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "a"),
                                          "SHIFTFLOW_ARTIFACT_MAX_BYTES": "4096"}))
    assert isinstance(store, LocalArtifactStore)
    return store


@pytest.fixture(params=["local", "s3"])
def store(request) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


def test_put_get_open_delete_round_trip(store: ArtifactStore):
    content = b"hello artifact\n" * 10
    ref = store.put(content, "report 1/../x.txt", "text/plain")
    assert ref.size == len(content) and ref.sha256 == hashlib.sha256(content).hexdigest()
    assert ref.mime == "text/plain" and ref.name == "x.txt"
    assert store.get(ref.location) == content
    with store.open(ref.location) as stream:
        assert stream.read(5) == b"hello"
    with store.local_path(ref.location, ".txt") as path:
        assert path.read_bytes() == content
    streamed = store.put(io.BytesIO(b"\x89PNG..."), "shot.png")
    assert streamed.mime == "image/png" and store.get(streamed.location) == b"\x89PNG..."
    assert store.exists(ref.location)
    store.delete(ref.location)
    store.delete(ref.location)  # already gone: no error
    assert not store.exists(ref.location)
    with pytest.raises(ArtifactNotFound):
        store.get(ref.location)


def test_an_artifact_over_the_limit_is_refused_and_nothing_is_kept(store: ArtifactStore, moto: MotoServer):
    with pytest.raises(ArtifactTooLarge, match="larger than the limit of 4096 bytes"):
        store.put(io.BytesIO(b"x" * 5000), "big.bin")
    if isinstance(store, S3ArtifactStore):
        listed = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
        assert listed == []
    else:
        assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_s3_objects_carry_type_and_checksum(s3_store: S3ArtifactStore, moto: MotoServer):
    ref = s3_store.put(b"{}", "data.json")
    assert ref.location.startswith(f"s3://{s3_store.bucket}/runs/")
    # Read back with a plain boto3 client: what another tool would see in the bucket.
    raw = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    head = raw.head_object(Bucket=s3_store.bucket, Key=ref.location.split("/", 3)[3])
    assert head["ContentType"] == "application/json" and head["Metadata"]["sha256"] == ref.sha256


def test_locations_of_another_store_are_refused(local_store: LocalArtifactStore, s3_store: S3ArtifactStore):
    for location in ("local:../../etc/passwd", "local:/etc/passwd", "s3://x/y", "local:"):
        with pytest.raises(ToolError):
            local_store.get(location)
    with pytest.raises(ToolError, match="does not belong to bucket"):
        s3_store.get("s3://other-bucket/key")
    with pytest.raises(ArtifactNotFound):
        s3_store.get(f"s3://{s3_store.bucket}/runs/missing")


def test_an_unreachable_s3_server_is_transient():
    store = make_store(_s3_settings(f"http://127.0.0.1:{free_port()}", SHIFTFLOW_S3_TIMEOUT_SECONDS="1"))
    with pytest.raises(ArtifactStoreUnavailable):
        store.put(b"x", "x.txt")


def test_stored_lists_every_artifact_with_its_modification_time(store: ArtifactStore):
    before = time.time() - 60
    refs = [store.put(b"x" * n, f"f{n}.bin") for n in (1, 2, 3)]
    listed = dict(store.stored())
    assert set(listed) == {r.location for r in refs}
    assert all(before < t < time.time() + 60 for t in listed.values())
    store.delete(refs[0].location)
    assert set(dict(store.stored())) == {r.location for r in refs[1:]}
