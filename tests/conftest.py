"""Shared fixtures. Real data comes from $LLM4MSR_DATA_DIR or ../shared/data; in CI
(CI=true) a missing data set is a failure, elsewhere the tests that need it are skipped."""
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def tiny_movielens() -> pathlib.Path:
    """The ml-latest-small cut for tests: 40 users, 2,984 ratings."""
    return require_data("fixtures/ml-latest-small-tiny")


@pytest.fixture(scope="session")
def small_movielens() -> pathlib.Path:
    return require_data("ml-latest-small")
