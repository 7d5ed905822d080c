"""The fast experiment path without TFX: canonical data set (+ knowledge folder) -> trained model ->
test metrics (overall and per scenario AUC, logloss, gAUC).

Features: `user_id`, `item_id`, `category` (the item's first category) and `scenario` as
categorical, `year` (normalised with train statistics) as dense when items have one. Vocabularies
come from the train split only; index 0 is the out-of-vocabulary slot. Knowledge vectors are
inputs, not learned: every user gets their extracted vector (unknown users the cold-start one),
gathered per batch from an in-memory table.
"""
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data.canonical import Dataset, read_dataset
from llm4msr.pipeline.knowledge.artifact import Knowledge, read_knowledge
from llm4msr.trainer import metrics
from llm4msr.trainer.features import SCENARIO_KNOWLEDGE, USER_KNOWLEDGE, InputSpec
from llm4msr.trainer.model import ModelConfig, compile_ranking_model

CATEGORICAL = ("user_id", "item_id", "category")
USER_ROW, SCENARIO_ROW = "_user_row", "_scenario_row"  # indices into the knowledge tables


class Vocabulary:
    """Maps strings to `1..n` by descending train frequency; anything else maps to 0 (OOV)."""

    def __init__(self, values):
        counts = pd.Series(values).value_counts(sort=False)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        self.index = {value: position + 1 for position, (value, _) in enumerate(ordered)}

    @property
    def size(self) -> int:
        return len(self.index) + 1

    def lookup(self, values) -> np.ndarray:
        return pd.Series(values).map(self.index).fillna(0).to_numpy(np.int64)


@dataclass
class Encoded:
    """Model-ready arrays for one split, plus the raw ids the metrics group by."""
    features: Dict[str, np.ndarray]
    labels: np.ndarray
    users: np.ndarray
    scenarios: np.ndarray


class Encoder:
    """Turns canonical interactions into feature arrays; fitted on the train split."""

    def __init__(self, dataset: Dataset, knowledge: Optional[Knowledge] = None):
        train = self._join_items(dataset, dataset.split("train"))
        self.scenario_ids = dataset.scenario_ids
        self.vocabularies = {name: Vocabulary(train[name]) for name in CATEGORICAL}
        years = train["year"].astype(float) if "year" in train else pd.Series(dtype=float)
        self.has_year = bool(years.notna().any())
        self.year_mean = float(years.mean()) if self.has_year else 0.0
        self.year_std = float(years.std()) if self.has_year and years.std() > 0 else 1.0
        self.items = dataset.items
        self.knowledge = knowledge
        self.user_rows = {}
        if knowledge is not None:
            users = sorted(set(dataset.interactions["user_id"]))
            self.user_rows = {user: row for row, user in enumerate(users)}
            self.user_table = knowledge.user_matrix(users)
            self.scenario_table = knowledge.scenario_matrix(self.scenario_ids)

    def input_spec(self) -> InputSpec:
        categorical = {name: vocabulary.size for name, vocabulary in self.vocabularies.items()}
        categorical["scenario"] = len(self.scenario_ids)
        dim = self.knowledge.dim if self.knowledge is not None else 0
        return InputSpec(categorical, ["year"] if self.has_year else [], "scenario", dim, dim)

    def encode(self, dataset: Dataset, split: str) -> Encoded:
        rows = self._join_items(dataset, dataset.split(split))
        features = {name: self.vocabularies[name].lookup(rows[name]) for name in CATEGORICAL}
        scenario_index = {scenario: i for i, scenario in enumerate(self.scenario_ids)}
        features["scenario"] = rows["scenario"].map(scenario_index).to_numpy(np.int64)
        if self.has_year:
            year = rows["year"].astype(float).fillna(self.year_mean)
            features["year"] = ((year - self.year_mean) / self.year_std).to_numpy(np.float32)
        if self.knowledge is not None:
            features[USER_ROW] = rows["user_id"].map(self.user_rows).to_numpy(np.int64)
            features[SCENARIO_ROW] = features["scenario"]
        return Encoded(features, rows["label"].to_numpy(np.float32), rows["user_id"].to_numpy(),
                       rows["scenario"].to_numpy())

    def tf_dataset(self, encoded: Encoded, batch_size: int, shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        """Batches of `(features, label)`, assembled from in-memory columns by row index: tf.data
        handles one index per example and gathers the features (and knowledge vectors, which are not
        stored per row) once per batch, instead of building and batching a dict per example."""
        columns = {name: tf.constant(values) for name, values in encoded.features.items()}
        labels = tf.constant(encoded.labels)
        rows = tf.data.Dataset.range(len(encoded.labels))
        if shuffle_seed is not None:
            rows = rows.shuffle(len(encoded.labels), seed=shuffle_seed, reshuffle_each_iteration=True)
        if self.knowledge is not None:
            tables = {USER_KNOWLEDGE: (USER_ROW, tf.constant(self.user_table)),
                      SCENARIO_KNOWLEDGE: (SCENARIO_ROW, tf.constant(self.scenario_table))}
        else:
            tables = {}

        def assemble(index):
            features = {name: tf.gather(column, index) for name, column in columns.items()}
            for name, (row, table) in tables.items():
                features[name] = tf.gather(table, features.pop(row))
            return features, tf.gather(labels, index)
        return rows.batch(batch_size).map(assemble, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def _join_items(self, dataset: Dataset, interactions: pd.DataFrame) -> pd.DataFrame:
        items = dataset.items.set_index("item_id")
        rows = interactions.reset_index(drop=True).copy()
        first = items["categories"].fillna("").astype(str).str.split("|").str[0]
        rows["category"] = rows["item_id"].map(first).fillna("")
        if "year" in items.columns:
            rows["year"] = rows["item_id"].map(pd.to_numeric(items["year"], errors="coerce"))
        return rows


def load_knowledge(knowledge_dir, mode: str) -> Optional[Knowledge]:
    """The knowledge folder when the mode needs one; a clear error when it is missing."""
    if mode == "none":
        return None
    if knowledge_dir is None:
        raise UserFacingError(f"--knowledge {mode} needs knowledge vectors: pass --knowledge-dir DIR "
                              f"(written by `llm4msr knowledge extract`), or use --knowledge none")
    return read_knowledge(knowledge_dir)


def train(data_dir, config: ModelConfig, knowledge_dir=None, seed: int = 0, epochs: int = 10,
          batch_size: int = 1024, patience: int = 2, verbose: int = 2) -> dict:
    """Trains with early stopping on eval AUC (best weights restored) and reports test metrics."""
    knowledge = load_knowledge(knowledge_dir, config.knowledge)
    dataset = read_dataset(data_dir)
    tf.keras.utils.set_random_seed(seed)
    encoder = Encoder(dataset, knowledge)
    spec = encoder.input_spec()
    splits = {name: encoder.encode(dataset, name) for name in ("train", "eval", "test")}
    for name, encoded in splits.items():
        if not len(encoded.labels):
            raise UserFacingError(f"{data_dir}: the {name} split is empty")
    ranking, summary = fit(encoder, splits, config, seed, epochs, batch_size, patience, verbose)
    test = splits["test"]
    scores = ranking.predict(encoder.tf_dataset(test, batch_size), verbose=0)
    return {
        "data": str(data_dir), **summary,
        "test": metrics.report(test.labels, scores, test.users, test.scenarios, encoder.scenario_ids),
        "config": config.to_dict(), "input_spec": spec.to_dict(),
    }


def fit(encoder: "Encoder", splits: dict, config: ModelConfig, seed: int, epochs: int, batch_size: int,
        patience: int, verbose: int = 0):
    """Trains on the train split with early stopping on eval AUC (best weights restored).
    Returns the trained `RankingModel` and a summary: epochs, best epoch and eval AUC, seconds, size."""
    tf.keras.utils.set_random_seed(seed)
    ranking = compile_ranking_model(config, encoder.input_spec())
    stopper = tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience,
                                               restore_best_weights=True)
    started = time.time()
    history = ranking.fit(encoder.tf_dataset(splits["train"], batch_size, shuffle_seed=seed),
                          validation_data=encoder.tf_dataset(splits["eval"], batch_size),
                          epochs=epochs, callbacks=[stopper], verbose=verbose)
    return ranking, {
        "backbone": config.backbone, "knowledge": config.knowledge, "seed": seed,
        "epochs": len(history.history["val_auc"]), "best_epoch": stopper.best_epoch + 1,
        "best_eval_auc": float(stopper.best), "train_seconds": round(time.time() - started, 2),
        "parameters": int(ranking.model.count_params()),
    }


def format_report(result: dict) -> str:
    """A small table: overall and per-scenario test AUC, gAUC, logloss."""
    lines = [f"{result['backbone']} knowledge={result['knowledge']} seed={result['seed']}: "
             f"{result['epochs']} epochs (best {result['best_epoch']}), {result['train_seconds']:.1f} s",
             f"{'slice':<10}{'examples':>10}{'AUC':>9}{'gAUC':>9}{'logloss':>9}"]
    rows = [("overall", result["test"]["overall"]), *result["test"]["scenarios"].items()]
    for name, values in rows:
        lines.append(f"{name:<10}{values['examples']:>10}{values['auc']:>9.4f}{values['gauc']:>9.4f}"
                     f"{values['logloss']:>9.4f}")
    return "\n".join(lines)
