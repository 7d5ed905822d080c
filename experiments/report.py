"""A grid's report: `results.md` (tables of means, spreads, lifts and key slices) and the plots."""
import io
import json
import math
import pathlib
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
import pandas as pd

from llm4msr.experiments.stats import (ITEM_MODES, KEY_SLICES, MODE_ORDER, best_mode_on_eval, lift_table, ordered,
                                       scenarios_of, summarize, target_check)
from llm4msr.files import write_file

if TYPE_CHECKING:
    from llm4msr.experiments.grid import GridSpec

RESULTS_MD, SCENARIO_PLOT, LIFT_PLOT = "results.md", "auc_per_scenario.png", "lift.png"
GRID_JSON = "grid.json"  # the grid's settings (written by `grid.run_grid`), shown in the report
# a key slice with fewer test rows is left out of the report: its AUC is noise (the time split has
# ~15 rows of users new to a scenario)
KEY_SLICE_MIN_EXAMPLES = 100


def _slice_sections(table: pd.DataFrame, backbones, modes) -> List[str]:
    """Test AUC of `none` and the lift of every mode in the KEY_SLICES the runs have, and the
    targets: the eval-chosen mode above none by more than 2σ overall and in each key slice."""
    present = [(stem, bucket, reading) for stem, bucket, reading in KEY_SLICES
               if f"test_{stem}={bucket}_auc" in table.columns
               and table[f"test_{stem}={bucket}_examples"].max() >= KEY_SLICE_MIN_EXAMPLES]
    out = []
    if present:
        out += ["## Key slices: test AUC of `none` and lift of each mode", "",
                "Lift = mean(mode) − mean(none) ± std of the per-seed paired lift; **bold** when above 2σ "
                "(σ as in the lift table). Examples: mean test rows in the slice.", ""]
        header = ["backbone", "mode", *[f"{reading} (`{stem}={bucket}`)" for stem, bucket, reading in present]]
        rows = []
        for backbone in backbones:
            for mode in modes:
                cells = []
                for stem, bucket, _ in present:
                    column = f"test_{stem}={bucket}_auc"
                    sub = table[table["backbone"] == backbone]
                    if mode == "none":
                        stats = summarize(sub, column)
                        examples = sub[f"test_{stem}={bucket}_examples"].mean()
                        cells.append(_fmt(stats["mean"].get((backbone, "none")), stats["std"].get((backbone, "none")))
                                     + f" ({examples:,.0f} ex.)" if (backbone, "none") in stats.index else "–")
                        continue
                    lift = lift_table(sub, column)
                    hit = lift[lift["knowledge"] == mode]
                    if hit.empty:
                        cells.append("–")
                        continue
                    r = hit.iloc[0]
                    text = f"{r['lift']:+.4f} ± {r['std_lift']:.4f}"
                    cells.append(f"**{text}**" if r["significant"] else text)
                if any(c != "–" for c in cells):
                    rows.append([backbone, mode, *cells])
        out += [_markdown_table(header, rows), ""]
    targets = [("test_auc", "overall")] + [(f"test_{stem}={bucket}_auc", reading) for stem, bucket, reading in present]
    rows = _target_rows(table, backbones, targets)
    if rows:
        out += ["## Targets: the mode chosen on eval above `none` by more than 2σ", "",
                "The mode per backbone is the knowledge mode with the best mean eval AUC (test is not looked at); "
                "the second block chooses among the modes with item knowledge (`item`, `all`) only.", "",
                _markdown_table(["backbone", "mode (by eval)", *[reading for _, reading in targets]],
                                rows + _target_rows(table, backbones, targets, ITEM_MODES)), ""]
    return out


def _target_rows(table: pd.DataFrame, backbones, targets, among=None) -> List[List[str]]:
    """Per backbone, the mode chosen on eval (among `among`) and its lift over none on each target column."""
    rows = []
    for backbone in backbones:
        mode = best_mode_on_eval(table, backbone, among)
        if mode is None or table[(table["backbone"] == backbone) & (table["knowledge"] == "none")].empty:
            continue
        cells = [backbone, mode]
        for column, _ in targets:
            lift = lift_table(table[table["backbone"] == backbone], column)
            hit = lift[lift["knowledge"] == mode]
            if hit.empty:
                cells.append("–")
                continue
            r = hit.iloc[0]
            cells.append(f"{r['lift']:+.4f} vs 2σ {2 * r['sigma']:.4f}: {'**met**' if r['significant'] else 'missed'}")
        rows.append(cells)
    return rows


def _selection_table(selection: dict, backbones, modes) -> str:
    """Which candidate each cell kept (`select_on_eval`), with the candidates' model settings."""
    names = list(selection["candidates"])
    lines = [f"Settings chosen per backbone and mode on eval ({selection['rule']}); candidates: "
             + "; ".join(f"`{name}` = `{json.dumps(selection['candidates'][name])}`" for name in names) + ".", ""]
    rows = [[backbone] + [selection["choice"].get(backbone, {}).get(mode, {}).get("from", "") for mode in modes]
            for backbone in backbones]
    return "\n".join(lines) + _markdown_table(["backbone", *modes], rows)


def _fmt(mean, std, digits=4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell_table(table, column, backbones, modes, digits=4) -> str:
    stats = summarize(table, column)
    rows = []
    for backbone in backbones:
        row = [backbone]
        for mode in modes:
            if (backbone, mode) in stats.index:
                cell = stats.loc[(backbone, mode)]
                row.append(_fmt(cell["mean"], cell["std"], digits))
            else:
                row.append("–")
        rows.append(row)
    return _markdown_table(["backbone", *modes], rows)


def render_markdown(table: pd.DataFrame, spec: Optional["GridSpec"] = None, wall_seconds: Optional[float] = None,
                    grid: Optional[dict] = None) -> str:
    backbones = ordered(table["backbone"], list(spec.backbones) if spec else [])
    modes = ordered(table["knowledge"], MODE_ORDER)
    scenarios = scenarios_of(table)
    seeds = sorted(table["seed"].unique().tolist())
    out = ["# Knowledge benchmark", ""]
    settings = (grid or {}).get("settings") or (spec.settings() if spec else None)
    if settings:
        out += [f"Data `{settings['data_dir']}`; epochs ≤ {settings['epochs']} (early stopping on eval AUC, "
                f"patience {settings['patience']}, best weights restored), batch {settings['batch_size']}; "
                f"model settings shared by every run: `{json.dumps(settings['model'])}`.", ""]
    expected = len(backbones) * len(modes) * len(seeds)
    out += [f"{len(table)} runs ({len(backbones)} backbones × {len(modes)} knowledge modes × seeds "
            f"{', '.join(map(str, seeds))}){'' if len(table) == expected else f' — {expected - len(table)} missing'}; "
            f"mean ± sample std (ddof 1) over seeds; test split, scored once per run."]
    if (grid or {}).get("selection"):
        out += ["", _selection_table(grid["selection"], backbones, modes)]
    if wall_seconds is not None:
        out += [f"Wall time of this invocation: {wall_seconds / 60:.1f} min; train seconds summed over runs: "
                f"{table['train_seconds'].sum() / 60:.1f} min."]
    out.append("")
    for title, column, digits in (("Overall test AUC", "test_auc", 4), ("Overall test logloss", "test_logloss", 4),
                                  ("Overall test gAUC", "test_gauc", 4)):
        out += [f"## {title}", "", _cell_table(table, column, backbones, modes, digits), ""]
    out += ["## Test AUC per scenario", ""]
    for scenario in scenarios:
        out += [f"### {scenario}", "", _cell_table(table, f"test_{scenario}_auc", backbones, modes), ""]
    lifts = lift_table(table, "test_auc")
    if len(lifts):
        out += ["## Lift of each knowledge mode over `none` (overall test AUC)", "",
                "lift = mean(mode) − mean(none) over seeds; σ = the largest of the std over seeds of the "
                "`none` runs, of the mode's runs and of the per-seed paired difference; "
                "the lift counts when it exceeds 2σ.", ""]
        rows = []
        for backbone in backbones:
            for mode in modes:
                hit = lifts[(lifts["backbone"] == backbone) & (lifts["knowledge"] == mode)]
                if hit.empty:
                    continue
                r = hit.iloc[0]
                rows.append([backbone, mode, f"{r['lift']:+.4f}", f"{r['lift_pct']:+.2f} %", f"{r['std_lift']:.4f}",
                             f"{r['sigma']:.4f}", "**yes**" if r["significant"] else "no", str(r["seeds"])])
        out += [_markdown_table(["backbone", "mode", "lift", "lift %", "std of paired lift", "σ", "lift > 2σ",
                                 "seeds"], rows), ""]
        scenario_rows = []
        for backbone in backbones:
            for mode in modes:
                cells = []
                for scenario in scenarios:
                    lift = lift_table(table[table["backbone"] == backbone], f"test_{scenario}_auc")
                    hit = lift[lift["knowledge"] == mode]
                    cells.append("–" if hit.empty else f"{hit['lift'].iloc[0]:+.4f} ± {hit['std_lift'].iloc[0]:.4f}")
                if mode != "none" and any(c != "–" for c in cells):
                    scenario_rows.append([backbone, mode, *cells])
        if scenario_rows:
            out += ["### Lift per scenario (test AUC; ± std of the paired lift)", "",
                    _markdown_table(["backbone", "mode", *scenarios], scenario_rows), ""]
        if "both" in modes and "none" in modes:
            check = target_check(table, "both")
            rows = [[r["backbone"], f"{r['lift']:+.4f}", f"{2 * r['sigma']:.4f}", "yes" if r["significant"] else "no",
                     f"{r['worst_scenario']} {r['worst_scenario_lift']:+.4f}", "yes" if r["no_scenario_worse"] else "no",
                     "**met**" if r["met"] else "missed"] for _, r in check.iterrows()]
            out += ["## Target: `both` above `none` by more than 2σ, no scenario worse", "",
                    _markdown_table(["backbone", "lift", "2σ", "lift > 2σ", "worst scenario lift", "no scenario worse",
                                     "target"], rows), ""]
    out += _slice_sections(table, backbones, modes)
    cost = summarize(table, "train_seconds")
    epochs = summarize(table, "epochs")
    rows = []
    for backbone in backbones:
        row = [backbone]
        for mode in modes:
            if (backbone, mode) in cost.index:
                row.append(f"{cost.loc[(backbone, mode), 'mean']:.0f} s / {epochs.loc[(backbone, mode), 'mean']:.1f} ep")
            else:
                row.append("–")
        rows.append(row)
    out += ["## Cost: train seconds / epochs run (mean over seeds)", "", _markdown_table(["backbone", *modes], rows), "",
            f"Plots: `{SCENARIO_PLOT}` (test AUC per scenario by backbone and mode, ± std), `{LIFT_PLOT}` "
            f"(lift over none with ± std error bars and the 2σ threshold).", ""]
    return "\n".join(out)


def render_plots(table: pd.DataFrame, out_dir, backbones: Optional[Sequence[str]] = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    backbones = ordered(table["backbone"], list(backbones or []))
    modes = ordered(table["knowledge"], MODE_ORDER)
    colors = dict(zip(MODE_ORDER, ["#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]))
    panels = [("overall", "test_auc")] + [(s, f"test_{s}_auc") for s in scenarios_of(table)]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    width = 0.8 / max(1, len(modes))
    x = np.arange(len(backbones))
    for axis, (title, column) in zip(axes[0], panels):
        stats = summarize(table, column)
        lows = []
        for i, mode in enumerate(modes):
            means = [stats.loc[(b, mode), "mean"] if (b, mode) in stats.index else np.nan for b in backbones]
            stds = [stats.loc[(b, mode), "std"] if (b, mode) in stats.index else np.nan for b in backbones]
            axis.bar(x + (i - (len(modes) - 1) / 2) * width, means, width, yerr=np.nan_to_num(stds),
                     label=mode, color=colors.get(mode), capsize=2, error_kw={"linewidth": 0.8})
            lows += [m - (s if not np.isnan(s) else 0) for m, s in zip(means, stds) if not np.isnan(m)]
        highs = stats["mean"] + stats["std"].fillna(0)
        if lows:
            axis.set_ylim(min(lows) - 0.01, float(highs.max()) + 0.01)
        axis.set_title(f"test AUC: {title}", fontsize=9)
        axis.set_xticks(x, backbones, rotation=30, fontsize=7)
        axis.tick_params(axis="y", labelsize=7)
        axis.grid(axis="y", linewidth=0.3)
    axes[0][0].legend(fontsize=7, title="knowledge", title_fontsize=7)
    figure.tight_layout()
    _save_figure(figure, out_dir / SCENARIO_PLOT)
    plt.close(figure)

    lifts = lift_table(table, "test_auc")
    lift_modes = [m for m in modes if m != "none"]
    figure, axis = plt.subplots(figsize=(6.4, 3.2))
    width = 0.8 / max(1, len(lift_modes))
    for i, mode in enumerate(lift_modes):
        rows = [lifts[(lifts["backbone"] == b) & (lifts["knowledge"] == mode)] for b in backbones]
        values = [r["lift"].iloc[0] if len(r) else np.nan for r in rows]
        errors = [r["std_lift"].iloc[0] if len(r) else np.nan for r in rows]
        sigmas = [r["sigma"].iloc[0] if len(r) else np.nan for r in rows]
        offset = x + (i - (len(lift_modes) - 1) / 2) * width
        axis.bar(offset, values, width, yerr=np.nan_to_num(errors), label=mode, color=colors.get(mode),
                 capsize=2, error_kw={"linewidth": 0.8})
        axis.scatter(offset, 2 * np.asarray(sigmas, dtype=float), marker="_", color="black", s=60, linewidths=1,
                     label="2σ" if i == 0 else None, zorder=3)
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set_xticks(x, backbones, fontsize=8)
    axis.set_ylabel("test AUC lift over none", fontsize=8)
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title("knowledge lift over none (± std of paired lift; bar above 2σ mark = significant)", fontsize=8)
    axis.legend(fontsize=7)
    axis.grid(axis="y", linewidth=0.3)
    figure.tight_layout()
    _save_figure(figure, out_dir / LIFT_PLOT)
    plt.close(figure)


def _save_figure(figure, path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    write_file(path, buffer.getvalue())


def write_report(table: pd.DataFrame, out_dir, spec: Optional["GridSpec"] = None,
                 wall_seconds: Optional[float] = None) -> None:
    out_dir = pathlib.Path(out_dir)
    if table.empty:
        write_file(out_dir / RESULTS_MD, "# Knowledge benchmark\n\nNo finished runs yet.\n")
        return
    grid_path = out_dir / GRID_JSON
    grid = json.loads(grid_path.read_text()) if grid_path.is_file() else None
    write_file(out_dir / RESULTS_MD, render_markdown(table, spec, wall_seconds, grid))
    render_plots(table, out_dir, spec.backbones if spec else (grid or {}).get("backbones"))
