"""Statistics of a grid's results table: means and spreads over seeds, paired lifts over `none`,
the targets, and the mode chosen on eval."""
import math
from typing import Iterable, List, Optional, Sequence

import pandas as pd

MODE_ORDER = ("none", "user", "scenario", "both", "item", "all")
ITEM_MODES = ("item", "all")  # the modes with item knowledge
# the slices where knowledge should carry what ids cannot: (results column stem, bucket, reading)
KEY_SLICES = (("user_history", "0", "new users (no train row)"),
              ("user_scenario_history", "0", "user new to the scenario"),
              ("item_long_tail", "0-5", "long-tail items (0-5 train rows)"))


def scenarios_of(table: pd.DataFrame, split: str = "test") -> List[str]:
    prefix = f"{split}_"
    names = []
    for column in table.columns:
        if column.startswith(prefix) and column.endswith("_auc") and column != f"{split}_auc":
            names.append(column[len(prefix):-len("_auc")])
    return names


def ordered(values: Iterable[str], order: Sequence[str]) -> List[str]:
    values = list(dict.fromkeys(values))
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


def summarize(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count over seeds of `column` per (backbone, knowledge)."""
    grouped = table.groupby(["backbone", "knowledge"])[column]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "n": grouped.count()})


def lift_table(table: pd.DataFrame, column: str = "test_auc") -> pd.DataFrame:
    """The lift of each knowledge mode over `none` for the same backbone, on `column`.

    For each backbone and mode != none: `lift` = mean(mode) - mean(none) over seeds; `lift_pct`
    relative to mean(none); `std_lift` = sample std over seeds of the per-seed paired difference
    (mode - none, the same seed); `std_none`, `std_mode` = sample std of each arm; `sigma` = the
    largest of the three (the noise yardstick, deliberately conservative); `significant` = lift > 2 sigma;
    `seeds` = the number of seeds both arms have. A cell without `none` runs is left out."""
    records = []
    for backbone in table["backbone"].unique():
        rows = table[table["backbone"] == backbone]
        base = rows[rows["knowledge"] == "none"].set_index("seed")[column]
        if base.empty:
            continue
        for mode in rows["knowledge"].unique():
            if mode == "none":
                continue
            arm = rows[rows["knowledge"] == mode].set_index("seed")[column]
            paired = (arm - base).dropna()
            lift = float(arm.mean() - base.mean())
            stds = [_std(base), _std(arm), _std(paired)]
            sigma = max((s for s in stds if not math.isnan(s)), default=float("nan"))
            records.append({"backbone": backbone, "knowledge": mode, "none": float(base.mean()),
                            "mode": float(arm.mean()), "lift": lift,
                            "lift_pct": 100.0 * lift / float(base.mean()) if base.mean() else float("nan"),
                            "std_lift": stds[2], "std_none": stds[0], "std_mode": stds[1], "sigma": sigma,
                            "significant": bool(not math.isnan(sigma) and lift > 2 * sigma),
                            "seeds": int(len(paired))})
    return pd.DataFrame.from_records(records, columns=[
        "backbone", "knowledge", "none", "mode", "lift", "lift_pct", "std_lift", "std_none", "std_mode",
        "sigma", "significant", "seeds"])


def _std(values) -> float:
    values = pd.Series(values).dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def target_check(table: pd.DataFrame, mode: str = "both") -> pd.DataFrame:
    """Per backbone: is `mode`'s overall test AUC above `none` by more than 2 sigma (see `lift_table`),
    and is no scenario's mean test AUC below `none`'s? `worst_scenario` is the lowest scenario lift."""
    overall = lift_table(table, "test_auc")
    overall = overall[overall["knowledge"] == mode].set_index("backbone")
    records = []
    for backbone, row in overall.iterrows():
        scenario_lifts = {}
        for scenario in scenarios_of(table):
            lifts = lift_table(table[table["backbone"] == backbone], f"test_{scenario}_auc")
            lifts = lifts[lifts["knowledge"] == mode]
            if len(lifts):
                scenario_lifts[scenario] = float(lifts["lift"].iloc[0])
        worst = min(scenario_lifts, key=scenario_lifts.get) if scenario_lifts else None
        records.append({"backbone": backbone, "lift": row["lift"], "sigma": row["sigma"],
                        "significant": row["significant"],
                        "worst_scenario": worst, "worst_scenario_lift": scenario_lifts.get(worst, float("nan")),
                        "no_scenario_worse": all(v >= 0 for v in scenario_lifts.values()),
                        "met": bool(row["significant"] and all(v >= 0 for v in scenario_lifts.values()))})
    return pd.DataFrame.from_records(records, columns=["backbone", "lift", "sigma", "significant", "worst_scenario",
                                                       "worst_scenario_lift", "no_scenario_worse", "met"])


# ---------------------------------------------------------------------------------------------
# Report: Markdown and plots

def best_mode_on_eval(table: pd.DataFrame, backbone: str, among: Optional[Sequence[str]] = None) -> Optional[str]:
    """The knowledge mode (not none; one of `among` if given) with the highest mean eval AUC: chosen
    without looking at test."""
    rows = table[(table["backbone"] == backbone) & (table["knowledge"] != "none")]
    if among is not None:
        rows = rows[rows["knowledge"].isin(among)]
    if rows.empty or "eval_auc" not in rows:
        return None
    return str(rows.groupby("knowledge")["eval_auc"].mean().idxmax())
