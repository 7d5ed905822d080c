"""The knowledge benchmark grid: every backbone x knowledge mode x seed on one data set, through the
fast training path (`llm4msr.trainer.fast`), with a results table, a Markdown report and plots.

    from llm4msr.experiments.grid import GridSpec, run_grid
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
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from llm4msr.contract import KNOWLEDGE_REDUCTION
from llm4msr.errors import UserFacingError
from llm4msr.experiments.report import GRID_JSON, LIFT_PLOT, RESULTS_MD, SCENARIO_PLOT, write_report
from llm4msr.experiments.stats import MODE_ORDER, ordered
from llm4msr.files import write_file
from llm4msr.pipeline.data.canonical import dataset_fingerprint
from llm4msr.trainer.training import TrainConfig

RESULTS_CSV = "results.csv"
METRICS = ("auc", "logloss", "gauc", "calibration", "examples")
KEY = ("backbone", "knowledge", "seed")
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
    # Transform: reduce the knowledge to this many train principal components (0: normalised only)
    knowledge_reduction: int = KNOWLEDGE_REDUCTION

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

    def __init__(self, data_dir, knowledge_dir=None, need_knowledge: bool = True,
                 knowledge_reduction: int = KNOWLEDGE_REDUCTION):
        from llm4msr.pipeline.data.canonical import read_dataset
        from llm4msr.pipeline.knowledge.artifact import read_knowledge
        from llm4msr.trainer.fast import ExampleEncoder

        self.data_dir = str(data_dir)
        self.dataset = read_dataset(data_dir)
        self.knowledge = read_knowledge(knowledge_dir) if (knowledge_dir and need_knowledge) else None
        self.encoders, self.splits = {}, {}
        for with_knowledge in ((False, True) if self.knowledge is not None else (False,)):
            encoder = ExampleEncoder(self.dataset, self.knowledge if with_knowledge else None, knowledge_reduction)
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
    for split in ("test", "eval"):  # eval's slices too: choices per regime are made on them
        for slice_name, buckets in result[split].get("slices", {}).items():
            for bucket, values in buckets.items():
                for metric in METRICS:
                    row[f"{split}_{slice_name.replace('slice_', '')}={bucket}_{metric}"] = values[metric]
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
                "backbones": ordered(tables[0]["backbone"], []), "modes": ordered(tables[0]["knowledge"], MODE_ORDER),
                "seeds": sorted(tables[0]["seed"].unique().tolist())}
    out_dir = pathlib.Path(out_dir)
    write_file(out_dir / GRID_JSON, json.dumps(document, indent=2, sort_keys=True) + "\n")
    write_results(out_dir, rows)
    table = read_results(out_dir)
    write_report(table, out_dir)
    return table
