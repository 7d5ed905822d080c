"""Content-addressed knowledge cache: one folder per model fingerprint, one small `.npz` chunk per
finished inference batch, written to a temporary name and renamed (a killed run leaves only whole
chunks behind, so the next run redoes just the batches that never finished).

An entry's key hashes the template version with the prompt hash, and entries live under the model
fingerprint, so a vector can never be served for another model, template or prompt.
The cache may live on shared storage (a URI such as `gs://bucket/cache`, `s3://...`): Beam
workers on other machines then read and add chunks of the same cache.
"""
import hashlib
import io
import logging
import os
import zipfile
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from llm4msr.files import absolute, glob, is_dir, join, read_bytes, remove_file, write_file

log = logging.getLogger(__name__)

DEFAULT_DIR = "~/.cache/llm4msr/knowledge"
ENV_DIR = "LLM4MSR_KNOWLEDGE_CACHE"


def default_cache_dir() -> str:
    return absolute(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def cache_key(template_version: str, prompt_hash: str) -> str:
    return hashlib.sha256(f"{template_version}\n{prompt_hash}".encode()).hexdigest()


class KnowledgeCache:
    def __init__(self, root, fingerprint: str):
        self.fingerprint = fingerprint
        self.folder = join(absolute(root), fingerprint)
        self.discarded: List[str] = []  # damaged chunks `index` removed (their prompts are embedded again)

    def index(self) -> Dict[str, str]:
        """key -> name of the chunk holding it. Every chunk is read whole, so its checksums are
        verified: a truncated or corrupted chunk is removed (named in the log and in `discarded`),
        and its prompts become misses to embed again."""
        located = {}
        for chunk in self._chunks():
            name = chunk.rsplit("/", 1)[-1]
            try:
                keys, matches = _verified_keys(chunk, self.fingerprint)
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
                log.warning("knowledge cache: discarding damaged chunk %s (%s: %s)", chunk,
                            type(error).__name__, str(error)[:200])
                remove_file(chunk)
                self.discarded.append(name)
                continue
            if matches:  # a chunk copied in by hand from another model is never served
                located.update(dict.fromkeys(keys, name))
        return located

    def _chunks(self, pattern: str = "*.npz") -> List[str]:
        return glob(join(self.folder, pattern)) if is_dir(self.folder) else []

    def prompts_manifest(self, key: str) -> str:
        """Where the prompts built for one set of artifact inputs (`key`) are kept: building them
        reads the data set and counts tokens, reading them back takes a fraction of a second."""
        return join(self.folder, f"prompts/{hashlib.sha256(key.encode()).hexdigest()[:24]}.json")

    def read(self, chunk_name: str, keys: Iterable[str]) -> Iterable[Tuple[str, np.ndarray, str]]:
        wanted = set(keys)
        with _load(join(self.folder, chunk_name)) as stored:
            for key, vector, text in zip(stored["keys"].tolist(), stored["vectors"], stored["texts"].tolist()):
                if key in wanted:
                    yield key, vector.astype(np.float32), text

    def write(self, keys: Sequence[str], vectors: np.ndarray, texts: Sequence[str]) -> str:
        """Durably adds one chunk; its name hashes its keys, so rewriting a batch is idempotent."""
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24] + f"-n{len(keys)}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.asarray(keys, dtype=str), vectors=np.asarray(vectors, np.float32),
                 texts=np.asarray(texts, dtype=str), fingerprint=np.asarray(self.fingerprint))
        return write_file(join(self.folder, name), buffer.getvalue())

    def finished_prompts(self) -> int:
        """Prompts in the chunks present now (read from the names: cheap enough to poll)."""
        return sum(int(chunk[:-len(".npz")].rsplit("-n", 1)[1]) for chunk in self._chunks("*-n*.npz"))


def _load(chunk: str):
    """A chunk's arrays (read whole first: `np.load` needs a seekable file, which remote ones are not)."""
    return np.load(io.BytesIO(read_bytes(chunk)))


def _verified_keys(chunk: str, fingerprint: str) -> Tuple[List[str], bool]:
    """The chunk's keys and whether it belongs to `fingerprint`; reading every member checks the
    zip CRCs, and the shapes must agree."""
    with _load(chunk) as stored:
        keys, vectors, texts = stored["keys"].tolist(), stored["vectors"], stored["texts"]
        if vectors.ndim != 2 or len(vectors) != len(keys) or len(texts) != len(keys):
            raise ValueError(f"{len(keys)} keys, vectors {vectors.shape}, {len(texts)} texts")
        return keys, str(stored["fingerprint"]) == fingerprint
