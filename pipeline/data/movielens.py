"""Adapters for the MovieLens file formats (docs/DATA_FORMAT.md, "Source formats").

Each adapter reads one release's files into the same `MovieLensFiles`: ratings, items (title,
genres, year) and, where the release has them, users and tags. Turning these into the canonical
set (labels, scenarios, splits) is `prepare.py`'s job, shared by all releases.
"""
import os
import pathlib
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from llm4msr.pipeline.data.tables import Table, read_table

LATIN1 = "iso-8859-1"
NO_GENRE = {"(no genres listed)", "unknown"}
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ML1M_OCCUPATIONS = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer",
                    "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
                    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
                    "unemployed", "writer"]


@dataclass
class MovieLensFiles:
    ratings: pd.DataFrame  # user_id, item_id (str), rating (float), timestamp (int)
    items: pd.DataFrame  # item_id, title, genres ('|'-separated, as in the source), year (Int64)
    users: Optional[pd.DataFrame] = None  # user_id, age (int), gender, occupation
    tags: Optional[pd.DataFrame] = None  # user_id, item_id, tag


def read_latest(folder) -> MovieLensFiles:
    """MovieLens latest-small / 25M style: ratings.csv, movies.csv, optional tags.csv (UTF-8)."""
    folder = pathlib.Path(folder)
    rating_table = read_table(folder / "ratings.csv", required=["userId", "movieId", "rating", "timestamp"])
    ratings = _ratings(rating_table, user="userId", item="movieId")
    movies = read_table(folder / "movies.csv", required=["movieId", "title", "genres"])
    items = _items(movies, item="movieId", genres=movies.strings("genres", allow_empty=True))
    _check_known_items(rating_table, "movieId", items, movies)
    tags = None
    if (folder / "tags.csv").exists():
        table = read_table(folder / "tags.csv", required=["userId", "movieId", "tag"])
        tags = pd.DataFrame({"user_id": table.strings("userId"), "item_id": table.strings("movieId"),
                             "tag": table.strings("tag", allow_empty=True)})
    return MovieLensFiles(ratings, items, tags=tags)


def read_100k(folder) -> MovieLensFiles:
    """MovieLens 100K: u.data (tab), u.item and u.user ('|'), ISO-8859-1, no header lines."""
    folder = pathlib.Path(folder)
    rating_table = read_table(folder / "u.data", sep="\t", quoted=False, encoding=LATIN1,
                              columns=["user", "item", "rating", "timestamp"])
    ratings = _ratings(rating_table, user="user", item="item")
    movies = read_table(folder / "u.item", sep="|", quoted=False, encoding=LATIN1,
                        columns=["item", "title", "release", "video_release", "url"] + ML100K_GENRES)
    flags = pd.DataFrame({g: movies.numbers(g, integer=True) for g in ML100K_GENRES})
    genres = flags.apply(lambda row: "|".join(g for g in ML100K_GENRES if row[g] == 1), axis=1)
    items = _items(movies, item="item", genres=genres)
    _check_known_items(rating_table, "item", items, movies)
    release_year = pd.to_numeric(movies.frame["release"].str[-4:], errors="coerce").astype("Int64")
    items["year"] = items["year"].fillna(release_year)
    user_table = read_table(folder / "u.user", sep="|", quoted=False, encoding=LATIN1,
                            columns=["user", "age", "gender", "occupation", "zip"])
    users = pd.DataFrame({"user_id": user_table.strings("user"),
                          "age": user_table.numbers("age", integer=True),
                          "gender": user_table.choice("gender", ["M", "F"], "gender"),
                          "occupation": user_table.strings("occupation")})
    user_table.check_unique(["user"], "user id")
    return MovieLensFiles(ratings, items, users=users)


def read_1m(folder) -> MovieLensFiles:
    """MovieLens 1M: ratings.dat, movies.dat, users.dat ('::'-separated, ISO-8859-1)."""
    folder = pathlib.Path(folder)
    rating_table = read_table(folder / "ratings.dat", sep="::", quoted=False, encoding=LATIN1,
                              columns=["user", "item", "rating", "timestamp"])
    ratings = _ratings(rating_table, user="user", item="item")
    movies = read_table(folder / "movies.dat", sep="::", quoted=False, encoding=LATIN1,
                        columns=["item", "title", "genres"])
    items = _items(movies, item="item", genres=movies.strings("genres", allow_empty=True))
    _check_known_items(rating_table, "item", items, movies)
    user_table = read_table(folder / "users.dat", sep="::", quoted=False, encoding=LATIN1,
                            columns=["user", "gender", "age", "occupation", "zip"])
    occupation = user_table.numbers("occupation", integer=True)
    bad = ~occupation.between(0, len(ML1M_OCCUPATIONS) - 1)
    if bad.any():
        user_table.fail(int(bad.to_numpy().nonzero()[0][0]), "occupation",
                        f"occupation code must be 0..{len(ML1M_OCCUPATIONS) - 1}")
    users = pd.DataFrame({"user_id": user_table.strings("user"),
                          "age": user_table.numbers("age", integer=True),
                          "gender": user_table.choice("gender", ["M", "F"], "gender"),
                          "occupation": occupation.map(lambda code: ML1M_OCCUPATIONS[code])})
    user_table.check_unique(["user"], "user id")
    return MovieLensFiles(ratings, items, users=users)


def _ratings(table: Table, user: str, item: str) -> pd.DataFrame:
    rating = table.numbers("rating")
    out_of_range = ~rating.between(0.5, 5.0)
    if out_of_range.any():
        position = int(out_of_range.to_numpy().nonzero()[0][0])
        table.fail(position, "rating", f"rating {rating.iloc[position]} is outside 0.5..5")
    ratings = pd.DataFrame({"user_id": table.strings(user), "item_id": table.strings(item),
                            "rating": rating, "timestamp": table.timestamps("timestamp")})
    table.frame[["user_id", "item_id", "timestamp"]] = ratings[["user_id", "item_id", "timestamp"]]
    table.check_unique(["user_id", "item_id", "timestamp"], "(user, item, timestamp)")
    return ratings


def _items(table: Table, item: str, genres: pd.Series) -> pd.DataFrame:
    titles = table.strings("title")
    items = pd.DataFrame({"item_id": table.strings(item), "title": titles, "genres": genres,
                          "year": pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$")[0],
                                                errors="coerce").astype("Int64")})
    table.frame["item_id"] = items["item_id"]
    table.check_unique(["item_id"], "item id")
    return items


def _check_known_items(ratings: Table, column: str, items: pd.DataFrame, movies: Table) -> None:
    unknown = (~ratings.frame["item_id"].isin(items["item_id"])).to_numpy()
    if unknown.any():
        position = int(unknown.nonzero()[0][0])
        ratings.fail(position, column, f"item {ratings.frame['item_id'].iloc[position]!r} is not in {os.path.basename(movies.path)}")
