"""The evaluation regimes of `llm4msr data prepare --regime`: seeded, deterministic, leakage free."""
import pandas as pd
import pytest

from llm4msr.errors import DataError
from llm4msr.pipeline.data import canonical
from llm4msr.pipeline.data.prepare import prepare
from llm4msr.pipeline.data.split import HISTORY, cold_scenario_rows
from llm4msr.pipeline.knowledge import prompts as P
from llm4msr.pipeline.knowledge.artifact import USER
from llm4msr.pipeline.knowledge.templates import load_templates
from prompt_templates import titled_templates


def words(texts):  # a tokenizer stand-in: one token per word
    return [len(t.split()) for t in texts]


@pytest.fixture(scope="module")
def prepared(tiny_movielens, tmp_path_factory):
    def make(regime, seed=0, share=0.34):
        out = tmp_path_factory.mktemp("regime") / f"{regime}-{seed}"
        prepare("movielens-latest-small", out, data_dir=tiny_movielens, download=False, regime=regime,
                seed=seed, share=share)
        return canonical.read_dataset(out)
    return make


def test_regimes_are_deterministic_for_a_seed_and_change_with_it(prepared):
    for regime in ("new_users", "cold_scenario"):
        first, again, other = prepared(regime, 0), prepared(regime, 0), prepared(regime, 1)
        assert first.interactions["split"].tolist() == again.interactions["split"].tolist()
        assert first.interactions["split"].tolist() != other.interactions["split"].tolist()
        assert first.manifest["regime"] == regime and first.manifest["regime_share"] == 0.34


def test_new_users_have_history_and_held_out_rows_but_no_training_row(prepared):
    dataset = prepared("new_users")
    frame = dataset.interactions
    new = set(frame.loc[frame["split"] == HISTORY, "user_id"])
    users = frame["user_id"].nunique()
    assert len(new) == round(users * 0.34)
    assert not frame[frame["user_id"].isin(new) & (frame["split"] == "train")].size
    assert frame[frame["user_id"].isin(new) & (frame["split"] == "test")].shape[0] >= len(new)
    # the history is the user's past: every history row is older than the user's held-out rows
    for user in new:
        rows = frame[frame["user_id"] == user]
        assert rows.loc[rows["split"] == HISTORY, "timestamp"].max() <= rows.loc[rows["split"] != HISTORY, "timestamp"].min()
    # known users are split exactly as the time regime splits them
    time = prepared("time").interactions
    known = ~frame["user_id"].isin(new)
    assert frame.loc[known, "split"].tolist() == time.loc[known, "split"].tolist()


def test_a_new_users_prompt_holds_their_history_and_nothing_held_out(prepared, tmp_path):
    dataset = prepared("new_users")
    frame = dataset.interactions
    prompts = {p.id: p.text for p in P.build_prompts(dataset, titled_templates(tmp_path / "t"), words, 100_000)
               if p.level == USER}
    profiles = {p.id: p.text for p in P.build_prompts(dataset, load_templates(), words, 100_000) if p.level == USER}
    titles = dataset.items.set_index("item_id")["title"]
    checked = 0
    for user in sorted(set(frame.loc[frame["split"] == HISTORY, "user_id"])):
        rows = frame[frame["user_id"] == user]
        history_titles = {titles[i] for i in rows.loc[rows["split"] == HISTORY, "item_id"]}
        newest = rows[rows["split"] == HISTORY].sort_values("timestamp")["item_id"].iloc[-1]
        assert titles[newest] in prompts[user]
        history = rows[rows["split"] == HISTORY]  # the profile counts the history, nothing held out
        assert f"({int(history['label'].sum())} of {len(history)})." in profiles[user]
        for item in set(rows.loc[rows["split"] != HISTORY, "item_id"]):
            if not any(titles[item] in t for t in history_titles):
                assert titles[item] not in prompts[user], (user, item)
                checked += 1
    assert checked > 5


def test_prompt_history_prompts_list_no_training_label(prepared, tmp_path):
    """Regime prompt_history: each user's earliest train rows become history; the prompt describes
    those, so no item the model trains on for that user appears in their prompt."""
    dataset, time = prepared("prompt_history", share=0.5), prepared("time")
    frame = dataset.interactions
    assert frame.loc[frame["split"].isin(("eval", "test")), "split"].tolist() == \
        time.interactions.loc[time.interactions["split"].isin(("eval", "test")), "split"].tolist()  # same held-out rows
    templates = titled_templates(tmp_path / "t")
    prompts = {p.id: p.text for p in P.build_prompts(dataset, templates, words, 100_000) if p.level == USER}
    titles = dataset.items.set_index("item_id")["title"]
    checked = 0
    for user, rows in frame.groupby("user_id"):
        train, history = rows[rows["split"] == "train"], rows[rows["split"] == HISTORY]
        assert len(history) == len(rows[time.interactions.loc[rows.index, "split"] == "train"]) // 2
        if len(history):
            assert history["timestamp"].max() <= train["timestamp"].min()
        shown = {titles[i] for i in history["item_id"]}
        for item in set(train["item_id"]):
            if not any(titles[item] in t for t in shown):
                assert titles[item] not in prompts[user], (user, item)
                checked += 1
    assert checked > 5
    # under the time regime the same prompt lists training labels: the leak this regime removes
    leaky = {p.id: p.text for p in P.build_prompts(time, templates, words, 100_000) if p.level == USER}
    user = frame["user_id"].iloc[0]
    trained = time.interactions[(time.interactions["user_id"] == user) & (time.interactions["split"] == "train")]
    assert any(titles[i] in leaky[user] for i in trained["item_id"])


def test_history_rows_are_in_no_training_statistic(prepared):
    dataset = prepared("new_users")
    history = dataset.split(HISTORY)
    scenario = history["scenario"].iloc[0]
    prompt = next(p.text for p in P.build_prompts(dataset, load_templates(), words, 256) if p.id == scenario)
    train = dataset.split("train")
    assert f"{int((train['scenario'] == scenario).sum())} interactions" in prompt


def test_cold_scenario_holds_out_a_whole_scenario_of_a_user_who_keeps_the_others(prepared):
    frame = prepared("cold_scenario").interactions
    held = cold_scenario_rows(frame, 0.34, 0).dropna()
    cold = frame.loc[held.index, ["user_id", "scenario"]].drop_duplicates()
    assert len(cold) and cold["user_id"].is_unique  # one scenario per chosen user
    for user, scenario in zip(cold["user_id"], cold["scenario"]):
        rows = frame[frame["user_id"] == user]
        in_scenario = rows[rows["scenario"] == scenario]
        assert set(in_scenario["split"]) <= {"eval", "test"} and (in_scenario["split"] == "test").any()
        assert (rows.loc[rows["scenario"] != scenario, "split"] == "train").any()  # known elsewhere


def test_regimes_do_not_depend_on_the_process_hash_seed(tiny_movielens, tmp_path):
    """Set iteration order changes with PYTHONHASHSEED; a regime's split must not."""
    import hashlib
    import os
    import subprocess
    import sys

    digests = set()
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        subprocess.run([sys.executable, "-m", "llm4msr", "data", "prepare", "--regime", "cold_scenario",
                        "--data-dir", str(tiny_movielens), "--no-download", "--out", str(out)],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        digests.add(hashlib.sha256((out / canonical.INTERACTIONS).read_bytes()).hexdigest())
    assert len(digests) == 1


def test_unknown_regime_and_bad_share_are_clear_errors(tiny_movielens, tmp_path):
    with pytest.raises(DataError, match="unknown regime 'warm'"):
        prepare("movielens-latest-small", tmp_path / "a", data_dir=tiny_movielens, download=False, regime="warm")
    with pytest.raises(DataError, match="share must be between 0 and 1"):
        prepare("movielens-latest-small", tmp_path / "b", data_dir=tiny_movielens, download=False,
                regime="new_users", share=1.5)


def test_history_split_round_trips_and_never_becomes_an_example(prepared, tmp_path):
    dataset = prepared("new_users")
    canonical.write_dataset(dataset, tmp_path / "copy")
    assert canonical.read_dataset(tmp_path / "copy").interactions["split"].eq(HISTORY).sum() == len(dataset.split(HISTORY))
    from llm4msr.pipeline.components import _LineToExample

    header = list(pd.read_csv(tmp_path / "copy" / canonical.INTERACTIONS, nrows=0).columns)
    line = ",".join({"user_id": "1", "item_id": "1", "scenario": "S0", "label": "1", "timestamp": "5",
                     "split": HISTORY}[c] for c in header)
    assert list(_LineToExample(header).process(line)) == []
