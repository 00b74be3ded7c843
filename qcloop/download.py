"""Downloads capped at the size a release signs, hashed on the way.

A device (or the labelling side) fetches a model from ``file://``, ``http(s)://`` or
``s3://``. The bytes are never read beyond the signed size plus one (a ranged GET on
S3, chunks on http, the file's size looked at first), hashed as they arrive, and land
in a temp file that is renamed into place only once size and sha256 match: an
oversized object costs one chunk of memory, not all of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

from qcloop.errors import IntegrityError, ObjectNotFound, StoreError, StoreUnavailable
from qcloop.storage import ObjectStore, read_chunks


def download_url(
    url: str,
    dest: Path,
    store: ObjectStore | None = None,
    *,
    size: int | None = None,
    sha256: str | None = None,
) -> Path:
    """Fetch ``file://``, ``http(s)://`` or ``s3://`` (through ``store``) into ``dest``.

    With ``size`` the download stops and fails (``IntegrityError``) as soon as more than
    ``size`` bytes arrive - an s3 GET asks for no more than ``size + 1``, and a file or an
    http Content-Length that says more is refused before a byte is read - and fails if
    fewer came; with ``sha256`` it fails unless the bytes hash to it. The bytes are hashed
    on the way into a temp file beside ``dest``, renamed into place only once they match.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with closing(_chunks(url, store, size)) as chunks:
            got, digest = _write_hashed(chunks, tmp, url, size)
        if size is not None and got != size:
            raise IntegrityError(f"{url}: {got} bytes, the release says {size}")
        if sha256 is not None and digest != sha256:
            raise IntegrityError(f"{url}: sha256 {digest}, the release says {sha256}")
        tmp.replace(dest)
    except FileNotFoundError:
        raise ObjectNotFound(f"{url}: no such file") from None
    except OSError as exc:
        raise StoreUnavailable(f"{url}: download failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _chunks(url: str, store: ObjectStore | None, size: int | None) -> Generator[bytes, None, None]:
    """The bytes at ``url``; with ``size``, no more than ``size + 1`` of them read."""
    parsed = urlparse(url)
    limit = None if size is None else size + 1  # one byte more shows an oversized object
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        _refuse_larger(url, path.stat().st_size, size)
        with open(path, "rb") as fh:
            yield from read_chunks(fh, limit)
    elif parsed.scheme in ("http", "https"):
        import urllib.request

        with urllib.request.urlopen(url, timeout=30) as resp:
            length = resp.headers.get("Content-Length", "")
            if length.isdigit():
                _refuse_larger(url, int(length), size)
            yield from read_chunks(resp, limit)
    elif parsed.scheme == "s3":
        if store is None:
            raise StoreError(f"{url}: an s3:// location needs store settings (store.kind = 's3')")
        yield from store.stream(parsed.path.lstrip("/"), limit)
    else:
        raise StoreError(f"{url}: unsupported scheme '{parsed.scheme}'")


def _refuse_larger(url: str, announced: int, size: int | None) -> None:
    if size is not None and announced > size:
        raise IntegrityError(f"{url}: {announced} bytes, the release says {size}; not downloaded")


def _write_hashed(
    chunks: Iterator[bytes], tmp: Path, url: str, size: int | None
) -> tuple[int, str]:
    """Write ``chunks`` to ``tmp``, hashing them; stop at the first byte beyond ``size``."""
    digest, got = hashlib.sha256(), 0
    with open(tmp, "wb") as fh:
        for chunk in chunks:
            got += len(chunk)
            if size is not None and got > size:
                raise IntegrityError(
                    f"{url}: more than the {size} bytes the release says; download stopped"
                )
            digest.update(chunk)
            fh.write(chunk)
    return got, digest.hexdigest()
