"""Train / eval / test splitting (../shared/docs/DATA_FORMAT.md, "Splits and leakage")."""
import numpy as np
import pandas as pd

SPLITS = ("train", "eval", "test")
HOLDOUT_FRACTION = 0.1


def time_split(interactions: pd.DataFrame) -> pd.Series:
    """Per user, by time: the last 10 % of a user's interactions (at least one) go to test, the
    10 % before them to eval (at least one when the user keeps a training interaction), the rest
    to train. Ties in time are ordered by item id so the split is deterministic."""
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
