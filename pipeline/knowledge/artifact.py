"""The on-disk format of extracted knowledge, read by the joiner, the trainer and the serving store.

```
<dir>/knowledge.json          {"format": 1, "fingerprint": ..., "template_version": ..., "dim": ..., ...}
<dir>/user/*.parquet          id, vector (list<float32>), prompt, prompt_hash, text
<dir>/scenario/*.parquet      same columns, one row per scenario
<dir>/item/*.parquet          same columns, one row per item of items.csv (optional: absent when
                              the extraction was asked for user and scenario knowledge only)
```
The user and item tables also hold one row with id `COLD_START_ID`: the vector of the cold-start
prompt, used for users (items) the extraction has not seen (the serving default and the joiner's).
Shards (`*.parquet`) may be written by Beam (`WriteToParquet`) or by `write_knowledge`.
"""
import io
import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm4msr.errors import UserFacingError
from llm4msr.files import (glob, is_file, is_uri, join, makedirs, open_file, read_bytes, read_text, remove_tree,
                           replace_dir, staging_dir, write_file)

FORMAT_VERSION = 1
METADATA = "knowledge.json"
USER, SCENARIO, ITEM = "user", "scenario", "item"
LEVELS = (USER, SCENARIO, ITEM)
COLD_START_ID = "<cold-start>"
SCHEMA = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32())), ("prompt", pa.string()),
                    ("prompt_hash", pa.string()), ("text", pa.string())])


@dataclass
class KnowledgeRecord:
    id: str
    vector: np.ndarray
    prompt: str = ""
    prompt_hash: str = ""
    text: str = ""


@dataclass
class Knowledge:
    users: Dict[str, KnowledgeRecord]
    scenarios: Dict[str, KnowledgeRecord]
    metadata: dict = field(default_factory=dict)
    items: Dict[str, KnowledgeRecord] = field(default_factory=dict)  # empty: no item level extracted

    @property
    def dim(self) -> int:
        return int(next(iter(self.scenarios.values())).vector.shape[0])

    @property
    def default_user_vector(self) -> np.ndarray:
        return self.users[COLD_START_ID].vector

    def user_vector(self, user_id: str) -> np.ndarray:
        record = self.users.get(user_id)
        return record.vector if record is not None else self.default_user_vector

    @property
    def has_items(self) -> bool:
        return bool(self.items)

    @property
    def default_item_vector(self) -> np.ndarray:
        if not self.items:
            raise UserFacingError("this knowledge folder has no item level: extract it with "
                                  "`llm4msr knowledge extract --levels user,scenario,item`")
        return self.items[COLD_START_ID].vector

    def item_vector(self, item_id: str) -> np.ndarray:
        record = self.items.get(item_id)
        return record.vector if record is not None else self.default_item_vector

    def item_matrix(self, item_ids: Iterable[str]) -> np.ndarray:
        default = self.default_item_vector
        return np.stack([self.items[i].vector if i in self.items else default for i in item_ids]).astype(np.float32)

    def check_made_from(self, dataset_dir) -> None:
        """Refuses knowledge extracted from another data set (by the content fingerprint its
        inputs record; folders extracted before inputs were recorded are not checked): most users
        would silently get the cold-start vector."""
        made_from = (self.metadata.get("inputs") or {}).get("dataset")
        if made_from is None:
            return
        from llm4msr.pipeline.data.canonical import dataset_fingerprint

        here = dataset_fingerprint(dataset_dir)
        if made_from != here:
            raise UserFacingError(
                f"the knowledge was extracted from {self.metadata.get('dataset')} (contents {made_from}), not from "
                f"{dataset_dir} (contents {here}): extract it for this data set with `llm4msr knowledge extract "
                f"--data {dataset_dir} --out DIR` (the prompt cache makes that cheap)")

    def scenario_vector(self, scenario_id: str) -> np.ndarray:
        if scenario_id not in self.scenarios:
            raise UserFacingError(f"no knowledge for scenario {scenario_id!r} "
                                  f"(have: {', '.join(sorted(self.scenarios))})")
        return self.scenarios[scenario_id].vector

    def user_matrix(self, user_ids: Iterable[str]) -> np.ndarray:
        return np.stack([self.user_vector(u) for u in user_ids]).astype(np.float32)

    def scenario_matrix(self, scenario_ids: Iterable[str]) -> np.ndarray:
        return np.stack([self.scenario_vector(s) for s in scenario_ids]).astype(np.float32)


def read_knowledge(folder, whole: Sequence[str] = LEVELS) -> Knowledge:
    """The knowledge folder at `folder` (a local path or a URI), checked. The levels not in `whole`
    are read for their cold-start row only: a Beam job that streams their rows itself (the joiner)
    needs no more in the launching process, whatever the number of users or items."""
    folder = str(folder)
    meta_path = join(folder, METADATA)
    if not is_file(meta_path):
        raise UserFacingError(f"{folder} is not a knowledge folder: {METADATA} is missing "
                              f"(run `llm4msr knowledge extract` first)")
    metadata = json.loads(read_text(meta_path))
    if metadata.get("format") != FORMAT_VERSION:
        raise UserFacingError(f"{meta_path}: knowledge format {metadata.get('format')!r}, expected {FORMAT_VERSION}")
    users, scenarios, items = (_read_level(folder, level, None if level in whole else COLD_START_ID)
                               for level in LEVELS)
    for level, records in ((USER, users), (ITEM, items)):
        if (level == USER or records) and COLD_START_ID not in records:
            raise UserFacingError(f"{folder}/{level}: no cold-start row ({COLD_START_ID!r}) for unknown {level}s")
    if not scenarios:
        raise UserFacingError(f"{folder}/{SCENARIO}: no scenario knowledge")
    widths = {r.vector.shape[0] for records in (users, scenarios, items) for r in records.values()}
    if len(widths) != 1:
        raise UserFacingError(f"{folder}: knowledge vectors have different widths {sorted(widths)}")
    return Knowledge(users, scenarios, metadata, items)


def write_knowledge(folder, users: Mapping[str, KnowledgeRecord], scenarios: Mapping[str, KnowledgeRecord],
                    metadata: Optional[dict] = None,
                    items: Optional[Mapping[str, KnowledgeRecord]] = None):
    """Writes a complete knowledge folder atomically (temporary sibling, then rename)."""
    staging = staging_dir(folder)
    try:
        levels = ((USER, users), (SCENARIO, scenarios)) + (((ITEM, items),) if items else ())
        for level, records in levels:
            _write_shard(records_to_table(records.values()), staging, level)
        write_metadata(staging, metadata or {})
        replace_dir(staging, folder)
    except BaseException:
        remove_tree(staging)
        raise
    return folder


def write_metadata(folder, metadata: dict) -> None:
    write_file(join(folder, METADATA), json.dumps({**metadata, "format": FORMAT_VERSION}, indent=2,
                                                          sort_keys=True) + "\n")


def row(prompt, vector, text: str) -> dict:
    """One artifact row (`SCHEMA`): a prompt (`prompts.Prompt`) with its vector and text."""
    return {"id": prompt.id, "vector": np.asarray(vector, np.float32).tolist(), "prompt": prompt.text,
            "prompt_hash": prompt.prompt_hash, "text": text}


def write_level(folder, level: str, rows: Iterable[dict]) -> None:
    """One level's rows as a single Parquet shard (what the Beam job writes as several)."""
    _write_shard(pa.Table.from_pylist(list(rows), schema=SCHEMA), folder, level)


def _write_shard(table: pa.Table, folder, level: str) -> None:
    """`folder/level/part-00000.parquet` (inside a staging folder: published by its rename)."""
    makedirs(join(folder, level))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with open_file(join(folder, f"{level}/part-00000.parquet"), "wb") as handle:
        handle.write(buffer.getvalue())


def read_parquet(path, columns=None, only_id: Optional[str] = None) -> pa.Table:
    """A Parquet file (the row of `only_id` alone, if given), local or remote (read whole first:
    object stores do not seek cheaply)."""
    source = io.BytesIO(read_bytes(path)) if is_uri(path) else path
    return pq.read_table(source, columns=columns, schema=None if columns else SCHEMA,
                         filters=None if only_id is None else [("id", "=", only_id)])


def records_to_table(records: Iterable[KnowledgeRecord]) -> pa.Table:
    records = list(records)
    return pa.table({
        "id": [r.id for r in records],
        "vector": [np.asarray(r.vector, np.float32).tolist() for r in records],
        "prompt": [r.prompt for r in records],
        "prompt_hash": [r.prompt_hash for r in records],
        "text": [r.text for r in records],
    }, schema=SCHEMA)


def _read_level(folder: str, level: str, only_id: Optional[str] = None) -> Dict[str, KnowledgeRecord]:
    records = {}
    for shard in glob(join(folder, f"{level}/*.parquet")):
        table = read_parquet(shard, only_id=only_id)
        vectors = table.column("vector").to_pylist()
        for row, vector in zip(table.drop(["vector"]).to_pylist(), vectors):
            records[row["id"]] = KnowledgeRecord(vector=np.asarray(vector, np.float32), **row)
    return records
