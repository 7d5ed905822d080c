"""Where MovieLens releases are found locally, and how they are downloaded when they are not.

A release is looked for, in order, in `--data-dir`, `$LLM4MSR_DATA_DIR`, `../shared/data` next to
the repository and the download cache `~/.cache/llm4msr/datasets`; when none has it, it is
downloaded from GroupLens into the cache with a progress bar and verified:
- ml-latest-small: the SHA-256 of every extracted file is pinned here (the 2018-09-26 snapshot);
- other releases: the zip's MD5 is checked against the `.md5` file GroupLens publishes beside it.
Extraction goes to a temporary folder that is renamed into place only after the checks pass.
"""
import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from tqdm import tqdm

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data import movielens

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "LLM4MSR_MOVIELENS_URL"  # lets tests and mirrors replace GROUPLENS_URL
DATA_DIR_ENV = "LLM4MSR_DATA_DIR"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "llm4msr" / "datasets"


@dataclass(frozen=True)
class Source:
    name: str  # the --source value
    folder: str  # the folder name inside the GroupLens zip, and locally
    read: Callable[[pathlib.Path], movielens.MovieLensFiles]
    marker: str  # a file whose presence means the release is there
    sha256: Optional[Dict[str, str]] = None  # pinned per-file checksums, when known

    @property
    def url(self) -> str:
        return f"{os.environ.get(BASE_URL_ENV, GROUPLENS_URL).rstrip('/')}/{self.folder}.zip"


SOURCES = {source.name: source for source in [
    Source("movielens-latest-small", "ml-latest-small", movielens.read_latest, "ratings.csv", sha256={
        "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
        "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
        "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
    }),
    Source("movielens-100k", "ml-100k", movielens.read_100k, "u.data"),
    Source("movielens-1m", "ml-1m", movielens.read_1m, "ratings.dat"),
]}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise UserFacingError(f"unknown source {name!r} (expected one of: {', '.join(SOURCES)}, canonical)")
    return SOURCES[name]


def search_dirs(data_dir=None) -> List[pathlib.Path]:
    candidates = [data_dir, os.environ.get(DATA_DIR_ENV), REPO_ROOT.parent / "shared" / "data", CACHE_DIR]
    return [pathlib.Path(c) for c in candidates if c]


def locate(source: Source, data_dir=None, download: bool = True) -> pathlib.Path:
    """Returns the folder holding `source`, downloading it into the cache when it is nowhere."""
    for directory in search_dirs(data_dir):
        for folder in (directory / source.folder, directory):
            if (folder / source.marker).is_file():
                return folder
    if not download:
        looked = ", ".join(str(d) for d in search_dirs(data_dir))
        raise UserFacingError(f"{source.folder} not found (looked in {looked})")
    return fetch(source, CACHE_DIR)


def fetch(source: Source, into: pathlib.Path) -> pathlib.Path:
    """Downloads, verifies and extracts `source` into `into/<folder>` atomically."""
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=into) as scratch:
        archive = pathlib.Path(scratch) / f"{source.folder}.zip"
        _download(source.url, archive)
        if source.sha256 is None:
            _check_md5(archive, _read_published_md5(source.url + ".md5"))
        extracted = pathlib.Path(scratch) / "extracted"
        _extract(archive, extracted)
        folder = extracted / source.folder
        if not (folder / source.marker).is_file():
            raise UserFacingError(f"{source.url}: the archive has no {source.folder}/{source.marker}")
        for name, expected in (source.sha256 or {}).items():
            actual = _sha256(folder / name)
            if actual != expected:
                raise UserFacingError(f"{source.url}: checksum mismatch for {name} "
                                      f"(sha256 {actual}, expected {expected}); the download is corrupt "
                                      f"or not the published release")
        target = into / source.folder
        if target.exists():
            shutil.rmtree(target)
        os.rename(folder, target)
    return target


def _download(url: str, path: pathlib.Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {url.rsplit('/', 1)[-1]}") as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        raise UserFacingError(f"could not download {url}: {error}; download it by hand and pass "
                              f"--data-dir, or set {DATA_DIR_ENV}") from None


def _read_published_md5(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            text = response.read().decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError) as error:
        raise UserFacingError(f"could not fetch the checksum {url}: {error}") from None
    digest = next((word for word in text.split() if len(word) == 32), None)
    if digest is None:
        raise UserFacingError(f"{url} holds no MD5 digest")
    return digest.lower()


def _check_md5(path: pathlib.Path, expected: str) -> None:
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    if actual != expected:
        raise UserFacingError(f"checksum mismatch for {path.name}: md5 {actual}, published {expected}")


def _extract(archive: pathlib.Path, into: pathlib.Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():  # refuse paths that would escape the folder
                if member.startswith("/") or ".." in pathlib.PurePosixPath(member).parts:
                    raise UserFacingError(f"{archive.name}: unsafe path {member!r} in the archive")
            bundle.extractall(into)
    except zipfile.BadZipFile:
        raise UserFacingError(f"{archive.name}: the download is not a valid zip file") from None


def _sha256(path: pathlib.Path) -> str:
    if not path.is_file():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()
