"""The download path, against a GroupLens-like HTTP server on 127.0.0.1."""
import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data import sources
from movielens_files import write_100k


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _zip(folder, archive):
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in folder.rglob("*"):
            bundle.write(path, path.relative_to(folder.parent))


def test_latest_small_download_checks_pinned_checksums(http_root, small_movielens, tmp_path, monkeypatch):
    root, url = http_root
    monkeypatch.setenv(sources.BASE_URL_ENV, url)
    _zip(small_movielens, root / "ml-latest-small.zip")
    folder = sources.fetch(sources.get_source("movielens-latest-small"), tmp_path / "cache")
    assert (folder / "ratings.csv").read_bytes() == (small_movielens / "ratings.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml-latest-small"]


def test_latest_small_download_rejects_altered_files(http_root, tiny_movielens, tmp_path, monkeypatch):
    root, url = http_root
    monkeypatch.setenv(sources.BASE_URL_ENV, url)
    altered = tmp_path / "ml-latest-small"
    altered.mkdir()
    for name in ("ratings.csv", "movies.csv", "tags.csv"):
        (altered / name).write_bytes((tiny_movielens / name).read_bytes() if name != "tags.csv" else b"userId\n")
    _zip(altered, root / "ml-latest-small.zip")
    with pytest.raises(UserFacingError, match="checksum mismatch for ratings.csv"):
        sources.fetch(sources.get_source("movielens-latest-small"), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-extracted is left


def test_100k_download_verifies_published_md5(http_root, tmp_path, monkeypatch):
    root, url = http_root
    monkeypatch.setenv(sources.BASE_URL_ENV, url)
    _zip(write_100k(tmp_path / "src" / "ml-100k"), root / "ml-100k.zip")
    digest = hashlib.md5((root / "ml-100k.zip").read_bytes()).hexdigest()
    (root / "ml-100k.zip.md5").write_text(f"MD5 (ml-100k.zip) = {digest}\n")
    folder = sources.fetch(sources.get_source("movielens-100k"), tmp_path / "cache")
    assert (folder / "u.data").is_file()

    (root / "ml-100k.zip.md5").write_text("0" * 32 + "  ml-100k.zip\n")
    with pytest.raises(UserFacingError, match="checksum mismatch for ml-100k.zip"):
        sources.fetch(sources.get_source("movielens-100k"), tmp_path / "cache2")


def test_locate_downloads_only_when_missing(http_root, tmp_path, monkeypatch):
    root, url = http_root
    monkeypatch.setenv(sources.BASE_URL_ENV, url)
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(sources, "REPO_ROOT", tmp_path / "nowhere" / "repo")
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    with pytest.raises(UserFacingError, match="could not download .*/ml-1m.zip"):
        sources.locate(sources.get_source("movielens-1m"))
    with pytest.raises(UserFacingError, match="ml-1m not found"):
        sources.locate(sources.get_source("movielens-1m"), download=False)
