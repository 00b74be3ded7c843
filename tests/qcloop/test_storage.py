"""Object store: both backends behave the same; raw keys are content addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcloop.contracts import RawImageSidecar
from qcloop.download import download_url
from qcloop.errors import IntegrityError, ObjectNotFound, StoreError, StoreUnavailable
from qcloop.settings import StoreSettings
from qcloop.storage import (
    LocalStore,
    S3Store,
    list_raw_images,
    put_raw_image,
    raw_key,
    sha256_bytes,
)


def _exercise(store: LocalStore | S3Store) -> None:
    store.put_bytes("a/b.txt", b"one")
    store.put_bytes("a/c.txt", b"two")
    assert store.get_bytes("a/b.txt") == b"one"
    assert store.exists("a/c.txt") and not store.exists("a/zzz")
    assert list(store.list("a/")) == ["a/b.txt", "a/c.txt"]
    with pytest.raises(ObjectNotFound):
        store.get_bytes("missing/key")
    with pytest.raises(StoreError, match="invalid object key"):
        store.put_bytes("../escape", b"x")
    data = b"\xff\xd8fake-jpeg"
    digest = sha256_bytes(data)
    sidecar = RawImageSidecar(
        key=raw_key(digest), sha256=digest, width=4, height=3, source="test", reason="manual"
    )
    assert put_raw_image(store, data, sidecar) == put_raw_image(store, data, sidecar)
    assert [s.sha256 for s in list_raw_images(store)] == [digest]
    assert len([k for k in store.list("raw/")]) == 2  # image + sidecar, once


def test_local_store(tmp_path: Path) -> None:
    _exercise(LocalStore(tmp_path / "store"))


@pytest.mark.integration
def test_s3_store(s3_store_settings: StoreSettings) -> None:
    _exercise(S3Store(s3_store_settings))


@pytest.mark.integration
def test_s3_download_url(s3_store_settings: StoreSettings, tmp_path: Path) -> None:
    store = S3Store(s3_store_settings)
    store.put_bytes("models/m.onnx", b"model-bytes")
    dest = download_url(store.url("models/m.onnx"), tmp_path / "m.onnx", store)
    assert dest.read_bytes() == b"model-bytes"
    # a ranged GET: no more than the signed size and one byte are asked for
    assert b"".join(store.stream("models/m.onnx", limit=6)) == b"model-"
    with pytest.raises(IntegrityError, match="more than the 5 bytes"):
        download_url(store.url("models/m.onnx"), tmp_path / "n.onnx", store, size=5)
    assert not (tmp_path / "n.onnx").exists()


def test_unreachable_s3_is_named() -> None:
    settings = StoreSettings(
        kind="s3", endpoint="http://127.0.0.1:9", access_key="a", secret_key="b", bucket="bkt"
    )
    with pytest.raises(StoreUnavailable, match=r"127.0.0.1:9"):
        S3Store(settings).put_bytes("x", b"y")


def test_sidecar_must_match_bytes(tmp_path: Path) -> None:
    digest = sha256_bytes(b"other")
    sidecar = RawImageSidecar(
        key=raw_key(digest), sha256=digest, width=1, height=1, source="t", reason="manual"
    )
    with pytest.raises(StoreError, match="does not match"):
        put_raw_image(LocalStore(tmp_path), b"data", sidecar)


def test_download_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    assert download_url(src.as_uri(), tmp_path / "out" / "x.bin").read_bytes() == b"abc"
    with pytest.raises(ObjectNotFound):
        download_url((tmp_path / "nope").as_uri(), tmp_path / "y.bin")
    assert not (tmp_path / "y.bin").exists()


def test_a_download_is_checked_against_its_size_and_sha256(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"abcdef")
    out = tmp_path / "out" / "x.bin"
    # a file larger than the signed size is refused before it is read, one smaller after
    with pytest.raises(IntegrityError, match="6 bytes, the release says 5; not downloaded"):
        download_url(src.as_uri(), out, size=5)
    with pytest.raises(IntegrityError, match="6 bytes, the release says 7"):
        download_url(src.as_uri(), out, size=7)
    with pytest.raises(IntegrityError, match="sha256"):
        download_url(src.as_uri(), out, size=6, sha256="0" * 64)
    # nothing is left behind, neither the file nor its part
    assert list(out.parent.iterdir()) == []
    right = sha256_bytes(b"abcdef")
    assert download_url(src.as_uri(), out, size=6, sha256=right).read_bytes() == b"abcdef"


def test_a_store_streams_at_most_the_limit(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("m/big.bin", b"x" * (3 << 20))
    assert sum(len(c) for c in store.stream("m/big.bin", limit=1000)) == 1000
    assert sum(len(c) for c in store.stream("m/big.bin")) == 3 << 20
    with pytest.raises(ObjectNotFound):
        list(store.stream("m/none.bin"))


def test_an_import_keeps_the_sidecar_of_an_earlier_capture(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = b"\xff\xd8edge-frame"
    digest = sha256_bytes(data)

    def sidecar(reason: str) -> RawImageSidecar:
        return RawImageSidecar(
            key=raw_key(digest),
            sha256=digest,
            width=4,
            height=3,
            source="t",
            reason=reason,  # type: ignore[arg-type]
        )

    put_raw_image(store, data, sidecar("low_confidence"))  # the edge sent it back first
    put_raw_image(store, data, sidecar("import"))  # then a labelling round imports it
    assert [s.reason for s in list_raw_images(store)] == ["low_confidence"]
    put_raw_image(store, data, sidecar("operator_verdict"))  # a later capture does replace it
    assert [s.reason for s in list_raw_images(store)] == ["operator_verdict"]


def _create_only(store: LocalStore | S3Store) -> None:
    assert store.put_bytes_if_absent("datasets/v1.dvc", b"first", "text/yaml") is True
    assert store.put_bytes_if_absent("datasets/v1.dvc", b"second", "text/yaml") is False
    assert store.get_bytes("datasets/v1.dvc") == b"first"
    assert list(store.list("datasets/")) == ["datasets/v1.dvc"]  # no temp file left behind
    with pytest.raises(StoreError, match="invalid object key"):
        store.put_bytes_if_absent("../escape", b"x")


def test_local_create_only_write_refuses_an_existing_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _create_only(store)
    assert [p.name for p in (tmp_path / "store" / "datasets").iterdir()] == ["v1.dvc"]


@pytest.mark.integration
def test_s3_create_only_write_refuses_an_existing_key(s3_store_settings: StoreSettings) -> None:
    store = S3Store(s3_store_settings)
    _create_only(store)
    stat = store._client.stat_object(store.bucket, "datasets/v1.dvc")
    assert stat.content_type == "text/yaml"
    assert not any("if-none-match" in k.lower() for k in (stat.metadata or {}))  # a header


@pytest.mark.integration
def test_s3_conditional_put_refuses_even_when_the_look_misses(
    s3_store_settings: StoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the look-first cannot close: the key appears after ``exists`` said no.

    S3 and current MinIO answer ``If-None-Match: *`` with 412, and so does moto's
    server (5.x, as pinned): the write is refused by the server itself.
    """
    store = S3Store(s3_store_settings)
    store.put_bytes("datasets/v2.dvc", b"theirs")
    monkeypatch.setattr(store, "exists", lambda key: False)
    assert store.put_bytes_if_absent("datasets/v2.dvc", b"ours", "text/yaml") is False
    assert store.get_bytes("datasets/v2.dvc") == b"theirs"
