"""Scenario-, user- and item-level prompts, built from rows the model may learn from (DATA_FORMAT.md,
"Splits and leakage"): scenario and item statistics from the train split; a user's prompt from
their `history` rows when they have any (regimes new_users, prompt_history), else their train rows.
User prompts are trimmed to a token budget by dropping whole history items, oldest first."""
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import pandas as pd

from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data.canonical import Dataset
from llm4msr.pipeline.data.split import HISTORY
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, ITEM, LEVELS, SCENARIO, USER
from llm4msr.pipeline.knowledge.templates import Template, TemplateError

# texts -> token counts (special tokens included), measured with the model's own tokenizer
TokenCounter = Callable[[Sequence[str]], List[int]]


class EmptyDatasetError(UserFacingError):
    """The data set has no train interactions to build prompts from."""


@dataclass(frozen=True)
class Prompt:
    level: str  # USER, SCENARIO or ITEM
    id: str
    text: str
    template_version: str
    n_tokens: int

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.text)

    def to_json(self) -> str:
        """One line of a prompts file (the Beam job reads prompts from one, not from its graph); ASCII,
        so no character of a prompt can break the line."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str) -> "Prompt":
        return cls(**json.loads(line))


@dataclass(frozen=True)
class HistoryItem:
    scenario: str
    liked: bool
    text: str


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_prompts(dataset: Dataset, templates: Dict[str, Template], count_tokens: TokenCounter,
                  budget: int, levels: Sequence[str] = LEVELS) -> List[Prompt]:
    """The prompts of `levels`: every scenario; every user seen anywhere in the set (users without
    train history get the cold-start prompt); every item of items.csv; and the `COLD_START_ID`
    rows of users and items."""
    unknown = sorted(set(levels) - set(LEVELS))
    if unknown or SCENARIO not in levels or USER not in levels:
        raise UserFacingError(f"knowledge levels {list(levels)}: expected user and scenario, optionally item "
                              f"(known: {', '.join(LEVELS)})")
    train = train_split(dataset)
    prompts = (scenario_prompts(dataset, train, templates[SCENARIO], count_tokens)
               + user_prompts(dataset, prompt_rows(dataset), templates[USER], count_tokens, budget))
    if ITEM in levels:
        prompts += item_prompts(dataset, train, templates[ITEM], count_tokens)
    return prompts


def prompt_rows(dataset: Dataset) -> pd.DataFrame:
    """The rows a user's prompt describes: their `history` rows when they have any (regimes
    new_users and prompt_history), else their train rows. History rows are never examples, so a
    prompt built from them does not list the labels the model is trained on."""
    rows = dataset.interactions
    with_history = set(rows.loc[rows["split"] == HISTORY, "user_id"])
    return rows[(rows["split"] == HISTORY) | ((rows["split"] == "train") & ~rows["user_id"].isin(with_history))]


def train_split(dataset: Dataset) -> pd.DataFrame:
    train = dataset.split("train")
    if train.empty:
        raise EmptyDatasetError(f"the data set has no train interactions "
                                f"({len(dataset.interactions)} interactions in all): nothing to build prompts from")
    return train


# -- scenario level ----------------------------------------------------------------------------
def scenario_prompts(dataset: Dataset, train: pd.DataFrame, template: Template,
                     count_tokens: TokenCounter) -> List[Prompt]:
    texts = [scenario_prompt(dataset, train, template, scenario.id) for scenario in dataset.scenarios]
    return [Prompt(SCENARIO, s.id, text, template.version, n)
            for s, text, n in zip(dataset.scenarios, texts, count_tokens(texts))]


def scenario_prompt(dataset: Dataset, train: pd.DataFrame, template: Template, scenario_id: str) -> str:
    scenario = next(s for s in dataset.scenarios if s.id == scenario_id)
    others = template.setting("other_separator", "; ").join(
        template.render("other", name=o.name, description=o.description)
        for o in dataset.scenarios if o.id != scenario_id)
    return template.render("prompt", n_scenarios=len(dataset.scenarios), name=scenario.name,
                           description=scenario.description, others=others or "none",
                           **scenario_statistics(dataset, train, scenario_id, template.setting("top_categories", 5)))


def scenario_statistics(dataset: Dataset, train: pd.DataFrame, scenario_id: str, top: int) -> dict:
    rows = train[train["scenario"] == scenario_id]
    categories = rows["item_id"].map(dataset.items.set_index("item_id")["categories"]).fillna("")
    counts = categories.str.split("|").explode().loc[lambda c: c.str.strip() != ""].value_counts()
    return {"users": rows["user_id"].nunique(), "items": rows["item_id"].nunique(),
            "interactions": len(rows),
            "positive_rate": f"{rows['label'].mean():.1%}" if len(rows) else "n/a",
            "categories": ", ".join(counts.index[:int(top)]) or "none"}


# -- user level --------------------------------------------------------------------------------
# a liked share in words, by lower edge; a template may set its own (`share_words`)
SHARE_WORDS = ((0.85, "almost all"), (0.7, "most"), (0.55, "more than half"), (0.45, "about half"),
               (0.3, "less than half"), (0.15, "few"), (0.0, "almost none"))


@dataclass(frozen=True)
class Profile:
    """What a user rated in one scenario (or overall): how many items, how many of them they liked,
    and the categories they liked most and least. Stated in words, it tells the model what an id
    embedding learns from the rows, also for a user whose id the model has never seen."""
    rated: int
    liked: int
    favourite: str = ""
    least: str = ""


def user_prompts(dataset: Dataset, rows: pd.DataFrame, template: Template, count_tokens: TokenCounter,
                 budget: int) -> List[Prompt]:
    """Every user's prompt of their `rows`; the cold-start prompt for users without any."""
    cold = _cold_start(template, count_tokens)
    texts = user_texts(dataset, rows, template, count_tokens, budget)
    return [Prompt(USER, COLD_START_ID, *cold)] + [Prompt(USER, user, *texts.get(user, cold))
                                                    for user in all_users(dataset)]


def _cold_start(template: Template, count_tokens: TokenCounter) -> tuple:
    """(text, template version, tokens) of the cold-start prompt: a `Prompt`'s last three fields."""
    text = template.render("cold_start")
    return text, template.version, count_tokens([text])[0]


def user_texts(dataset: Dataset, rows: pd.DataFrame, template: Template, count_tokens: TokenCounter,
               budget: int) -> Dict[str, tuple]:
    """user -> (prompt text, template version, tokens) for every user with `rows`."""
    histories = user_histories(dataset, rows, template)
    profiles = user_profiles(dataset, rows, template)
    attributes = user_attributes(dataset)
    texts = {}
    for user, profile in profiles.items():
        text, n_tokens = fit_to_budget(
            lambda kept: user_prompt(dataset, template, attributes.get(user, ""), kept, profile),
            histories.get(user, []), count_tokens, budget)
        texts[user] = (text, template.version, n_tokens)
    return texts


def all_users(dataset: Dataset) -> List[str]:
    users = set(dataset.interactions["user_id"])
    if dataset.users is not None:
        users |= set(dataset.users["user_id"])
    return sorted(users, key=lambda u: (len(u), u))  # numeric-looking ids in numeric order


def user_histories(dataset: Dataset, rows: pd.DataFrame, template: Template) -> Dict[str, List[HistoryItem]]:
    """Per user, the `max_items` most recent liked and disliked items of every scenario, newest
    first across scenarios (the order in which trimming keeps them)."""
    rows = rows.assign(_order=range(len(rows)))  # without timestamps, later rows are more recent
    keys = ["timestamp", "_order"] if "timestamp" in rows.columns else ["_order"]
    rows = rows.sort_values(keys, ascending=False, kind="stable")
    rows = rows.groupby(["user_id", "scenario", "label"], sort=False).head(int(template.setting("max_items", 10)))
    items = dataset.items.set_index("item_id")
    titles, categories = rows["item_id"].map(items["title"]), rows["item_id"].map(items["categories"]).fillna("")
    histories: Dict[str, List[HistoryItem]] = {}
    for user, scenario, label, title, cats in zip(rows["user_id"], rows["scenario"], rows["label"], titles, categories):
        histories.setdefault(user, []).append(HistoryItem(scenario, bool(label), item_text(template, title, cats)))
    return histories


def user_profiles(dataset: Dataset, rows: pd.DataFrame, template: Template) -> Dict[str, Dict[str, Profile]]:
    """user -> scenario id (and "" for all scenarios) -> `Profile` of `rows`. Categories rank by their
    liked share smoothed towards one half (`(liked + 1) / (rated + 2)`), among those the user rated
    at least `category_min_rated` times there: favourites have a smoothed share of one half or more,
    the least liked one below."""
    top, least = int(template.setting("favourite_categories", 3)), int(template.setting("least_categories", 2))
    min_rated = int(template.setting("category_min_rated", 2))
    counts = {}
    for frame in (rows, rows.assign(scenario="")):  # per scenario, and "" for all of them
        grouped = frame.groupby(["user_id", "scenario"])["label"].agg(["size", "sum"])
        counts.update(zip(grouped.index, zip(grouped["size"], grouped["sum"])))
    categories = rows["item_id"].map(dataset.items.set_index("item_id")["categories"]).fillna("").str.split("|")
    rated = rows.assign(category=categories).explode("category")
    rated = rated.assign(category=rated["category"].str.strip()).loc[lambda r: r["category"] != ""]
    rated = pd.concat([rated, rated.assign(scenario="")])
    by_category = rated.groupby(["user_id", "scenario", "category"])["label"].agg(["size", "sum"]).reset_index()
    by_category = by_category[by_category["size"] >= min_rated]
    by_category = by_category.assign(share=(by_category["sum"] + 1) / (by_category["size"] + 2))
    ranked = by_category.sort_values(["share", "size", "category"], ascending=[False, False, True])
    liked = ranked[ranked["share"] >= 0.5].groupby(["user_id", "scenario"])["category"].agg(lambda c: list(c[:top]))
    disliked = ranked[ranked["share"] < 0.5].iloc[::-1].groupby(["user_id", "scenario"])["category"].agg(
        lambda c: list(c[:least]))
    profiles: Dict[str, Dict[str, Profile]] = {}
    for (user, scenario), (size, n_liked) in counts.items():
        profiles.setdefault(user, {})[scenario] = Profile(
            int(size), int(n_liked), ", ".join(liked.get((user, scenario), [])),
            ", ".join(disliked.get((user, scenario), [])))
    return profiles


def share_words(template: Template, liked: int, rated: int) -> str:
    """`liked` of `rated` in the words of the template's `share_words` ([lower edge, words] pairs)."""
    table = template.setting("share_words", SHARE_WORDS)
    try:
        pairs = sorted(((float(low), str(words)) for low, words in table), reverse=True)
    except (TypeError, ValueError):
        pairs = []
    if not pairs or pairs[-1][0] > 0:
        raise TemplateError(f"{template.path}: share_words: expected [lower edge, words] pairs, one of them with "
                            f"edge 0, got {table!r}")
    share = liked / rated if rated else 0.0
    return next(words for low, words in pairs if share >= low)


def item_text(template: Template, title: str, categories: str) -> str:
    names = ", ".join(c for c in str(categories).split("|") if c.strip())
    if not names:
        return template.render("item_without_categories", title=title)
    return template.render("item", title=title, categories=names)


def user_attributes(dataset: Dataset) -> Dict[str, str]:
    if dataset.users is None:
        return {}
    columns = [c for c in dataset.users.columns if c != "user_id"]
    described = {}
    for row in dataset.users[["user_id", *columns]].itertuples(index=False):
        parts = [f"{name}: {value}" for name, value in zip(columns, row[1:])
                 if pd.notna(value) and str(value).strip()]
        described[row[0]] = ", ".join(parts)
    return described


def user_prompt(dataset: Dataset, template: Template, attributes: str, kept: Sequence[HistoryItem],
                profiles: Dict[str, Profile]) -> str:
    """The user's prompt: attributes, their overall profile, then per scenario their profile and the
    `kept` history items. A template uses what it names: `{liked}` / `{disliked}` are the history
    titles, `{liked_share}`, `{liked_count}`, `{rated}`, `{favourite}`, `{least}` the profile."""
    separator = template.setting("item_separator", "; ")
    nothing = template.render("no_items")
    lines = []
    for scenario in dataset.scenarios:
        liked = [h.text for h in kept if h.scenario == scenario.id and h.liked]
        disliked = [h.text for h in kept if h.scenario == scenario.id and not h.liked]
        profile = profiles.get(scenario.id)
        if profile is None and "scenario_without_history" in template.sections:
            lines.append(template.render("scenario_without_history", name=scenario.name))
            continue
        lines.append(template.render("scenario", name=scenario.name, liked=separator.join(liked) or nothing,
                                     disliked=separator.join(disliked) or nothing,
                                     **_profile_values(template, profile)))
    described = template.render("attributes", attributes=attributes) if attributes else ""
    overall = template.render("overall", **_profile_values(template, profiles[""])) \
        if "overall" in template.sections else ""
    return template.render("prompt", attributes=described, overall=overall, scenarios="\n".join(lines))


def _profile_values(template: Template, profile: Optional[Profile]) -> dict:
    profile = profile or Profile(0, 0)
    return {"rated": profile.rated, "liked_count": profile.liked,
            "liked_share": share_words(template, profile.liked, profile.rated),
            "favourite": profile.favourite or template.render("no_items"),
            "least": profile.least or template.render("no_items")}


def fit_to_budget(render: Callable[[Sequence[HistoryItem]], str], history: Sequence[HistoryItem],
                  count_tokens: TokenCounter, budget: int):
    """The prompt with the most recent `k` items, `k` as large as fits in `budget` tokens.
    Returns (text, tokens). Per-item costs give a first `k` cheaply (long histories are never
    tokenised whole); exact counts of the rendered prompt then settle it, so tokenizer quirks
    cannot break the budget."""
    base, specials, *items = count_tokens([render([]), "", *(h.text for h in history)])
    keep, used = 0, base
    for cost in items:  # + 1 for the separator; a scenario line's "nothing" is in `base`
        if used + cost - specials + 1 > budget:
            break
        keep, used = keep + 1, used + cost - specials + 1

    def exact(k):
        rendered = render(history[:k])
        return rendered, count_tokens([rendered])[0]

    text, tokens = exact(keep)
    while tokens > budget and keep > 0:  # the estimate was optimistic: drop more
        keep -= 1
        text, tokens = exact(keep)
    while tokens <= budget and keep < len(history):  # pessimistic: add back what fits
        longer, n = exact(keep + 1)
        if n > budget:
            break
        text, tokens, keep = longer, n, keep + 1
    return text, tokens  # over budget only when even no history overflows: the encoder truncates


# -- item level --------------------------------------------------------------------------------
# train rows of an item -> words; the lower edges are the evaluation's popularity slices
# (transform.preprocessing.POPULARITY_BUCKETS, not imported: this job must not load TensorFlow)
POPULARITY_WORDS = ((0, "not yet interacted with"), (1, "interacted with by very few users"),
                    (6, "interacted with by some users"), (51, "popular"))
ITEM_PROMPT_COLUMNS = ("item_id", "title", "categories", "description")


def item_prompts(dataset: Dataset, train: pd.DataFrame, template: Template,
                 count_tokens: TokenCounter) -> List[Prompt]:
    """One prompt per item of items.csv: title, categories, the other columns (e.g. year, tags),
    description, and coarse train behaviour; the `COLD_START_ID` row for items not in items.csv."""
    behaviour = train.groupby("item_id")["label"].agg(["size", "mean"])
    items = dataset.items
    extra = [c for c in items.columns if c not in ITEM_PROMPT_COLUMNS]
    ids, texts = [COLD_START_ID], [template.render("cold_start")]
    for values in items.to_dict("records"):
        known = values["item_id"] in behaviour.index
        size, liked = behaviour.loc[values["item_id"]] if known else (0, None)
        ids.append(str(values["item_id"]))
        texts.append(item_prompt(template, values, extra, int(size), None if liked is None else float(liked)))
    return [Prompt(ITEM, item_id, text, template.version, n)
            for item_id, text, n in zip(ids, texts, count_tokens(texts))]


def item_prompt(template: Template, values: dict, extra_columns: Sequence[str], train_rows: int,
                liked_share: Optional[float]) -> str:
    def present(value) -> bool:
        return pd.notna(value) and str(value).strip() != ""

    def section(name: str, value: str) -> str:
        return template.render(name, **{name: value}) if value else ""

    categories = ", ".join(c.strip() for c in str(values["categories"]).split("|") if c.strip()) \
        if present(values.get("categories")) else ""
    attributes = ", ".join(f"{name}: {values[name]}" for name in extra_columns if present(values[name]))
    description = str(values["description"]) if present(values.get("description")) else ""
    popularity = next(word for low, word in reversed(POPULARITY_WORDS) if train_rows >= low)
    liked = "" if liked_share is None else f", {liked_words(liked_share)} of those users"
    return template.render("prompt", title=values["title"], categories=section("categories", categories),
                           attributes=section("attributes", attributes),
                           description=section("description", description),
                           behaviour=template.render("behaviour", popularity=popularity, liked=liked))


def liked_words(share: float) -> str:
    """The share of positive train rows in words (coarse, so prompts rarely change with new data)."""
    return next(words for low, words in ((0.75, "liked by most"), (0.5, "liked by many"),
                                         (0.25, "liked by some"), (0.0, "liked by few")) if share >= low)
