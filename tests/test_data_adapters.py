"""The MovieLens adapters and the canonical layout they write."""
import json

import pandas as pd
import pytest

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data import canonical, movielens
from llm4msr.pipeline.data.prepare import prepare, summarize
from movielens_files import write_100k, write_1m


def test_latest_small_tiny_fixture(tiny_movielens, tmp_path):
    dataset = prepare("movielens-latest-small", tmp_path / "out", data_dir=tiny_movielens, download=False)
    ratings = pd.read_csv(tiny_movielens / "ratings.csv")
    assert len(dataset.interactions) == len(ratings) == 2984
    assert dataset.interactions["user_id"].nunique() == 40
    assert dataset.interactions["label"].tolist() == (ratings["rating"] >= 4).astype(int).tolist()
    written = canonical.read_dataset(tmp_path / "out")
    assert written.interactions["user_id"].dtype == object  # ids stay strings
    pd.testing.assert_frame_equal(written.interactions.reset_index(drop=True),
                                  dataset.interactions.reset_index(drop=True), check_dtype=False)
    assert written.scenario_ids == ["S0", "S1", "S2"]
    toy_story = written.items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)" and "Animation" in toy_story["categories"]


def test_latest_small_full_counts_match_data_readme(small_movielens, tmp_path):
    dataset = prepare("movielens-latest-small", tmp_path / "out", data_dir=small_movielens, download=False)
    counts = dataset.interactions["scenario"].value_counts().to_dict()
    assert counts == {"S0": 66613, "S1": 26943, "S2": 7280}
    assert dataset.interactions["label"].mean() == pytest.approx(0.482, abs=0.001)
    assert "users active in 2+ scenarios" in summarize(dataset)


def test_tags_become_item_text_from_train_only(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text('movieId,title,genres\n1,"Heat, The (1995)",Action\n2,B (2000),Drama\n')
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                        + "".join(f"{u},{i},4.0,{100 * u + i}\n" for u in (1, 2) for i in (1, 2)))
    # user 1's rating of item 2 is their last, so it is held out (test): that tag must not leak
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,Heist,1\n2,1,heist,1\n1,2,spoiler,1\n")
    dataset = prepare("movielens-latest-small", tmp_path / "out", data_dir=folder, download=False)
    description = dataset.items.set_index("item_id")["description"]
    assert description["1"] == "heist" and description["2"] == ""
    assert dataset.items.set_index("item_id").loc["1", "title"] == "Heat, The (1995)"


def test_100k_adapter_reads_latin1_and_users(tmp_path):
    files = movielens.read_100k(write_100k(tmp_path / "ml-100k"))
    titles = files.items.set_index("item_id")["title"]
    assert titles["3"] == "Café au lait (1993)" and titles["4"] == "Étoile (1989)"
    assert files.items.set_index("item_id").loc["1", "genres"] == "Children's|Comedy"
    assert files.users.set_index("user_id").loc["2", "age"] == 53
    dataset = prepare("movielens-100k", tmp_path / "out", data_dir=tmp_path, download=False)
    scenario = dataset.interactions.drop_duplicates("item_id").set_index("item_id")["scenario"]
    assert scenario.to_dict() == {"1": "S1", "2": "S0", "3": "S2", "4": "S2"}
    assert (tmp_path / "out" / "users.csv").exists()


def test_1m_adapter_and_age_scenarios(tmp_path):
    write_1m(tmp_path / "ml-1m")
    dataset = prepare("movielens-1m", tmp_path / "out", data_dir=tmp_path, scenario_kind="age", download=False)
    by_user = dataset.interactions.drop_duplicates("user_id").set_index("user_id")["scenario"]
    assert by_user.to_dict() == {"1": "S0", "2": "S2"}  # age codes 1 (under 18) and 56 (56+)
    assert dataset.users.set_index("user_id").loc["2", "occupation"] == "self-employed"
    assert dataset.items.set_index("item_id").loc["3", "title"] == "Misérables, Les (1995)"
    names = [s["name"] for s in json.loads((tmp_path / "out" / "scenarios.json").read_text())["scenarios"]]
    assert names == ["young viewers", "young adults", "older adults"]


def test_age_scenarios_need_ages(tiny_movielens, tmp_path):
    with pytest.raises(UserFacingError, match="--scenarios age needs user ages"):
        prepare("movielens-latest-small", tmp_path / "out", data_dir=tiny_movielens,
                scenario_kind="age", download=False)
    assert not (tmp_path / "out").exists()


def test_canonical_source_round_trip_assigns_missing_split(tiny_movielens, tmp_path):
    prepared = prepare("movielens-latest-small", tmp_path / "a", data_dir=tiny_movielens, download=False)
    interactions = pd.read_csv(tmp_path / "a" / "interactions.csv", dtype=str).drop(columns=["split"])
    interactions.to_csv(tmp_path / "a" / "interactions.csv", index=False)
    again = prepare("canonical", tmp_path / "b", data_dir=tmp_path / "a", split="time")
    assert again.interactions["split"].tolist() == prepared.interactions["split"].tolist()


def test_prepare_is_byte_for_byte_deterministic(tiny_movielens, tmp_path):
    """The pipeline fingerprints the data set folder: preparing again must not change a byte."""
    for out in ("a", "b"):
        prepare("movielens-latest-small", tmp_path / out, data_dir=tiny_movielens, download=False)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
