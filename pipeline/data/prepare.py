"""Turn a source (a MovieLens release or a user's canonical set) into the canonical data set:
labels (`rating >= 4`), scenarios (item genre groups or user age groups), splits, item text."""
import pathlib

import pandas as pd

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data import canonical, scenarios, sources
from llm4msr.pipeline.data.movielens import NO_GENRE, MovieLensFiles
from llm4msr.pipeline.data.split import ALL_SPLITS, HISTORY, REGIME_SHARE

POSITIVE_RATING = 4.0
TAGS_PER_ITEM = 10


def prepare(source: str, out, data_dir=None, scenario_kind: str = "genre", split: str = "time",
            seed: int = 0, download: bool = True, regime: str = "time",
            share: float = REGIME_SHARE) -> canonical.Dataset:
    """Builds the canonical set for `source` and writes it atomically to `out`."""
    if source == "canonical":
        if data_dir is None:
            raise UserFacingError("--source canonical needs --data-dir pointing at the canonical set")
        if scenario_kind != "genre":
            raise UserFacingError("--scenarios applies to MovieLens sources; a canonical set brings "
                                  "its own scenarios.json")
        dataset = canonical.read_dataset(data_dir, split=split, seed=seed, regime=regime, share=share)
        dataset.manifest = {**dataset.manifest, "source": "canonical", "input": str(data_dir)}
    else:
        spec = sources.get_source(source)
        folder = sources.locate(spec, data_dir, download=download)
        dataset = from_movielens(spec.read(folder), scenario_kind, split, seed, where=folder,
                                 regime=regime, share=share)
        dataset.manifest = {"source": source, "input": str(folder)}
    # deterministic: the pipeline fingerprints the folder, and a rerun must be a cache hit
    dataset.manifest.update({"scenarios": scenario_kind, "split": split, "seed": seed, "regime": regime,
                             **({"regime_share": share} if regime != "time" else {}),
                             "interactions": int(len(dataset.interactions))})
    canonical.write_dataset(dataset, out)
    return dataset


def from_movielens(files: MovieLensFiles, scenario_kind: str, split: str, seed: int,
                   where: pathlib.Path, regime: str = "time", share: float = REGIME_SHARE) -> canonical.Dataset:
    interactions = files.ratings[["user_id", "item_id", "timestamp"]].copy()
    interactions["label"] = (files.ratings["rating"] >= POSITIVE_RATING).astype("int64")
    interactions["scenario"], scenario_list = _assign_scenarios(files, scenario_kind, where)
    interactions["split"] = canonical.assign_split(interactions, split, seed, where, regime, share)
    interactions = interactions[canonical.INTERACTION_COLUMNS].reset_index(drop=True)
    items = pd.DataFrame({
        "item_id": files.items["item_id"],
        "title": files.items["title"],
        "categories": files.items["genres"].map(_categories),
        "description": _tag_descriptions(files, interactions),
        "year": files.items["year"],
    })
    return canonical.Dataset(interactions, items, scenario_list, files.users)


def _assign_scenarios(files: MovieLensFiles, kind: str, where):
    if kind == "genre":
        by_item = dict(zip(files.items["item_id"], files.items["genres"].map(scenarios.scenario_of_genres)))
        return files.ratings["item_id"].map(by_item).to_numpy(), scenarios.genre_scenarios()
    if kind == "age":
        if files.users is None or "age" not in files.users.columns:
            raise UserFacingError(f"--scenarios age needs user ages, and {where} has no users file "
                                  f"(MovieLens 100K and 1M have one); use --scenarios genre")
        by_user = dict(zip(files.users["user_id"], scenarios.scenario_of_ages(files.users["age"])))
        assigned = files.ratings["user_id"].map(by_user)
        if assigned.isna().any():
            missing = files.ratings["user_id"][assigned.isna()].iloc[0]
            raise UserFacingError(f"{where}: user {missing!r} has ratings but no entry in the users file")
        return assigned.to_numpy(), scenarios.age_scenarios()
    raise UserFacingError(f"unknown scenario definition {kind!r} (expected genre or age)")


def _categories(genres: str) -> str:
    return "|".join(g for g in genres.split("|") if g and g not in NO_GENRE)


def _tag_descriptions(files: MovieLensFiles, interactions: pd.DataFrame) -> pd.Series:
    """An item's most frequent tags, as its description. Tags are user behaviour, so a tag counts
    only when its author's rating of that item is in the train split (or absent: tag-only)."""
    if files.tags is None or files.tags.empty:
        return pd.Series("", index=files.items.index)
    held_out = interactions.loc[interactions["split"] != "train", ["user_id", "item_id"]]
    tags = files.tags.merge(held_out.assign(held=True), on=["user_id", "item_id"], how="left")
    tags = tags[tags["held"].isna() & (tags["tag"] != "")]
    tags = tags.assign(tag=tags["tag"].str.lower())
    counts = tags.groupby(["item_id", "tag"]).size().reset_index(name="n")
    counts = counts.sort_values(["item_id", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("item_id").head(TAGS_PER_ITEM).groupby("item_id")["tag"].agg(", ".join)
    return files.items["item_id"].map(top).fillna("")


def summarize(dataset: canonical.Dataset) -> str:
    """The summary table printed by `llm4msr data prepare`."""
    frame = dataset.interactions
    rows, has_history = [], bool((frame["split"] == HISTORY).any())
    for scenario in dataset.scenario_ids + ["all"]:
        in_scenario = frame if scenario == "all" else frame[frame["scenario"] == scenario]
        for split in [s for s in ALL_SPLITS if s != HISTORY or has_history] + ["all"]:
            part = in_scenario if split == "all" else in_scenario[in_scenario["split"] == split]
            rows.append((scenario, split, part["user_id"].nunique(), part["item_id"].nunique(), len(part),
                         part["label"].mean() if len(part) else float("nan")))
    header = f"{'scenario':<9}{'split':<8}{'users':>8}{'items':>8}{'interactions':>14}{'positive':>10}"
    lines = [header, "-" * len(header)]
    for scenario, split, users, items, count, positive in rows:
        lines.append(f"{scenario:<9}{split:<8}{users:>8,}{items:>8,}{count:>14,}{positive:>10.1%}")
    per_user = frame.groupby("user_id")["scenario"].nunique()
    names = ", ".join(f"{s.id} = {s.name}" for s in dataset.scenarios)
    lines.append(f"users active in 2+ scenarios: {(per_user >= 2).mean():.1%} "
                 f"({int((per_user >= 2).sum()):,} of {len(per_user):,}); scenarios: {names}")
    return "\n".join(lines)
