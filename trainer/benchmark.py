"""The knowledge benchmark grid: every backbone x knowledge mode x seed on one data set, through the
fast training path (`llm4msr.trainer.fast`), with a results table, a Markdown report and plots.

    from llm4msr.trainer.benchmark import GridSpec, run_grid
    run_grid(GridSpec(data_dir, out_dir, knowledge_dir, backbones=["dnn", "star"], modes=["none", "both"],
                      seeds=[0, 1, 2]))

Protocol (the same for every row):
- hyper-parameters are one `ModelConfig` for the whole grid (only `backbone` and `knowledge` vary),
  chosen beforehand on the eval split; every run gets the same epoch budget and early stopping on
  eval AUC (best weights restored);
- the test split is scored once per run, after training; eval metrics (overall and per scenario)
  are recorded too, so settings can be compared without looking at test;
- runs are paired by seed: for a seed, the data order and the random state at model creation are
  the same for every backbone and mode.

Outputs in `out_dir` (each written to a temporary file, then renamed into place):
`results.csv` (one row per finished run, appended after every run), `results.md` (mean +- std
tables and lifts over `none`), `auc_per_scenario.png`, `lift.png`, `grid.json` (the settings).
A rerun with the same settings skips the runs already in `results.csv` (resume); a rerun with other
settings is refused unless `overwrite=True`, so rows made under different settings never mix.

The data set, the knowledge vectors and the encoded splits are loaded once per process and shared
by all runs (`fast.train` reloads them per call); `jobs > 1` runs the grid in that many worker
processes, each loading them once and using `cpu_count // jobs` TensorFlow threads.
"""
import csv
import hashlib
import io
import json
import math
import os
import pathlib
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from llm4msr.errors import UserFacingError
from llm4msr.files import write_file
from llm4msr.pipeline.data.canonical import dataset_fingerprint
from llm4msr.trainer.training import TrainConfig

RESULTS_CSV, RESULTS_MD, GRID_JSON = "results.csv", "results.md", "grid.json"
SCENARIO_PLOT, LIFT_PLOT = "auc_per_scenario.png", "lift.png"
METRICS = ("auc", "logloss", "gauc", "calibration", "examples")
KEY = ("backbone", "knowledge", "seed")
MODE_ORDER = ("none", "user", "scenario", "both", "item", "all")
# the slices where knowledge should carry what ids cannot: (results column stem, bucket, reading)
KEY_SLICES = (("user_history", "0", "new users (no train row)"),
              ("user_scenario_history", "0", "user new to the scenario"),
              ("item_long_tail", "0-5", "long-tail items (0-5 train rows)"))


_TRAINING = TrainConfig()


@dataclass
class GridSpec:
    data_dir: str
    out_dir: str
    knowledge_dir: Optional[str] = None
    backbones: Sequence[str] = ("dnn", "shared_bottom", "mmoe", "ple", "star")
    modes: Sequence[str] = MODE_ORDER
    seeds: Sequence[int] = (0, 1, 2)
    epochs: int = _TRAINING.epochs  # the budget of every run: TrainConfig's, as llm4msr train and the pipeline
    batch_size: int = _TRAINING.batch_size
    patience: int = _TRAINING.patience
    model: Dict = field(default_factory=dict)  # ModelConfig fields shared by every run
    jobs: int = 1
    knowledge_reduction: int = 0  # Transform: reduce the knowledge to this many train principal components (0: raw)

    def settings(self) -> dict:
        """What makes two runs comparable: everything but the grid's extent and the parallelism."""
        return {"data_dir": str(pathlib.Path(self.data_dir).resolve()),
                "data_fingerprint": dataset_fingerprint(self.data_dir),
                "knowledge_fingerprint": _knowledge_fingerprint(self.knowledge_dir),
                "epochs": self.epochs, "batch_size": self.batch_size, "patience": self.patience,
                "knowledge_reduction": self.knowledge_reduction,
                "model": dict(sorted(self.model.items())), "resolved_model": self.resolved_model()}

    def resolved_model(self) -> dict:
        """Every ModelConfig field the runs share, defaults included: a change of library defaults
        is a change of settings (it would otherwise mix silently with older rows on resume)."""
        from llm4msr.trainer.model import ModelConfig
        try:
            resolved = ModelConfig.from_dict(dict(self.model)).to_dict()
        except Exception:  # reported with the field at fault by `_check_spec`
            return {}
        return {k: v for k, v in sorted(resolved.items()) if k not in ("backbone", "knowledge")}

    def settings_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]

    def runs(self) -> List[Tuple[str, str, int]]:
        """Seed-major order, so an interrupted grid has whole seeds of every cell first."""
        return [(b, m, s) for s in self.seeds for b in self.backbones for m in self.modes]


# ---------------------------------------------------------------------------------------------
# Fingerprints

def _knowledge_fingerprint(knowledge_dir) -> Optional[str]:
    if knowledge_dir is None:
        return None
    meta = pathlib.Path(knowledge_dir) / "knowledge.json"
    if not meta.is_file():
        raise UserFacingError(f"{knowledge_dir} is not a knowledge folder: knowledge.json is missing "
                              f"(run `llm4msr knowledge extract` first)")
    data = json.loads(meta.read_text())
    keep = {k: data.get(k) for k in ("fingerprint", "template_version", "dim", "model", "dataset")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Training: the fast path with the data set loaded once

class Workspace:
    """The data set, knowledge and encoded splits of one grid, loaded once and reused by every run."""

    def __init__(self, data_dir, knowledge_dir=None, need_knowledge: bool = True, knowledge_reduction: int = 0):
        from llm4msr.pipeline.data.canonical import read_dataset
        from llm4msr.pipeline.knowledge.artifact import read_knowledge
        from llm4msr.trainer.fast import Encoder

        self.data_dir = str(data_dir)
        self.dataset = read_dataset(data_dir)
        self.knowledge = read_knowledge(knowledge_dir) if (knowledge_dir and need_knowledge) else None
        self.encoders, self.splits = {}, {}
        for with_knowledge in ((False, True) if self.knowledge is not None else (False,)):
            encoder = Encoder(self.dataset, self.knowledge if with_knowledge else None, knowledge_reduction)
            splits = {name: encoder.encode(self.dataset, name) for name in ("train", "eval", "test")}
            for name, encoded in splits.items():
                if not len(encoded.labels):
                    raise UserFacingError(f"{data_dir}: the {name} split is empty")
            self.encoders[with_knowledge], self.splits[with_knowledge] = encoder, splits

    def train(self, config, seed: int, epochs: int, batch_size: int, patience: int, verbose: int = 0) -> dict:
        """`fast.train` on the loaded data: early stopping on eval AUC (best weights restored), then
        eval and test scored once each. Returns the same dict as `fast.train` plus `eval`."""
        import tensorflow as tf

        from llm4msr.trainer.fast import fit_encoded

        with_knowledge = bool(config.knowledge_levels)
        if with_knowledge and self.knowledge is None:
            raise UserFacingError(f"knowledge={config.knowledge} needs --knowledge-dir")
        encoder, splits = self.encoders[with_knowledge], self.splits[with_knowledge]
        tf.keras.backend.clear_session()
        training = TrainConfig(epochs=epochs, patience=patience, batch_size=batch_size, seed=seed)
        ranking, summary = fit_encoded(encoder, splits, config, training, verbose)
        result = {"data": self.data_dir, **summary}
        for name in ("eval", "test"):
            result[name] = encoder.report(ranking, splits[name], batch_size)
        return result


def flatten(result: dict, settings_hash: str) -> dict:
    """One results.csv row: keys, budget, then every metric overall and per scenario."""
    row = {"backbone": result["backbone"], "knowledge": result["knowledge"], "seed": int(result["seed"]),
           "epochs": result["epochs"], "best_epoch": result["best_epoch"],
           "train_seconds": result["train_seconds"], "parameters": result["parameters"],
           "best_eval_auc": result["best_eval_auc"]}
    for split in ("test", "eval"):
        for metric in METRICS:
            row[f"{split}_{metric}"] = result[split]["overall"][metric]
        for scenario, values in result[split]["scenarios"].items():
            for metric in METRICS:
                row[f"{split}_{scenario}_{metric}"] = values[metric]
    for slice_name, buckets in result["test"].get("slices", {}).items():
        for bucket, values in buckets.items():
            for metric in METRICS:
                row[f"test_{slice_name.replace('slice_', '')}={bucket}_{metric}"] = values[metric]
    row["settings"] = settings_hash
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return row


# ---------------------------------------------------------------------------------------------
def read_results(out_dir) -> pd.DataFrame:
    path = pathlib.Path(out_dir) / RESULTS_CSV
    if not path.is_file():
        return pd.DataFrame()
    try:  # the settings hash is hex: one like "043227887998" would otherwise be read as a number
        return pd.read_csv(path, dtype={"settings": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def write_results(out_dir, rows: List[dict]) -> None:
    columns = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    write_file(pathlib.Path(out_dir) / RESULTS_CSV, buffer.getvalue())


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(round(value, 6))
    return value


# ---------------------------------------------------------------------------------------------
# The grid

def _worker_init(data_dir, knowledge_dir, need_knowledge, knowledge_reduction, threads, parent_pid):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import llm4msr  # noqa: F401  (Keras 2 before TensorFlow loads)
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    global _WORKSPACE
    _WORKSPACE = Workspace(data_dir, knowledge_dir, need_knowledge, knowledge_reduction)
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid) -> None:
    """A killed grid must not leave workers training: they stop when their parent is gone."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)
    threading.Thread(target=watch, daemon=True).start()


_WORKSPACE: Optional[Workspace] = None


def _worker_run(config_dict, seed, epochs, batch_size, patience):
    from llm4msr.trainer.model import ModelConfig
    return _WORKSPACE.train(ModelConfig.from_dict(config_dict), seed, epochs, batch_size, patience)


def _check_spec(spec: GridSpec) -> None:
    from llm4msr.trainer.backbones import BACKBONES
    from llm4msr.trainer.model import KNOWLEDGE_MODES, ModelConfig

    if not spec.backbones or not spec.modes or not spec.seeds:
        raise UserFacingError("the grid is empty: give at least one backbone, knowledge mode and seed")
    for backbone in spec.backbones:
        if backbone not in BACKBONES:
            raise UserFacingError(f"unknown backbone {backbone!r} (expected some of {', '.join(sorted(BACKBONES))})")
    for mode in spec.modes:
        if mode not in KNOWLEDGE_MODES:
            raise UserFacingError(f"unknown knowledge mode {mode!r} (expected some of {', '.join(KNOWLEDGE_MODES)})")
    if any(m != "none" for m in spec.modes) and not spec.knowledge_dir:
        raise UserFacingError("knowledge modes other than none need --knowledge-dir "
                              "(written by `llm4msr knowledge extract`)")
    for name in ("epochs", "batch_size", "jobs"):
        if getattr(spec, name) < 1:
            raise UserFacingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(spec, name)}")
    if spec.patience < 0:
        raise UserFacingError(f"--patience must be at least 0, got {spec.patience}")
    forbidden = {"backbone", "knowledge"} & set(spec.model)
    if forbidden:
        raise UserFacingError(f"the model config may not set {sorted(forbidden)}: the grid sets them per run")
    try:
        ModelConfig.from_dict({**spec.model})
    except Exception as error:  # ConfigError with the field at fault
        raise UserFacingError(f"model config: {error}") from None
    if not pathlib.Path(spec.data_dir).is_dir():
        raise UserFacingError(f"{spec.data_dir}: no such data set folder (run `llm4msr data prepare`)")
    if spec.knowledge_dir and any(m != "none" for m in spec.modes):  # here, before any worker starts
        from llm4msr.trainer.fast import load_knowledge

        load_knowledge(spec.knowledge_dir, "both", spec.data_dir)


def run_grid(spec: GridSpec, overwrite: bool = False, log=print) -> pd.DataFrame:
    """Runs every (backbone, mode, seed) not yet in `out_dir/results.csv`, appending each finished run
    atomically, then writes the report. Returns the results table."""
    _check_spec(spec)
    out = pathlib.Path(spec.out_dir)
    settings, settings_hash = spec.settings(), spec.settings_hash()
    existing = read_results(out)
    if len(existing) and not overwrite:
        other = sorted(set(existing["settings"].astype(str)) - {settings_hash}) if "settings" in existing else ["?"]
        if other:
            raise UserFacingError(f"{out / RESULTS_CSV} holds runs made with other settings ({', '.join(other)}; "
                                  f"these are {settings_hash}, see {out / GRID_JSON}): use another --out, "
                                  f"the same settings to resume, or --overwrite to start again")
    if overwrite:
        existing = pd.DataFrame()
    rows = existing.to_dict("records") if len(existing) else []
    done = {(r["backbone"], r["knowledge"], int(r["seed"])) for r in rows}
    todo = [run for run in spec.runs() if run not in done]
    grid = {"settings": settings, "settings_hash": settings_hash, "backbones": list(spec.backbones),
            "modes": list(spec.modes), "seeds": list(spec.seeds), "jobs": spec.jobs}
    write_file(out / GRID_JSON, json.dumps(grid, indent=2) + "\n")
    if overwrite or not rows:
        write_results(out, rows)  # an empty table with no rows marks the folder as ours
    log(f"benchmark: {len(spec.runs())} runs, {len(spec.runs()) - len(todo)} already in {out / RESULTS_CSV}, "
        f"{len(todo)} to run with {spec.jobs} job(s); settings {settings_hash}")
    started = time.time()
    if todo:
        need_knowledge = any(mode != "none" for _, mode, _ in todo)
        for result in _execute(spec, todo, need_knowledge):
            rows.append(flatten(result, settings_hash))
            write_results(out, rows)
            done_count = len(rows)
            log(f"[{done_count}/{len(spec.runs())}] {result['backbone']:<13} {result['knowledge']:<8} "
                f"seed {result['seed']}: test AUC {result['test']['overall']['auc']:.4f} "
                f"(eval {result['eval']['overall']['auc']:.4f}), {result['epochs']} epochs, "
                f"{result['train_seconds']:.0f} s train, {time.time() - started:.0f} s elapsed")
    table = pd.DataFrame(rows)
    write_report(table, out, spec=spec, wall_seconds=time.time() - started if todo else None)
    log(f"wrote {out / RESULTS_CSV}, {out / RESULTS_MD}, {out / SCENARIO_PLOT}, {out / LIFT_PLOT} "
        f"in {time.time() - started:.0f} s")
    return table


def _execute(spec: GridSpec, todo, need_knowledge):
    """Yields finished results (in completion order)."""
    from llm4msr.trainer.model import ModelConfig

    configs = {(b, m): ModelConfig.from_dict({**spec.model, "backbone": b, "knowledge": m}).to_dict()
               for b, m, _ in todo}
    if spec.jobs == 1:
        global _WORKSPACE
        _WORKSPACE = Workspace(spec.data_dir, spec.knowledge_dir, need_knowledge, spec.knowledge_reduction)
        for backbone, mode, seed in todo:
            yield _worker_run(configs[(backbone, mode)], seed, spec.epochs, spec.batch_size, spec.patience)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // spec.jobs)
    pool = ProcessPoolExecutor(spec.jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init,
                               initargs=(spec.data_dir, spec.knowledge_dir, need_knowledge, spec.knowledge_reduction,
                                         threads, os.getpid()))
    try:
        pending = {pool.submit(_worker_run, configs[(b, m)], s, spec.epochs, spec.batch_size, spec.patience)
                   for b, m, s in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Summaries

def select_on_eval(grid_dirs: Sequence, out_dir) -> pd.DataFrame:
    """Per-mode tuning within the rules: grids that differ only in their model settings (one
    candidate each, e.g. `--set id_dropout=0.2`) are merged into one grid in which every
    (backbone, knowledge mode) keeps the candidate with the best mean eval AUC over seeds; test is
    never looked at. Every cell gets the same search. `out_dir/grid.json` records the candidates,
    each cell's eval AUC per candidate and the choice; `results.csv` and `results.md` follow."""
    grids = [(pathlib.Path(d), json.loads((pathlib.Path(d) / GRID_JSON).read_text())) for d in grid_dirs]
    tables = [read_results(d) for d, _ in grids]
    if len(grids) < 2 or any(t.empty for t in tables):
        raise UserFacingError(f"select: needs two or more finished grids (got {[str(d) for d, _ in grids]})")
    shared = ("data_fingerprint", "knowledge_fingerprint", "epochs", "batch_size", "patience", "knowledge_reduction")
    first = grids[0][1]["settings"]
    for folder, grid in grids[1:]:
        differs = [k for k in shared if grid["settings"].get(k) != first.get(k)]
        if differs:
            raise UserFacingError(f"select: {folder} differs from {grids[0][0]} in {differs}, not only the model")
    choice, rows = {}, []
    for (backbone, mode), _ in tables[0].groupby(["backbone", "knowledge"], sort=False):
        scores = {}
        for (folder, _), table in zip(grids, tables):
            cell = table[(table["backbone"] == backbone) & (table["knowledge"] == mode)]
            if not cell.empty:
                scores[folder.name] = (float(cell["eval_auc"].mean()), len(cell), cell)
        seeds = max(n for _, n, _ in scores.values())
        complete = {name: score for name, score in scores.items() if score[1] == seeds}  # same seeds for all
        best = max(complete, key=lambda name: complete[name][0])
        rows += complete[best][2].assign(selected_from=best).to_dict("records")
        choice.setdefault(backbone, {})[mode] = {
            "from": best, "eval_auc": {name: round(score[0], 5) for name, score in scores.items()}}
    candidates = {folder.name: grid["settings"]["model"] for folder, grid in grids}
    settings = {**first, "model": {"selected per cell on eval from": candidates}}
    document = {"settings": settings, "selection": {"rule": "best mean eval AUC over seeds, per backbone and mode",
                                                    "candidates": candidates, "choice": choice},
                "backbones": _ordered(tables[0]["backbone"], []), "modes": _ordered(tables[0]["knowledge"], MODE_ORDER),
                "seeds": sorted(tables[0]["seed"].unique().tolist())}
    out_dir = pathlib.Path(out_dir)
    write_file(out_dir / GRID_JSON, json.dumps(document, indent=2, sort_keys=True) + "\n")
    write_results(out_dir, rows)
    table = read_results(out_dir)
    write_report(table, out_dir)
    return table


def scenarios_of(table: pd.DataFrame, split: str = "test") -> List[str]:
    prefix = f"{split}_"
    names = []
    for column in table.columns:
        if column.startswith(prefix) and column.endswith("_auc") and column != f"{split}_auc":
            names.append(column[len(prefix):-len("_auc")])
    return names


def _ordered(values: Iterable[str], order: Sequence[str]) -> List[str]:
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

def best_mode_on_eval(table: pd.DataFrame, backbone: str) -> Optional[str]:
    """The knowledge mode (not none) with the highest mean eval AUC: chosen without looking at test."""
    rows = table[(table["backbone"] == backbone) & (table["knowledge"] != "none")]
    if rows.empty or "eval_auc" not in rows:
        return None
    return str(rows.groupby("knowledge")["eval_auc"].mean().idxmax())


def _slice_sections(table: pd.DataFrame, backbones, modes) -> List[str]:
    """Test AUC of `none` and the lift of every mode in the KEY_SLICES the runs have, and the
    targets: the eval-chosen mode above none by more than 2σ overall and in each key slice."""
    present = [(stem, bucket, reading) for stem, bucket, reading in KEY_SLICES
               if f"test_{stem}={bucket}_auc" in table.columns and table[f"test_{stem}={bucket}_examples"].max() > 0]
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
    rows = []
    for backbone in backbones:
        mode = best_mode_on_eval(table, backbone)
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
    if rows:
        out += ["## Targets: the mode chosen on eval above `none` by more than 2σ", "",
                "The mode per backbone is the knowledge mode with the best mean eval AUC (test is not looked at).", "",
                _markdown_table(["backbone", "mode (by eval)", *[reading for _, reading in targets]], rows), ""]
    return out


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


def render_markdown(table: pd.DataFrame, spec: Optional[GridSpec] = None, wall_seconds: Optional[float] = None,
                    grid: Optional[dict] = None) -> str:
    backbones = _ordered(table["backbone"], list(spec.backbones) if spec else [])
    modes = _ordered(table["knowledge"], MODE_ORDER)
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
    backbones = _ordered(table["backbone"], list(backbones or []))
    modes = _ordered(table["knowledge"], MODE_ORDER)
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


def write_report(table: pd.DataFrame, out_dir, spec: Optional[GridSpec] = None,
                 wall_seconds: Optional[float] = None) -> None:
    out_dir = pathlib.Path(out_dir)
    if table.empty:
        write_file(out_dir / RESULTS_MD, "# Knowledge benchmark\n\nNo finished runs yet.\n")
        return
    grid_path = out_dir / GRID_JSON
    grid = json.loads(grid_path.read_text()) if grid_path.is_file() else None
    write_file(out_dir / RESULTS_MD, render_markdown(table, spec, wall_seconds, grid))
    render_plots(table, out_dir, spec.backbones if spec else (grid or {}).get("backbones"))
