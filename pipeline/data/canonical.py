"""The canonical multi-scenario data set (docs/DATA_FORMAT.md): read, validate, write.

Every later stage reads a data set only through `read_dataset`, so the checks here are the
contract: ids are strings, labels 0/1, timestamps integers, scenarios listed in scenarios.json,
items listed in items.csv, no duplicate (user, item, timestamp) rows.
"""
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import List, Optional

import pandas as pd

from llm4msr.errors import DataError
from llm4msr.files import (absolute, exists, file_names, is_dir, is_file, join, open_file, read_text, remove_tree,
                           replace_dir, staging_dir)
from llm4msr.pipeline.data.scenarios import Scenario
from llm4msr.pipeline.data.split import (ALL_SPLITS, REGIME_SHARE, REGIMES, cold_scenario_rows, new_users,
                                         prompt_history, random_split, time_split)
from llm4msr.pipeline.data.tables import read_table

INTERACTIONS, ITEMS, USERS, SCENARIOS, MANIFEST = (
    "interactions.csv", "items.csv", "users.csv", "scenarios.json", "manifest.json")
INTERACTION_COLUMNS = ["user_id", "item_id", "scenario", "label", "timestamp", "split"]


@dataclass
class Dataset:
    interactions: pd.DataFrame  # user_id, item_id, scenario, label, timestamp, split[, extra...]
    items: pd.DataFrame  # item_id, title, categories, description[, extra...]
    scenarios: List[Scenario]
    users: Optional[pd.DataFrame] = None  # user_id[, attributes...]
    manifest: dict = field(default_factory=dict)  # where the set came from and how it was made
    folder: Optional[str] = None  # where it was read from (items.csv / users.csv feed the feature contract)

    @property
    def scenario_ids(self) -> List[str]:
        return [s.id for s in self.scenarios]

    def split(self, name: str) -> pd.DataFrame:
        return self.interactions[self.interactions["split"] == name]


def write_dataset(dataset: Dataset, out) -> str:
    """Writes the set into a temporary sibling folder, then renames it to `out` (a local path or a
    URI), so `out` is either the complete previous set or the complete new one, never half-written."""
    out = absolute(out)
    staging = staging_dir(out)
    try:
        _write_csv(dataset.interactions, join(staging, INTERACTIONS))
        _write_csv(dataset.items, join(staging, ITEMS))
        if dataset.users is not None:
            _write_csv(dataset.users, join(staging, USERS))
        _write_json(join(staging, SCENARIOS), {"scenarios": [s.to_json() for s in dataset.scenarios]})
        _write_json(join(staging, MANIFEST), dataset.manifest)
        replace_dir(staging, out)
    except BaseException:
        remove_tree(staging)
        raise
    return out


def read_dataset(folder, split: str = "time", seed: int = 0, regime: str = "time",
                 share: float = REGIME_SHARE) -> Dataset:
    """Reads and validates a canonical set. When `interactions.csv` has no `split` column the
    splitter assigns one (`split` = 'time' needs timestamps; 'random' is seeded 8:1:1), under
    `regime`; a set that has one keeps it (a regime then needs the column dropped)."""
    folder = absolute(folder)
    if not is_dir(folder):
        raise DataError(folder, "data set folder not found")
    scenarios = _read_scenarios(join(folder, SCENARIOS))
    items = _read_items(join(folder, ITEMS))
    interactions = _read_interactions(join(folder, INTERACTIONS), [s.id for s in scenarios], set(items["item_id"]))
    if "split" not in interactions.columns:
        interactions["split"] = assign_split(interactions, split, seed, join(folder, INTERACTIONS), regime, share)
    elif regime != "time":
        raise DataError(join(folder, INTERACTIONS), f"the set has its own 'split' column, so the {regime} regime "
                                               f"cannot re-split it; drop the column to apply a regime")
    users = read_users(folder)
    manifest_path = join(folder, MANIFEST)
    manifest = json.loads(read_text(manifest_path)) if exists(manifest_path) else {"source": "canonical"}
    return Dataset(interactions, items, scenarios, users, manifest, folder)


def assign_split(interactions: pd.DataFrame, split: str, seed: int, where, regime: str = "time",
                 share: float = REGIME_SHARE) -> pd.Series:
    """The split of every row: `split` ('time' or 'random') under `regime` (`llm4msr.pipeline.data.split`)."""
    if regime not in REGIMES:
        raise DataError(where, f"unknown regime {regime!r} (expected one of {', '.join(REGIMES)})")
    if not 0.0 < share < 1.0:
        raise DataError(where, f"regime share must be between 0 and 1 (exclusive), got {share}")
    held = cold_scenario_rows(interactions, share, seed) if regime == "cold_scenario" else None
    rest = interactions if held is None else interactions[held.isna()]
    assigned = _method_split(rest, split, seed, where).reindex(interactions.index)
    if held is not None:
        assigned = assigned.fillna(held)
    if regime == "new_users":
        return new_users(interactions, assigned, share, seed)
    return prompt_history(interactions, assigned, share) if regime == "prompt_history" else assigned


def _method_split(interactions: pd.DataFrame, split: str, seed: int, where) -> pd.Series:
    if split == "random":
        return random_split(interactions, seed)
    if split != "time":
        raise DataError(where, f"unknown split method {split!r} (expected time or random)")
    if "timestamp" not in interactions.columns:
        raise DataError(where, "the time split needs a 'timestamp' column; add one or use --split random")
    return time_split(interactions)


def read_items(folder) -> pd.DataFrame:
    """items.csv of a canonical set, validated (the attribute source of the feature contract)."""
    return _read_items(join(folder, ITEMS))


def read_users(folder) -> Optional[pd.DataFrame]:
    """users.csv of a canonical set, validated, or None when the set has none."""
    path = join(folder, USERS)
    return _read_users(path) if exists(path) else None


def _read_scenarios(path) -> List[Scenario]:
    if not is_file(path):
        raise DataError(path, "file not found")
    try:
        with open_file(path, "rb") as handle:
            document = json.loads(handle.read().decode("utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(path, f"invalid JSON: {error.msg}", line=error.lineno) from None
    entries = document.get("scenarios") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(path, "expected {\"scenarios\": [{\"id\": ..., \"name\": ..., \"description\": ...}, ...]}",
                        field="scenarios")
    scenarios = []
    for index, entry in enumerate(entries):
        for key in ("id", "name", "description"):
            if not isinstance(entry, dict) or not str(entry.get(key, "")).strip():
                raise DataError(path, f"scenario #{index} has no {key!r}", field=f"scenarios[{index}].{key}")
        scenarios.append(Scenario(str(entry["id"]), str(entry["name"]), str(entry["description"])))
    ids = [s.id for s in scenarios]
    if len(set(ids)) != len(ids):
        raise DataError(path, f"scenario ids are not unique: {ids}", field="scenarios")
    return scenarios


def _read_items(path: str) -> pd.DataFrame:
    table = read_table(path, required=["item_id", "title"])
    frame = table.frame
    frame["item_id"] = table.strings("item_id")
    frame["title"] = table.strings("title")
    for optional in ("categories", "description"):
        frame[optional] = frame[optional].str.strip() if optional in frame.columns else ""
    table.check_unique(["item_id"], "item id")
    return frame


def _read_interactions(path: str, scenario_ids: List[str], item_ids: set) -> pd.DataFrame:
    table = read_table(path, required=["user_id", "item_id", "scenario", "label"])
    frame = table.frame
    frame["user_id"] = table.strings("user_id")
    frame["item_id"] = table.strings("item_id")
    unknown_item = (~frame["item_id"].isin(item_ids)).to_numpy()
    if unknown_item.any():
        position = int(unknown_item.nonzero()[0][0])
        table.fail(position, "item_id", f"item {frame['item_id'].iloc[position]!r} is not in {ITEMS}")
    frame["scenario"] = table.choice("scenario", scenario_ids, "scenario id")
    frame["label"] = table.choice("label", ["0", "1"], "label").astype("int64")
    if "timestamp" in frame.columns:
        frame["timestamp"] = table.timestamps("timestamp")
        table.check_unique(["user_id", "item_id", "timestamp"], "(user, item, timestamp)")
    if "split" in frame.columns:
        frame["split"] = table.choice("split", list(ALL_SPLITS), "split")
    return frame


def _read_users(path: str) -> pd.DataFrame:
    table = read_table(path, required=["user_id"])
    table.frame["user_id"] = table.strings("user_id")
    table.check_unique(["user_id"], "user id")
    return table.frame


def _write_csv(frame: pd.DataFrame, path: str) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    with open_file(path, "wb") as handle:
        handle.write(buffer.getvalue().encode("utf-8"))


def _write_json(path: str, document) -> None:
    with open_file(path, "wb") as handle:
        handle.write((json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def dataset_fingerprint(dataset_dir: str) -> str:
    """Content hash of a canonical data set folder (names, sizes and bytes of its files); the folder
    may be a URI (gs://...)."""
    digest = hashlib.sha256()
    for name in file_names(dataset_dir):
        digest.update(name.encode())
        with open_file(join(dataset_dir, name), "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def read_scenario_ids(dataset_dir: str) -> List[str]:
    """The scenario ids in index order (scenarios.json, validated); the folder may be a URI."""
    return [scenario.id for scenario in _read_scenarios(join(dataset_dir, SCENARIOS))]
