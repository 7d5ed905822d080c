"""Content-addressed knowledge cache: one folder per model fingerprint, one small `.npz` chunk per
finished inference batch, written to a temporary name and renamed (a killed run leaves only whole
chunks behind, so the next run redoes just the batches that never finished).

An entry's key hashes the template version with the prompt hash, and entries live under the model
fingerprint, so a vector can never be served for another model, template or prompt.
"""
import hashlib
import os
import pathlib
import tempfile
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np

DEFAULT_DIR = pathlib.Path("~/.cache/llm4msr/knowledge")
ENV_DIR = "LLM4MSR_KNOWLEDGE_CACHE"


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(ENV_DIR) or DEFAULT_DIR).expanduser()


def cache_key(template_version: str, prompt_hash: str) -> str:
    return hashlib.sha256(f"{template_version}\n{prompt_hash}".encode()).hexdigest()


class KnowledgeCache:
    def __init__(self, root, fingerprint: str):
        self.fingerprint = fingerprint
        self.folder = pathlib.Path(root).expanduser() / fingerprint

    def index(self) -> Dict[str, str]:
        """key -> name of the chunk holding it (reads only the keys of every chunk)."""
        located = {}
        for chunk in sorted(self.folder.glob("*.npz")):
            with np.load(chunk) as stored:
                if str(stored["fingerprint"]) != self.fingerprint:
                    continue  # a chunk copied in by hand from another model: never served
                located.update(dict.fromkeys(stored["keys"].tolist(), chunk.name))
        return located

    def read(self, chunk_name: str, keys: Iterable[str]) -> Iterable[Tuple[str, np.ndarray, str]]:
        wanted = set(keys)
        with np.load(self.folder / chunk_name) as stored:
            for key, vector, text in zip(stored["keys"].tolist(), stored["vectors"], stored["texts"].tolist()):
                if key in wanted:
                    yield key, vector.astype(np.float32), text

    def write(self, keys: Sequence[str], vectors: np.ndarray, texts: Sequence[str]) -> pathlib.Path:
        """Durably adds one chunk; its name hashes its keys, so rewriting a batch is idempotent."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24] + f"-n{len(keys)}.npz"
        handle = tempfile.NamedTemporaryFile(dir=self.folder, prefix=".", suffix=".tmp", delete=False)
        try:
            with handle:
                np.savez(handle, keys=np.asarray(keys, dtype=str), vectors=np.asarray(vectors, np.float32),
                         texts=np.asarray(texts, dtype=str), fingerprint=np.asarray(self.fingerprint))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, self.folder / name)
        except BaseException:
            pathlib.Path(handle.name).unlink(missing_ok=True)
            raise
        return self.folder / name

    def finished_prompts(self) -> int:
        """Prompts in the chunks present now (read from the names: cheap enough to poll)."""
        return sum(int(p.stem.rsplit("-n", 1)[1]) for p in self.folder.glob("*-n*.npz"))
