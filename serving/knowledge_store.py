"""Knowledge vectors for serving: user id -> vector, scenario id -> vector, item id -> vector (when
the model takes item knowledge), and the cold-start vectors for users and items the extraction has
not seen.

The store travels with the model: every pushed version holds its knowledge folder in
`<version>/assets.extra/knowledge/` (format: `llm4msr.pipeline.knowledge.artifact`), and
`PushedKnowledgeStore` is the embedded, file-backed default built from it.

To back it with Redis or a feature store, subclass `KnowledgeStore` and load the vectors of each
pushed version under a versioned key prefix (`export_vectors` yields the key/value pairs):

    class RedisKnowledgeStore(KnowledgeStore):
        def __init__(self, redis, dim, version):
            self.redis, self._dim, self.version = redis, dim, version

        @property
        def dim(self):
            return self._dim

        def user_vector(self, user_id):
            raw = self.redis.get(key(self.version, "user", user_id)) or \\
                  self.redis.get(key(self.version, "user", COLD_START_ID))
            return np.frombuffer(raw, np.float32)

        def scenario_vector(self, scenario):
            return np.frombuffer(self.redis.get(key(self.version, "scenario", scenario)), np.float32)

        # models with item knowledge: also `has_items` (True) and `item_vectors(ids)` -> [N, dim]

        def for_version(self, version):
            return RedisKnowledgeStore(self.redis, self._dim, version)

    # at push time: redis.mset(dict(export_vectors(read_knowledge(folder), version)))
"""
import abc
from typing import Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from llm4msr.errors import UserFacingError
from llm4msr.files import is_dir, join
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, Knowledge, read_knowledge
from llm4msr.serving.layout import KNOWLEDGE_DIR, version_dirs


class KnowledgeStore(abc.ABC):
    """What the client needs to fill in a request's knowledge inputs."""

    version: Optional[int] = None  # the model version these vectors belong to (None: any)

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Width of every vector."""

    @abc.abstractmethod
    def user_vector(self, user_id: str) -> np.ndarray:
        """float32 [dim]; the cold-start vector for an unknown user."""

    @abc.abstractmethod
    def scenario_vector(self, scenario: str) -> np.ndarray:
        """float32 [dim]; raises UserFacingError for an unknown scenario."""

    @property
    def has_items(self) -> bool:
        """Whether the model takes item knowledge (then requests carry one item vector per candidate)."""
        return False

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """float32 [N, dim]; the cold-start item vector for unknown items."""
        raise UserFacingError("this knowledge store has no item vectors")

    def for_version(self, version: int) -> "KnowledgeStore":
        """The store matching another model version (a store not tied to versions returns itself)."""
        return self


class InMemoryKnowledgeStore(KnowledgeStore):
    def __init__(self, users: Mapping[str, np.ndarray], scenarios: Mapping[str, np.ndarray],
                 default_user: np.ndarray, version: Optional[int] = None,
                 items: Optional[Mapping[str, np.ndarray]] = None, default_item: Optional[np.ndarray] = None):
        self.users = {k: np.asarray(v, np.float32) for k, v in users.items()}
        self.scenarios = {k: np.asarray(v, np.float32) for k, v in scenarios.items()}
        self.default_user = np.asarray(default_user, np.float32)
        self.items = {k: np.asarray(v, np.float32) for k, v in (items or {}).items()}
        self.default_item = None if default_item is None else np.asarray(default_item, np.float32)
        self.version = version

    @classmethod
    def from_knowledge(cls, knowledge: Knowledge, version: Optional[int] = None) -> "InMemoryKnowledgeStore":
        users = {k: r.vector for k, r in knowledge.users.items() if k != COLD_START_ID}
        scenarios = {k: r.vector for k, r in knowledge.scenarios.items()}
        items = {k: r.vector for k, r in knowledge.items.items() if k != COLD_START_ID}
        default_item = knowledge.default_item_vector if knowledge.has_items else None
        return cls(users, scenarios, knowledge.default_user_vector, version, items, default_item)

    @property
    def dim(self) -> int:
        return int(self.default_user.shape[0])

    def user_vector(self, user_id: str) -> np.ndarray:
        return self.users.get(user_id, self.default_user)

    @property
    def has_items(self) -> bool:
        return self.default_item is not None

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        if self.default_item is None:
            return super().item_vectors(item_ids)
        return np.stack([self.items.get(i, self.default_item) for i in item_ids]).astype(np.float32, copy=False) \
            if len(item_ids) else np.zeros((0, self.dim), np.float32)

    def scenario_vector(self, scenario: str) -> np.ndarray:
        try:
            return self.scenarios[scenario]
        except KeyError:
            raise UserFacingError(f"no knowledge for scenario {scenario!r} "
                                  f"(known: {', '.join(sorted(self.scenarios))})") from None


class PushedKnowledgeStore(InMemoryKnowledgeStore):
    """The embedded default: the knowledge folder of one pushed version, loaded into memory."""

    def __init__(self, model_dir, version: int):
        folder = join(model_dir, f"{version}/{KNOWLEDGE_DIR}")
        if not is_dir(folder):
            raise UserFacingError(f"{folder} is missing: version {version} was pushed without its knowledge store")
        base = InMemoryKnowledgeStore.from_knowledge(read_knowledge(folder), version)
        super().__init__(base.users, base.scenarios, base.default_user, version, base.items, base.default_item)
        self.model_dir = model_dir

    @classmethod
    def latest(cls, model_dir) -> "PushedKnowledgeStore":
        versions = version_dirs(model_dir)
        if not versions:
            raise UserFacingError(f"no model version under {model_dir} (expected <version>/saved_model.pb)")
        return cls(model_dir, max(versions))

    def for_version(self, version: int) -> "PushedKnowledgeStore":
        return self if version == self.version else PushedKnowledgeStore(self.model_dir, version)


def key(version: int, level: str, item_id: str) -> str:
    """The key layout for external key-value stores (Redis, a feature store's online table)."""
    return f"llm4msr:{version}:{level}:{item_id}"


def export_vectors(knowledge: Knowledge, version: int) -> Iterator[Tuple[str, bytes]]:
    """Every vector of a knowledge folder as (key, float32 bytes), to load an external store."""
    for level, records in (("user", knowledge.users), ("scenario", knowledge.scenarios), ("item", knowledge.items)):
        for item_id, record in records.items():
            yield key(version, level, item_id), np.asarray(record.vector, np.float32).tobytes()
