"""Offline ranking metrics in numpy: AUC, logloss, user-grouped AUC (gAUC), and the per-scenario
report the fast experiment path, the benchmarks and the evaluator comparison all print."""
from typing import Dict, Optional

import numpy as np
import pandas as pd
from scipy.stats import rankdata

EPSILON = 1e-7


def auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN when one class is absent."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def logloss(labels, scores) -> float:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if labels.size == 0:
        return float("nan")
    scores = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), EPSILON, 1 - EPSILON)
    return float(-np.mean(labels * np.log(scores) + (1 - labels) * np.log(1 - scores)))


def gauc(labels, scores, groups) -> float:
    """AUC per group (user), averaged with the group's impression count as weight; groups with a
    single class are left out, as their AUC is undefined. NaN when no group qualifies."""
    frame = pd.DataFrame({"label": np.asarray(labels).reshape(-1), "score": np.asarray(scores).reshape(-1),
                          "group": np.asarray(groups).reshape(-1)})
    total, weight = 0.0, 0
    for _, rows in frame.groupby("group", sort=False):
        value = auc(rows["label"].to_numpy(), rows["score"].to_numpy())
        if not np.isnan(value):
            total += value * len(rows)
            weight += len(rows)
    return total / weight if weight else float("nan")


def summarize(labels, scores, users) -> Dict[str, float]:
    return {"auc": auc(labels, scores), "logloss": logloss(labels, scores), "gauc": gauc(labels, scores, users),
            "examples": int(np.asarray(labels).size)}


def report(labels, scores, users, scenarios, scenario_order: Optional[list] = None) -> dict:
    """`{"overall": {...}, "scenarios": {id: {...}}}` with auc, logloss, gauc, examples each."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores).reshape(-1)
    users, scenarios = np.asarray(users).reshape(-1), np.asarray(scenarios).reshape(-1)
    order = scenario_order if scenario_order is not None else sorted(set(scenarios.tolist()))
    per_scenario = {}
    for scenario in order:
        rows = scenarios == scenario
        if rows.any():
            per_scenario[str(scenario)] = summarize(labels[rows], scores[rows], users[rows])
    return {"overall": summarize(labels, scores, users), "scenarios": per_scenario}
