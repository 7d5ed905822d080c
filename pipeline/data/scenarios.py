"""Scenario definitions for MovieLens (docs/DATA_FORMAT.md, "MovieLens scenarios").

A scenario's `description` is the semantic text the scenario-level prompt uses; statistics are
computed from the data later, never written here.
"""
from dataclasses import asdict, dataclass
from typing import List

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Scenario:
    id: str
    name: str
    description: str

    def to_json(self) -> dict:
        return asdict(self)


# Genre groups: a movie belongs to the first group that shares a genre with it.
GENRE_GROUPS = [
    (Scenario("S0", "action & suspense",
              "Movies built on tension and spectacle: action, adventure, science fiction, thrillers, "
              "war, westerns, crime, horror, mystery and film noir."),
     {"Action", "Adventure", "Sci-Fi", "Thriller", "War", "Western", "Crime", "Horror", "Mystery",
      "Film-Noir"}),
    (Scenario("S1", "light & family",
              "Light-hearted and family viewing: comedies, romances, children's films, animation, "
              "musicals and fantasy."),
     {"Comedy", "Romance", "Children", "Children's", "Animation", "Musical", "Fantasy"}),
]
GENRE_OTHER = Scenario("S2", "drama & other",
                       "Everything else: dramas, documentaries, IMAX releases and movies without a "
                       "listed genre.")

# Age groups, the convention of the public multi-scenario benchmarks on MovieLens-1M:
# ML-1M age codes {1, 18} / {25} / {35, 45, 50, 56}; raw ages (ML-100K) are cut at the same bounds.
AGE_GROUPS = [
    (Scenario("S0", "young viewers", "Users under 25 years old."), (0, 25)),
    (Scenario("S1", "young adults", "Users aged 25 to 34."), (25, 35)),
    (Scenario("S2", "older adults", "Users aged 35 and over."), (35, 1000)),
]


def genre_scenarios() -> List[Scenario]:
    return [scenario for scenario, _ in GENRE_GROUPS] + [GENRE_OTHER]


def age_scenarios() -> List[Scenario]:
    return [scenario for scenario, _ in AGE_GROUPS]


def scenario_of_genres(categories: str) -> str:
    """`categories` is '|'-separated; returns the id of the first genre group that matches."""
    genres = set(categories.split("|"))
    for scenario, group in GENRE_GROUPS:
        if genres & group:
            return scenario.id
    return GENRE_OTHER.id


def scenario_of_ages(ages: pd.Series) -> pd.Series:
    """Maps ages (ML-1M codes or raw years, both cut at 25 and 35) to age-group scenario ids."""
    values = ages.to_numpy()
    result = np.empty(len(values), dtype=object)
    for scenario, (low, high) in AGE_GROUPS:
        result[(values >= low) & (values < high)] = scenario.id
    return pd.Series(result, index=ages.index)
