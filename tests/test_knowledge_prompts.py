"""Prompt content: train split only, whole-item trimming (oldest first), cold start, templates."""
import dataclasses

import pandas as pd
import pytest

from llm4msr.pipeline.data import canonical
from llm4msr.pipeline.data.prepare import prepare
from llm4msr.pipeline.knowledge import prompts as P
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, ITEM, SCENARIO, USER
from llm4msr.pipeline.knowledge.llm import load_tokenizer, resolve_model, token_counter
from llm4msr.pipeline.knowledge.templates import DEFAULT_DIR, TemplateError, load_templates
from prompt_templates import titled_templates


@pytest.fixture(scope="module")
def dataset(tiny_movielens, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare("movielens-latest-small", out, data_dir=tiny_movielens, download=False)
    return canonical.read_dataset(out)


@pytest.fixture(scope="module")
def count():
    return token_counter(load_tokenizer(resolve_model("minilm")))


def words(texts):  # a tokenizer stand-in: one token per word
    return [len(t.split()) for t in texts]


def by_id(prompts, level):
    return {p.id: p for p in prompts if p.level == level}


def test_user_prompts_use_only_train_items(dataset, count, tmp_path):
    users = by_id(P.build_prompts(dataset, titled_templates(tmp_path / "titled"), count, 10_000), USER)  # no trimming
    titles = dataset.items.set_index("item_id")["title"]
    checked = 0
    for user, rows in dataset.interactions.groupby("user_id"):
        train_items = set(rows.loc[rows["split"] == "train", "item_id"])
        held_out = set(rows.loc[rows["split"] != "train", "item_id"]) - train_items
        train_titles = {titles[i] for i in train_items}
        for item in held_out:
            title = titles[item]
            if not any(title in t for t in train_titles):  # a substring of a train title proves nothing
                assert title not in users[user].text, (user, title)
                checked += 1
    assert checked > 50
    # and the user's newest liked train item is there
    newest = dataset.split("train").sort_values("timestamp").groupby("user_id").last()
    assert titles[newest.loc["2", "item_id"]] in users["2"].text


def test_user_profiles_state_train_counts_and_categories_in_words(dataset, count):
    users = by_id(P.build_prompts(dataset, load_templates(), count, 256), USER)
    train = dataset.split("train")
    for user in sorted(set(train["user_id"]))[:5]:
        rows = train[train["user_id"] == user]
        liked, rated = int(rows["label"].sum()), len(rows)
        words = P.share_words(load_templates()[USER], liked, rated)
        assert f"Overall they liked {words} of the {rated} items they rated ({liked} of {rated})." in users[user].text
        for scenario in dataset.scenarios:
            in_scenario = rows[rows["scenario"] == scenario.id]
            if len(in_scenario):
                assert f'In "{scenario.name}" they liked ' in users[user].text
                assert f"({int(in_scenario['label'].sum())} of {len(in_scenario)})" in users[user].text
            else:
                assert f'Nothing rated in "{scenario.name}" yet.' in users[user].text
    # eval and test rows changed (labels flipped): not one user prompt changes
    interactions = dataset.interactions
    held_out = interactions["split"] != "train"
    flipped = interactions.assign(label=interactions["label"].where(~held_out, 1 - interactions["label"]))
    other = by_id(P.build_prompts(canonical.Dataset(flipped, dataset.items, dataset.scenarios), load_templates(),
                                  count, 256), USER)
    assert {k: p.text for k, p in other.items()} == {k: p.text for k, p in users.items()}


def test_profile_ranks_categories_by_smoothed_liked_share():
    rows = pd.DataFrame({"user_id": ["u"] * 7, "scenario": ["S0"] * 7, "item_id": list("abcdefg"),
                         "label": [1, 1, 1, 0, 0, 0, 1]})
    items = pd.DataFrame({"item_id": list("abcdefg"),
                          "categories": ["Comedy", "Comedy", "Comedy|Drama", "Horror", "Horror", "Drama", "Western"]})
    data = canonical.Dataset(rows.assign(split="train"), items, [])
    profiles = P.user_profiles(data, rows, load_templates()[USER])["u"]
    # smoothed: Comedy 4/5, Drama 2/4, Horror 1/4; Western rated once: below category_min_rated
    assert profiles["S0"] == P.Profile(rated=7, liked=4, favourite="Comedy, Drama", least="Horror")
    assert profiles[""] == profiles["S0"]
    assert P.share_words(load_templates()[USER], 4, 7) == "more than half"
    assert P.share_words(load_templates()[USER], 0, 0) == "almost none"
    broken = dataclasses.replace(load_templates()[USER], settings={"share_words": [[0.5, "half"]]})
    with pytest.raises(TemplateError, match="share_words: expected .* edge 0"):
        P.share_words(broken, 1, 4)


def test_scenario_statistics_count_train_only(dataset, count):
    scenarios = by_id(P.build_prompts(dataset, load_templates(), count, 256), SCENARIO)
    assert list(scenarios) == ["S0", "S1", "S2"]
    train = dataset.split("train")
    s0 = train[train["scenario"] == "S0"]
    assert f"{len(s0)} interactions" in scenarios["S0"].text
    all_s0 = int((dataset.interactions["scenario"] == "S0").sum())
    assert all_s0 > len(s0) and f"{all_s0} interactions" not in scenarios["S0"].text
    assert f"positive rate {s0['label'].mean():.1%}" in scenarios["S0"].text
    assert '"light & family"' in scenarios["S0"].text and '"drama & other"' in scenarios["S0"].text


def test_budget_trims_whole_items_oldest_first(dataset, tmp_path):
    template = titled_templates(tmp_path / "titled")[USER]
    history = P.user_histories(dataset, dataset.split("train"), template)["2"]
    assert len(history) > 5
    profiles = P.user_profiles(dataset, dataset.split("train"), template)["2"]

    def render(kept):
        return P.user_prompt(dataset, template, "", kept, profiles)

    full = words([render(history)])[0]
    budget = full - 12
    text, n = P.fit_to_budget(render, history, words, budget)
    assert n <= budget and n == words([text])[0]
    kept = next(k for k in range(len(history)) if render(history[:k]) == text)
    assert words([render(history[:kept + 1])])[0] > budget  # as many items as fit
    for item in history[:kept]:
        assert item.text in text  # whole, newest items kept
    for item in history[kept:]:
        assert item.text not in text or any(item.text in h.text for h in history[:kept])


def test_every_prompt_fits_the_model_budget(dataset, count, tmp_path):
    prompts = P.build_prompts(dataset, titled_templates(tmp_path / "titled"), count, 256)
    assert max(p.n_tokens for p in prompts) <= 256
    assert all(p.n_tokens == n for p, n in zip(prompts, count([p.text for p in prompts])))
    assert sum(p.n_tokens > 200 for p in prompts) > 10  # the budget is actually used


def test_cold_start_for_users_without_train_history(dataset, count):
    extra = pd.DataFrame({"user_id": ["new"], "item_id": [dataset.items["item_id"].iloc[0]], "scenario": ["S0"],
                          "label": [1], "timestamp": [2_000_000_000], "split": ["test"]})
    grown = canonical.Dataset(pd.concat([dataset.interactions, extra], ignore_index=True), dataset.items,
                              dataset.scenarios, pd.DataFrame({"user_id": ["2", "ghost"], "age": ["25", ""]}))
    users = by_id(P.build_prompts(grown, load_templates(), count, 256), USER)
    cold = users[COLD_START_ID].text
    assert "nothing is known" in cold
    assert users["new"].text == cold and users["ghost"].text == cold
    assert users["2"].text != cold and "User attributes: age: 25." in users["2"].text
    assert "attributes" not in users["3"].text


def test_no_train_rows_is_a_clear_error(dataset, count):
    only_test = dataset.interactions.assign(split="test")
    empty = canonical.Dataset(only_test, dataset.items, dataset.scenarios)
    with pytest.raises(P.EmptyDatasetError, match="no train interactions"):
        P.build_prompts(empty, load_templates(), count, 256)


def test_template_version_follows_content(tmp_path):
    bundled = load_templates()
    for level in ("user", "scenario", "item"):
        (tmp_path / f"{level}.tmpl").write_text((DEFAULT_DIR / f"{level}.tmpl").read_text())
    assert {k: t.version for k, t in load_templates(tmp_path).items()} == {k: t.version for k, t in bundled.items()}
    edited = (DEFAULT_DIR / "user.tmpl").read_text().replace("Question:", "Ask:")
    (tmp_path / "user.tmpl").write_text(edited)
    changed = load_templates(tmp_path)
    assert changed["user"].version != bundled["user"].version
    assert changed["scenario"].version == bundled["scenario"].version
    (tmp_path / "user.tmpl").write_text("version: 1\n=== prompt ===\nhi\n")
    with pytest.raises(TemplateError, match="missing section"):
        load_templates(tmp_path)


def test_item_prompts_describe_every_item_with_train_behaviour_only(dataset, count, tmp_path):
    items = by_id(P.build_prompts(dataset, load_templates(), count, 256), ITEM)
    assert set(items) == set(dataset.items["item_id"]) | {COLD_START_ID}
    assert "nothing is known" in items[COLD_START_ID].text
    row = dataset.items.set_index("item_id").loc["1"]  # Toy Story (1995), Adventure|Animation|...
    text = items["1"].text
    assert row["title"] in text and "Categories: Adventure, Animation" in text and "year: 1995" in text
    # eval and test rows changed (labels flipped, rows dropped): not one item prompt changes
    interactions = dataset.interactions
    held_out = interactions["split"] != "train"
    changed = interactions.assign(label=interactions["label"].where(~held_out, 1 - interactions["label"]))
    changed = changed[~(held_out & (changed.index % 2 == 0))]
    other = canonical.Dataset(changed, dataset.items, dataset.scenarios)
    assert {k: p.text for k, p in by_id(P.build_prompts(other, load_templates(), count, 256), ITEM).items()} == \
        {k: p.text for k, p in items.items()}
    # the default prompt states no train behaviour: its liked share would leak the training labels
    assert not any("training data" in p.text or "liked by" in p.text for p in items.values())
    # a template with a behaviour section describes train rows only: an item never in train says so
    import shutil
    custom = tmp_path / "templates"
    shutil.copytree(DEFAULT_DIR, custom)
    item_template = (custom / "item.tmpl").read_text().replace(
        "=== behaviour ===\n\n", "=== behaviour ===\nIn the training data it was {popularity}{liked}.\n")
    (custom / "item.tmpl").write_text(item_template)
    described = by_id(P.build_prompts(dataset, load_templates(custom), count, 256), ITEM)
    train_items = set(dataset.split("train")["item_id"])
    unseen = next(i for i in dataset.items["item_id"] if i not in train_items)
    assert "not yet interacted with" in described[unseen].text
    assert "liked by" in described["1"].text
    from llm4msr.transform.preprocessing import POPULARITY_BUCKETS
    assert tuple(low for low, _ in P.POPULARITY_WORDS) == POPULARITY_BUCKETS  # the words follow the slices


def test_levels_leave_out_the_item_prompts_and_refuse_unknown_levels(dataset):
    levels = {p.level for p in P.build_prompts(dataset, load_templates(), words, 256, levels=("user", "scenario"))}
    assert levels == {USER, SCENARIO}
    with pytest.raises(P.UserFacingError, match="knowledge levels"):
        P.build_prompts(dataset, load_templates(), words, 256, levels=("user", "scenario", "items"))
