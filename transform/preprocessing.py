"""The feature contract: `preprocessing_fn` is the one definition of every model input, for the TFX
Transform component and for `llm4msr train` alike (which runs this same function with tf.Transform
on an in-memory Beam pipeline, `llm4msr.trainer.fast`).

Raw inputs, what an example and a serving request carry: `user_id`, `item_id`, `scenario` strings,
`label` (training and evaluation only) and the knowledge vectors. Item and user attributes are
looked up by id inside the graph from the data set's `items.csv` / `users.csv` (read when the
function is traced), so a served model takes ids only and an unknown id gets the
out-of-vocabulary slot or the train mean.

| output | kind | computed from |
|---|---|---|
| `user_id`, `item_id` | vocabulary index; out of vocabulary = the last index | train rows |
| `item_category` | vocabulary index | the first of `items.csv` `categories` |
| `item_<column>`, `user_<column>` | vocabulary index (text) or z-score (numeric, e.g. `year`) | other columns of `items.csv` / `users.csv` |
| `scenario` | fixed index 0..S-1, the order of scenarios.json | |
| `user_knowledge`, `scenario_knowledge`, `item_knowledge` | float32 vectors (when the examples carry them): centred on the train mean and scaled to unit mean squared norm, with `knowledge_reduction` = k first projected on the k leading principal directions (`normalize_knowledge`) | train rows |
| `slice_user_history`, `slice_item_popularity`, `slice_item_long_tail`, `slice_user_scenario_history` | bucket index of the train rows of the user, the item, the user in this scenario (`HISTORY_BUCKETS`, `POPULARITY_BUCKETS`, `LONG_TAIL_BUCKETS`); evaluation slices, not model inputs | train rows |
| `label` | 0/1 | |

Every statistic (vocabularies, means, counts) comes from the train split only: Transform analyses
`train` and applies the result to every split.
"""
import functools
from typing import Dict, List

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_transform as tft

from llm4msr.contract import KNOWLEDGE_FEATURES, LABEL, RAW_FEATURES, SCENARIO

OOV_BUCKETS = 1
# Ids with fewer train rows share the out-of-vocabulary embedding, which so learns what a rare or new
# id looks like. Chosen on eval (ml-latest-small, STAR knowledge=both, 3 seeds): mean eval AUC
# 0.7575 / 0.7687 / 0.7735 for 1 / 3 / 10 rows, logloss 0.598 / 0.584 / 0.578.
ID_MIN_TRAIN_ROWS = 10
SLICE_PREFIX = "slice_"
# Lower edges of the evaluation slices, in train rows: history 0, 1-5, 6-20, 21+; popularity 0, 1-5, 6-50, 51+.
HISTORY_BUCKETS = (0, 1, 6, 21)
POPULARITY_BUCKETS = (0, 1, 6, 51)
LONG_TAIL_BUCKETS = (0, 6)  # long-tail items: 0-5 train rows (their ids share the out-of-vocabulary slot)
# slice -> (the raw features whose train rows are counted, bucket edges); the user's history in the
# row's scenario has bucket "0" for a scenario the user never had in train (regime cold_scenario)
SLICES = {"slice_user_history": (("user_id",), HISTORY_BUCKETS),
          "slice_item_popularity": (("item_id",), POPULARITY_BUCKETS),
          "slice_item_long_tail": (("item_id",), LONG_TAIL_BUCKETS),
          "slice_user_scenario_history": (("user_id", SCENARIO), HISTORY_BUCKETS)}
# items.csv columns that are text for prompts, not features
ITEM_TEXT_COLUMNS = ("title", "description")


def preprocessing_fn(inputs, custom_config):
    """`custom_config["dataset_dir"]` is the canonical data set (a path or a URI): its scenarios.json
    orders the scenario ids, so the index of a scenario, and with it its per-scenario parameters,
    never depends on the rows; its items.csv / users.csv give the attributes."""
    from llm4msr.pipeline.data.canonical import read_scenario_ids

    user, item = _squeeze(inputs["user_id"]), _squeeze(inputs["item_id"])
    min_rows = int(custom_config.get("id_min_train_rows", ID_MIN_TRAIN_ROWS))
    outputs = {name: tft.compute_and_apply_vocabulary(value, num_oov_buckets=OOV_BUCKETS, vocab_filename=name,
                                                      frequency_threshold=min_rows)
               for name, value in (("user_id", user), ("item_id", item))}
    tables = attribute_tables(custom_config["dataset_dir"])
    for key, table in ((item, tables.items), (user, tables.users)):
        for name, attribute in _lookup_attributes(key, table).items():
            outputs[name] = _encode_attribute(name, attribute)
    outputs[SCENARIO] = scenario_index(_squeeze(inputs[SCENARIO]), read_scenario_ids(custom_config["dataset_dir"]))
    outputs.update(train_count_buckets({"user_id": user, "item_id": item, SCENARIO: _squeeze(inputs[SCENARIO])}))
    width = int(custom_config.get("knowledge_reduction", 0))
    for name in KNOWLEDGE_FEATURES:
        if name in inputs:
            outputs[name] = normalize_knowledge(tf.cast(inputs[name], tf.float32), width, name)
    if LABEL in inputs:
        outputs[LABEL] = _squeeze(inputs[LABEL])
    return outputs


def normalize_knowledge(vectors: tf.Tensor, width: int, name: str) -> tf.Tensor:
    """`[B, dim]` LLM vectors -> `[B, width or dim]`: centred on the train mean, projected on the
    train rows' `width` principal directions (`tft.pca`; 0: no projection), scaled to unit mean
    squared norm on train. The raw vectors of one LLM share a large common direction (MiniLM users:
    mean pairwise cosine 0.90) and their scale differs from LLM to LLM; what tells users (items)
    apart is in the directions left after removing it, at a scale the model's projections can
    start from whatever the LLM."""
    dim = int(vectors.shape[-1])
    if width > dim:
        raise ValueError(f"knowledge_reduction {width} is wider than the {name} vectors ({dim})")
    mean = tft.mean(vectors, reduce_instance_dims=False, name=f"{name}_mean")
    if width:
        # one analysis pass: the variance of each component is its direction's quadratic form in the
        # train covariance (a second pass over the projected rows would cost a re-read of the data)
        basis = tft.pca(vectors, output_dim=width, dtype=tf.float32, name=f"{name}_pca")  # [dim, width]
        covariance = tft.covariance(vectors, dtype=tf.float32, name=f"{name}_covariance")
        total_variance = tf.reduce_sum(basis * tf.matmul(covariance, basis))
        centred = tf.matmul(vectors - mean, basis)
    else:
        total_variance = tf.reduce_sum(tft.var(vectors, reduce_instance_dims=False, name=f"{name}_variance"))
        centred = vectors - mean
    # one scale for every component, so the spectrum keeps its shape; whitening each component to unit
    # variance measured worse on eval (ml-latest-small; docs/RESULTS.md)
    return centred * tf.math.rsqrt(tf.maximum(total_variance, 1e-12))


def transform_knowledge(transform_layer, name: str, vectors: np.ndarray, knowledge_dims: Dict[str, int],
                        scenario_id: str, chunk: int = 65_536) -> np.ndarray:
    """A knowledge table `[rows, dim]` through the fitted Transform graph: `name`'s output per row.
    The knowledge outputs depend on their own input only, so one pass over a table of distinct
    users (items) equals transforming every example's copy; the other inputs are placeholders
    (empty ids, a known scenario, zero vectors of `knowledge_dims`)."""
    parts = []
    for start in range(0, len(vectors), chunk):
        rows = np.asarray(vectors[start:start + chunk], np.float32)
        raw = {feature: tf.constant(np.full((len(rows), 1), scenario_id if feature == SCENARIO else ""))
               for feature in RAW_FEATURES}
        raw.update({other: tf.zeros([len(rows), dim]) for other, dim in knowledge_dims.items()})
        raw[name] = tf.constant(rows)
        parts.append(transform_layer(raw)[name].numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def raw_feature_spec() -> dict:
    """The raw features of an interaction (what CanonicalExampleGen writes, before knowledge is joined)."""
    spec = {name: tf.io.FixedLenFeature([1], tf.string) for name in RAW_FEATURES}
    spec[LABEL] = tf.io.FixedLenFeature([1], tf.int64)
    return spec


def scenario_index(scenario: tf.Tensor, scenario_ids) -> tf.Tensor:
    """Maps scenario ids to 0..S-1; an unknown id fails loudly instead of borrowing another's weights."""
    # a comparison against a handful of ids; a lookup table would be re-initialised on every call
    matches = tf.equal(tf.expand_dims(scenario, -1), tf.constant(list(scenario_ids)))
    known = tf.reduce_any(matches, axis=-1)
    # the message quotes the first unknown id (a 60-character prefix of it: a request may carry anything)
    first_unknown = tf.strings.substr(tf.strings.reduce_join(tf.boolean_mask(scenario, ~known)[:1]), 0, 60)
    message = tf.strings.join(["unknown scenario id '", first_unknown, f"' (known: {', '.join(scenario_ids)})"])
    with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(known), [message])]):
        return tf.argmax(tf.cast(matches, tf.int64), axis=-1)


# -- item and user attributes ------------------------------------------------------------------------

class AttributeTable:
    """Attribute columns of items.csv or users.csv, keyed by id: text columns as strings ("" when
    missing), numeric columns as float32 (NaN when missing)."""

    def __init__(self, ids: List[str], columns: Dict[str, np.ndarray]):
        self.ids, self.columns = ids, columns


class AttributeTables:
    def __init__(self, items: AttributeTable, users: AttributeTable):
        self.items, self.users = items, users


@functools.lru_cache(maxsize=4)
def attribute_tables(dataset_dir: str) -> AttributeTables:
    """The attribute features of a canonical data set (read once per process and folder: Transform
    traces `preprocessing_fn` several times)."""
    from llm4msr.pipeline.data.canonical import read_items, read_users

    items = read_items(dataset_dir)
    item_columns = {"item_category": items["categories"].fillna("").astype(str).str.split("|").str[0].str.strip()}
    for column in items.columns:
        if column not in ("item_id", "categories", *ITEM_TEXT_COLUMNS):
            item_columns[f"item_{column}"] = items[column]
    users = read_users(dataset_dir)
    user_columns = {} if users is None else {f"user_{c}": users[c] for c in users.columns if c != "user_id"}
    return AttributeTables(_table(items["item_id"], item_columns),
                           _table(users["user_id"] if users is not None else pd.Series([], dtype=str), user_columns))


def _table(ids: pd.Series, columns: Dict[str, pd.Series]) -> AttributeTable:
    typed = {}
    for name, values in columns.items():
        text = values.fillna("").astype(str).str.strip()
        numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
        is_numeric = bool((text != "").any()) and bool(numbers.notna().eq(text != "").all())
        typed[name] = numbers.to_numpy(np.float32) if is_numeric else text.to_numpy(object)
    return AttributeTable(ids.astype(str).tolist(), typed)


def _lookup_attributes(key: tf.Tensor, table: AttributeTable) -> Dict[str, tf.Tensor]:
    """Every attribute of `key`'s row; ids not in the table get "" / NaN."""
    if not table.columns:
        return {}
    with tf.init_scope():  # built once, not on every call of the traced function
        rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(table.ids), tf.range(len(table.ids), dtype=tf.int64)),
            default_value=-1)
        values = {name: tf.constant(np.append(column, np.array(["" if column.dtype == object else np.nan],
                                                               column.dtype)))
                  for name, column in table.columns.items()}
    row = rows.lookup(key)
    row = tf.where(row < 0, tf.cast(len(table.ids), tf.int64), row)  # the appended missing value
    return {name: tf.gather(column, row) for name, column in values.items()}


def _encode_attribute(name: str, value: tf.Tensor) -> tf.Tensor:
    if value.dtype == tf.string:
        return tft.compute_and_apply_vocabulary(value, num_oov_buckets=OOV_BUCKETS, vocab_filename=name)
    known = tf.math.is_finite(value)
    train_values = tf.boolean_mask(value, known)
    mean, variance = tft.mean(train_values), tft.var(train_values)
    scaled = (value - mean) * tf.math.rsqrt(tf.maximum(variance, 1e-12))
    return tf.where(known, scaled, tf.zeros_like(scaled))  # missing: the train mean


def train_count_buckets(raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Every slice of `SLICES`: the index of the bucket (by lower edge) holding the number of train
    rows of the row's key. The counts of every key kind (users, items, user-scenario pairs) come from
    one vocabulary with frequencies ("count key" lines), each key tagged with the features it joins:
    a vocabulary is about 90 Beam transforms, and one per slice was a third of the Transform's."""
    tagged = {keys: tf.strings.join(["+".join(keys), *(raw[k] for k in keys)], separator="\x1f")
              for keys, _ in SLICES.values()}
    all_keys = tf.concat(list(tagged.values()), axis=0)  # [kinds * B]
    counts_file = tft.vocabulary(all_keys, store_frequency=True, vocab_filename="slice_train_counts")

    def count_lookup(values, filename):
        table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            filename, key_dtype=tf.string, key_index=1, value_dtype=tf.int64, value_index=0, delimiter=" "),
            default_value=0)
        return table.lookup(values), table.size()

    counts = tft.apply_vocabulary(all_keys, counts_file, lookup_fn=count_lookup)
    by_kind = dict(zip(tagged, tf.split(counts, len(tagged))))
    buckets = {}
    for name, (keys, edges) in SLICES.items():
        buckets[name] = tf.reduce_sum(tf.cast(tf.expand_dims(by_kind[keys], -1) >= tf.constant(edges[1:], tf.int64),
                                              tf.int64), axis=-1)
    return buckets


def slice_names(name: str) -> List[str]:
    """Readable bucket names of a slice feature, by index: e.g. ['0', '1-5', '6-20', '21+']."""
    edges = SLICES[name][1]
    names = []
    for index, low in enumerate(edges):
        high = edges[index + 1] - 1 if index + 1 < len(edges) else None
        names.append(f"{low}+" if high is None else (str(low) if high == low else f"{low}-{high}"))
    return names


def _squeeze(tensor: tf.Tensor) -> tf.Tensor:
    """Scalar features arrive as [B, 1] (fixed-shape schema); the model takes [B]."""
    return tf.reshape(tensor, [-1]) if tensor.shape.rank == 2 else tensor
