"""Shared fixtures. Real data comes from $LLM4MSR_DATA_DIR or ../shared/data; in CI
(CI=true) a missing data set is a failure, elsewhere the tests that need it are skipped."""
import os
import pathlib
import sys

import pytest

from llm4msr.quiet import drop_teardown_noise

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_KNOWLEDGE_DIM = 40  # the `tiny_knowledge` width: above the default reduction (32)
sys.unraisablehook = drop_teardown_noise  # TF functions alive at exit: as `llm4msr` does, no traceback each


def _data_root() -> pathlib.Path:
    configured = os.environ.get("LLM4MSR_DATA_DIR")
    root = pathlib.Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    return root if root.is_absolute() else (REPO_ROOT / root).resolve()


def require_data(relative: str) -> pathlib.Path:
    path = _data_root() / relative
    if not path.exists():
        message = f"data set {path} is missing (set LLM4MSR_DATA_DIR to the shared data folder)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The fast path's Transform cache in a folder of this test session, not the user's ~/.cache."""
    previous = os.environ.get("LLM4MSR_CACHE_DIR")
    os.environ["LLM4MSR_CACHE_DIR"] = str(tmp_path_factory.mktemp("llm4msr-cache"))
    yield
    if previous is None:
        os.environ.pop("LLM4MSR_CACHE_DIR", None)
    else:
        os.environ["LLM4MSR_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_movielens() -> pathlib.Path:
    """The ml-latest-small cut for tests: 40 users, 2,984 ratings."""
    return require_data("fixtures/ml-latest-small-tiny")


@pytest.fixture(scope="session")
def small_movielens() -> pathlib.Path:
    return require_data("ml-latest-small")


@pytest.fixture(scope="session")
def tiny_data(tiny_movielens, tmp_path_factory) -> pathlib.Path:
    """The tiny fixture prepared into the canonical layout (genre scenarios, time split)."""
    from llm4msr.pipeline.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare("movielens-latest-small", out, data_dir=tiny_movielens, download=False)
    return out


@pytest.fixture(scope="session")
def tiny_knowledge(tiny_data, tmp_path_factory) -> pathlib.Path:
    """Random knowledge, `TINY_KNOWLEDGE_DIM` wide (wider than the default reduction), for all but the first
    three users and items (they get the cold-start vector)."""
    import numpy as np

    from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, KnowledgeRecord, write_knowledge

    rng = np.random.default_rng(0)
    rows = [line.split(",") for line in (tiny_data / "interactions.csv").read_text().splitlines()[1:]]

    def random_records(ids):
        return {i: KnowledgeRecord(i, rng.normal(size=TINY_KNOWLEDGE_DIM).astype(np.float32)) for i in [*sorted(ids)[3:], COLD_START_ID]}
    scenarios = {s: KnowledgeRecord(s, rng.normal(size=TINY_KNOWLEDGE_DIM).astype(np.float32)) for s in ("S0", "S1", "S2")}
    return write_knowledge(tmp_path_factory.mktemp("knowledge") / "k", random_records({r[0] for r in rows}),
                           scenarios, {"dim": TINY_KNOWLEDGE_DIM}, items=random_records({r[1] for r in rows}))
