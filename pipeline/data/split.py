"""Train / eval / test splitting (docs/DATA_FORMAT.md, "Splits and leakage"), and the
evaluation regimes where knowledge should matter.

Regimes (`llm4msr data prepare --regime`), applied on top of the split method:
- `time` (default): the split alone.
- `new_users`: a seeded share of users (default 20 %) are new to the model. What the split would
  make their train rows becomes `history`: interactions that feed their user-level prompt and
  nothing else (no training row, no vocabulary, no statistic). Their eval and test rows stay, so
  their ids are unknown to the model and their knowledge is the only per-user signal.
- `cold_scenario`: a seeded share of the users active in two or more scenarios (default 20 %) lose
  one of their scenarios (seeded): all their rows there are held out (the earlier half by time to
  eval, the rest to test) while their other scenarios are split as usual: the paper's
  cross-scenario case, the user is known but never seen in that scenario.
- `prompt_history`: for every user, the earliest share of their train rows (by time; pass e.g.
  `--regime-share 0.5`) becomes `history`, which their prompt describes, and only the later train
  rows are examples. Without it a prompt lists liked and disliked train items whose labels the
  model is trained on: knowledge then looks more predictive in training than it is on eval/test.
"""
import numpy as np
import pandas as pd

SPLITS = ("train", "eval", "test")
HISTORY = "history"  # interactions that feed only the user's prompt: never a training row or statistic
ALL_SPLITS = (*SPLITS, HISTORY)
HOLDOUT_FRACTION = 0.1
REGIMES = ("time", "new_users", "cold_scenario", "prompt_history")
REGIME_SHARE = 0.2


def time_split(interactions: pd.DataFrame) -> pd.Series:
    """Per user, by time: the last 10 % of a user's interactions (at least one) go to test, the
    10 % before them to eval (at least one when the user keeps a training interaction), the rest
    to train. Ties in time are ordered by item id so the split is deterministic."""
    if interactions.empty:
        return pd.Series([], index=interactions.index, dtype=object)
    order = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort").index
    ordered = interactions.loc[order]
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    count = ordered.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    n_test = np.maximum(1, np.round(count * HOLDOUT_FRACTION)).astype(int)
    n_eval = np.where(count - n_test >= 2, np.maximum(1, np.round(count * HOLDOUT_FRACTION)), 0)
    from_end = count - position  # 1 for a user's last interaction
    split = np.where(from_end <= n_test, "test", np.where(from_end <= n_test + n_eval, "eval", "train"))
    return pd.Series(split, index=order).reindex(interactions.index)


def random_split(interactions: pd.DataFrame, seed: int) -> pd.Series:
    """Seeded random 8:1:1 over interactions."""
    draw = np.random.default_rng(seed).random(len(interactions))
    split = np.where(draw < 0.8, "train", np.where(draw < 0.9, "eval", "test"))
    return pd.Series(split, index=interactions.index)


def new_users(interactions: pd.DataFrame, split: pd.Series, share: float, seed: int) -> pd.Series:
    """`split` with the train rows of a seeded `share` of users turned into `history`."""
    chosen = _seeded_choice(sorted(interactions["user_id"].unique()), share, seed)
    return split.where(~(interactions["user_id"].isin(chosen) & (split == "train")), HISTORY)


def prompt_history(interactions: pd.DataFrame, split: pd.Series, share: float) -> pd.Series:
    """`split` with the earliest `share` of every user's train rows turned into `history`."""
    train = interactions[split == "train"]
    keys = ["user_id", "timestamp", "item_id"] if "timestamp" in train.columns else ["user_id", "item_id"]
    ordered = train.sort_values(keys, kind="mergesort")
    position = ordered.groupby("user_id", sort=False).cumcount()
    count = ordered.groupby("user_id", sort=False)["user_id"].transform("size")
    earliest = ordered.index[(position < np.floor(count * share)).to_numpy()]
    return split.where(~split.index.isin(earliest), HISTORY)


def cold_scenario_rows(interactions: pd.DataFrame, share: float, seed: int) -> pd.Series:
    """For a seeded `share` of multi-scenario users, one seeded scenario's rows: `eval` (the
    earlier half by time) or `test`; every other row `None` (split as usual)."""
    per_user = interactions.groupby("user_id")["scenario"].unique()
    candidates = sorted(per_user[per_user.map(len) >= 2].index)
    rng = np.random.default_rng([seed, 1])
    cold = {user: sorted(per_user[user])[rng.integers(len(per_user[user]))]
            for user in sorted(_seeded_choice(candidates, share, seed))}  # sorted: set order varies by process
    held = interactions["scenario"].eq(interactions["user_id"].map(cold))
    rows = interactions[held]
    keys = ["user_id", "timestamp", "item_id"] if "timestamp" in rows.columns else ["user_id", "item_id"]
    ordered = rows.sort_values(keys, kind="mergesort")
    position = ordered.groupby("user_id", sort=False).cumcount()
    count = ordered.groupby("user_id", sort=False)["user_id"].transform("size")
    held_split = pd.Series(np.where(position < count // 2, "eval", "test"), index=ordered.index)
    return held_split.reindex(interactions.index)


def _seeded_choice(values, share: float, seed: int) -> set:
    """A seeded `share` of `values` (the share is validated by `canonical.assign_split`)."""
    values = list(values)
    count = int(round(len(values) * share))
    return set(np.random.default_rng(seed).permutation(values)[:count].tolist()) if values else set()
