"""Offline ranking metrics in numpy: AUC, logloss, calibration (mean prediction / mean label),
user-grouped AUC (gAUC), and the sliced report (overall, per scenario, per user train history and
item train popularity bucket) the fast experiment path and the benchmarks print."""
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


def calibration(labels, scores) -> float:
    """Mean prediction over mean label: 1 is calibrated, above 1 over-predicts clicks."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    positive_rate = labels.mean() if labels.size else 0.0
    return float(np.mean(scores) / positive_rate) if positive_rate > 0 else float("nan")


def summarize(labels, scores, users) -> Dict[str, float]:
    return {"auc": auc(labels, scores), "logloss": logloss(labels, scores), "gauc": gauc(labels, scores, users),
            "calibration": calibration(labels, scores), "examples": int(np.asarray(labels).size)}


def report(labels, scores, users, scenarios, scenario_order: Optional[list] = None,
           slices: Optional[Dict[str, np.ndarray]] = None) -> dict:
    """`{"overall": {...}, "scenarios": {id: {...}}, "slices": {slice: {bucket: {...}}}}` with auc,
    logloss, gauc, calibration and examples each; `slices` maps a slice name to a bucket name per row."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores).reshape(-1)
    users, scenarios = np.asarray(users).reshape(-1), np.asarray(scenarios).reshape(-1)
    order = scenario_order if scenario_order is not None else sorted(set(scenarios.tolist()))
    result = {"overall": summarize(labels, scores, users),
              "scenarios": _by_group(labels, scores, users, scenarios, order), "slices": {}}
    for name, buckets in (slices or {}).items():
        buckets = np.asarray(buckets).reshape(-1)
        result["slices"][name] = _by_group(labels, scores, users, buckets, _ordered_unique(buckets))
    return result


def _by_group(labels, scores, users, groups, order) -> Dict[str, dict]:
    table = {}
    for group in order:
        rows = groups == group
        if rows.any():
            table[str(group)] = summarize(labels[rows], scores[rows], users[rows])
    return table


def _ordered_unique(buckets: np.ndarray) -> list:
    """Bucket names in numeric order of their lower edge ('0', '1-5', '6-20', '21+')."""
    return sorted(set(buckets.tolist()), key=lambda name: int(str(name).split("-")[0].rstrip("+")))


def format_table(report_: dict) -> str:
    """The report as a fixed-width table, one row per slice."""
    lines = [f"{'slice':<28}{'examples':>9}{'AUC':>8}{'gAUC':>8}{'logloss':>9}{'calib.':>8}"]
    rows = [("overall", report_["overall"]), *((f"scenario={k}", v) for k, v in report_["scenarios"].items())]
    for name, buckets in report_.get("slices", {}).items():
        rows += [(f"{name.replace('slice_', '')}={k}", v) for k, v in buckets.items()]
    for name, values in rows:
        lines.append(f"{name:<28}{values['examples']:>9}{values['auc']:>8.4f}{values['gauc']:>8.4f}"
                     f"{values['logloss']:>9.4f}{values['calibration']:>8.3f}")
    return "\n".join(lines)
