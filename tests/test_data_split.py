"""Properties of the splitters (hypothesis generates the interaction logs)."""
import numpy as np
import pandas as pd
from hypothesis import given, settings, strategies as st

from llm4msr.pipeline.data.split import random_split, time_split

logs = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40), st.integers(0, 50)),
                min_size=1, max_size=200, unique_by=lambda row: row)


def _frame(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"user_id": str, "item_id": str})
    return frame.sample(frac=1.0, random_state=1)  # the input order must not matter


@settings(max_examples=150, deadline=None)
@given(logs)
def test_time_split_never_puts_test_before_train(rows):
    frame = _frame(rows)
    frame["split"] = time_split(frame)
    assert frame["split"].isin(["train", "eval", "test"]).all()  # every row in exactly one split
    for _, user in frame.groupby("user_id"):
        assert (user["split"] == "test").sum() >= 1
        train_times = user.loc[user["split"] == "train", "timestamp"]
        later = user.loc[user["split"] != "train", "timestamp"]
        if len(train_times) and len(later):
            assert later.min() >= train_times.max()
        eval_times = user.loc[user["split"] == "eval", "timestamp"]
        if len(eval_times):
            assert user.loc[user["split"] == "test", "timestamp"].min() >= eval_times.max()


@settings(max_examples=50, deadline=None)
@given(logs)
def test_time_split_is_deterministic_whatever_the_row_order(rows):
    frame = _frame(rows)
    shuffled = frame.sample(frac=1.0, random_state=7)
    assert time_split(frame).sort_index().tolist() == time_split(shuffled).sort_index().tolist()


def test_time_split_holds_out_ten_percent_per_user():
    frame = pd.DataFrame({"user_id": ["u"] * 20, "item_id": [str(i) for i in range(20)], "timestamp": range(20)})
    split = time_split(frame)
    assert split.tolist() == ["train"] * 16 + ["eval"] * 2 + ["test"] * 2


@settings(max_examples=50, deadline=None)
@given(logs, st.integers(0, 2**31))
def test_random_split_is_seeded(rows, seed):
    frame = _frame(rows)
    assert random_split(frame, seed).tolist() == random_split(frame, seed).tolist()


def test_random_split_is_eight_one_one():
    frame = pd.DataFrame({"user_id": ["u"] * 100_000})
    shares = random_split(frame, seed=3).value_counts(normalize=True)
    assert np.allclose([shares["train"], shares["eval"], shares["test"]], [0.8, 0.1, 0.1], atol=0.01)
    assert random_split(frame, seed=3).tolist() != random_split(frame, seed=4).tolist()
