"""Running the pipeline locally (LocalDagRunner + SQLite metadata) and compiling it for Kubeflow
Pipelines (KubeflowV2DagRunner), plus the reports printed after a local run."""
import contextlib
import json
import logging
import pathlib
import sys
import time
from typing import Dict, List, Optional

from llm4msr.errors import UserFacingError
from llm4msr.files import entry_names, is_dir, is_file, join, load_file_system_plugins, write_file
from llm4msr.pipeline.config import PipelineConfig
from llm4msr.pipeline.data.canonical import read_scenario_ids
from llm4msr.quiet import is_quiet
from llm4msr.transform.preprocessing import SLICE_PREFIX, SLICES, slice_names


def run_local(config: PipelineConfig) -> dict:
    """Runs the pipeline; returns {"seconds": ..., "components": [...], "evaluation": ..., "pushed": ...}."""
    from tfx import v1 as tfx

    from llm4msr.pipeline.pipeline import create_pipeline

    for uri in config.uris:  # TFX's components read and write them through tf.io.gfile, in this process
        load_file_system_plugins(uri)
    if not is_file(join(config.dataset_dir, "interactions.csv")):
        raise UserFacingError(f"{config.dataset_dir}: no canonical data set (run `llm4msr data prepare` first)")
    pathlib.Path(config.metadata_path).parent.mkdir(parents=True, exist_ok=True)
    pipeline = create_pipeline(config)
    started = time.time()
    with component_progress(quiet=is_quiet()):
        tfx.orchestration.LocalDagRunner().run(pipeline)
    report = collect_report(config)
    report["seconds"] = time.time() - started
    return report


class ComponentProgress(logging.Handler):
    """One line per component as the LocalDagRunner finishes it: name, ran or cached, seconds.
    Reads the lines TFX logs through absl ('Component %s is running.', 'A cached execution %d is
    used.', 'Component %s is finished.')."""

    def __init__(self, stream=None):
        super().__init__(logging.INFO)
        self.stream = stream or sys.stdout
        self.component, self.started, self.cached = None, 0.0, False

    def emit(self, record):
        if record.msg == "Component %s is running.":
            self.component, self.started, self.cached = record.args[0], time.time(), False
        elif record.msg == "A cached execution %d is used.":
            self.cached = True
        elif record.msg == "Component %s is finished." and record.args[0] == self.component:
            state = "CACHED" if self.cached else "COMPLETE"
            print(f"{self.component:<35}{state:<13}{time.time() - self.started:>7.1f} s", file=self.stream, flush=True)


@contextlib.contextmanager
def component_progress(quiet: bool):
    """Prints `ComponentProgress` lines while the pipeline runs. Quiet: TFX's other absl lines are
    held back too (only errors show); otherwise they print as usual."""
    from absl import flags, logging as absl_logging

    absl_logger, root = logging.getLogger("absl"), logging.getLogger()
    saved = absl_logger.level, absl_logger.propagate, list(absl_logger.handlers), root.level
    saved_verbosity = flags.FLAGS["verbosity"].value
    # TFX's Beam executors parse absl flags from sys.argv, which resets the absl logger to the
    # --verbosity flag (WARNING by default) mid-run: the flag itself says INFO for the run.
    absl_logging.set_verbosity(absl_logging.INFO)
    root.setLevel(saved[3])  # set_verbosity may lower the root level too; only absl's is wanted
    progress = ComponentProgress()
    absl_logger.setLevel(logging.INFO)
    absl_logger.addHandler(progress)
    if quiet:
        errors = logging.StreamHandler(sys.stderr)
        errors.setLevel(logging.ERROR)
        errors.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        absl_logger.handlers = [progress, errors]
        absl_logger.propagate = False
    try:
        yield progress
    finally:
        flags.FLAGS["verbosity"].value = saved_verbosity
        absl_logger.setLevel(saved[0])
        absl_logger.propagate = saved[1]
        absl_logger.handlers = saved[2]
        root.setLevel(saved[3])


def compile_kubeflow(config: PipelineConfig, output: str, image: str) -> str:
    """Writes the Kubeflow Pipelines v2 / Vertex pipeline JSON for `config`, reading no data: paths
    stay the URIs given. The components that read the data set are never cache hits there: KFP
    keys its cache on parameters, and the data's fingerprint is only known when they run."""
    from tfx import v1 as tfx

    from llm4msr.pipeline.pipeline import DATA_READERS, create_pipeline

    runner_config = tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image)
    output_path = pathlib.Path(output)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=runner_config, output_dir=str(output_path.parent), output_filename=output_path.name)
    runner.run(create_pipeline(config, kubeflow=True), write_out=True)
    job = json.loads(output_path.read_text())
    for name in DATA_READERS:
        job["pipelineSpec"]["root"]["dag"]["tasks"][name]["cachingOptions"] = {"enableCache": False}
    write_file(output_path, json.dumps(job, indent=2, sort_keys=True))
    return str(output_path)


# -- reports ----------------------------------------------------------------------------------------

def collect_report(config: PipelineConfig) -> dict:
    """Reads the latest run's executions from ML Metadata: per-component timing, cache use,
    the evaluation table, the blessing and the pushed model."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(pathlib.Path(config.metadata_path).resolve())
    store = metadata_store.MetadataStore(connection)
    contexts = [c for c in store.get_contexts() if c.type_id == _type_id(store, "pipeline_run")]
    if not contexts:
        return {"components": []}
    run = max(contexts, key=lambda c: c.create_time_since_epoch)
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.create_time_since_epoch)
    node_type = _type_id(store, "node")
    rows = []
    for execution in executions:
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
        name = nodes[0].split(".", 1)[-1] if nodes else ""  # node contexts are "<pipeline>.<component id>"
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
        rows.append({"component": name or str(execution.type_id), "state": state, "seconds": seconds})
    return {"components": rows, "evaluation": _latest_evaluation(config, read_scenario_ids(config.dataset_dir)),
            "pushed": _latest_push(config)}


def _type_id(store, name: str) -> int:
    return store.get_context_type(name).id


def _latest_output(config: PipelineConfig, component: str, output: str) -> Optional[str]:
    """The folder of `component`'s `output` written by its latest execution (a local path or a URI)."""
    folder = join(config.pipeline_root, f"{component}/{output}")
    runs = [name for name in entry_names(folder) if name.isdigit()] if is_dir(folder) else []
    return join(folder, max(runs, key=int)) if runs else None


def _latest_evaluation(config: PipelineConfig, scenario_ids: List[str]) -> Optional[dict]:
    import tensorflow_model_analysis as tfma

    uri = _latest_output(config, "Evaluator", "evaluation")
    if uri is None:
        return None
    slices = _metrics_by_slice(tfma, uri, scenario_ids)
    validation = tfma.load_validation_result(str(uri))
    failures = [f"{_slice_name(f.slice_key, scenario_ids)}: {_failure(fc)}"
                for f in validation.metric_validations_per_slice for fc in f.failures]
    return {"slices": slices, "blessed": bool(validation.validation_ok), "failures": failures}


def _failure(failure) -> str:
    """e.g. 'auc = 0.4812 fails lower_bound 0.55' (value threshold) or '... change ...' (vs. baseline)."""
    value = failure.metric_value
    number = value.double_value.value if value.HasField("double_value") else value
    threshold = failure.metric_threshold
    if failure.metric_key.is_diff:
        bound = threshold.change_threshold.absolute.value
        return (f"{failure.metric_key.name} changed by {number:+.4f} against the last blessed model "
                f"(allowed: {bound:+.4f})")
    bounds = threshold.value_threshold
    if bounds.HasField("lower_bound") and number < bounds.lower_bound.value:
        return f"{failure.metric_key.name} = {number:.4f} is below the lower bound {bounds.lower_bound.value:.4f}"
    if bounds.HasField("upper_bound") and number > bounds.upper_bound.value:
        return f"{failure.metric_key.name} = {number:.4f} is above the upper bound {bounds.upper_bound.value:.4f}"
    return f"{failure.metric_key.name} = {number} fails {bounds}".strip()


def _metrics_by_slice(tfma, uri, scenario_ids: List[str]) -> Dict[str, Dict[str, float]]:
    result = tfma.load_eval_result(str(uri))
    table = {}
    for slice_key, metrics in result.slicing_metrics:
        values = metrics.get("", {}).get("", {})
        table[_slice_name(slice_key, scenario_ids)] = {name: _scalar(value) for name, value in values.items()}
    return table


def _slice_name(slice_key, scenario_ids: List[str]) -> str:
    """'overall' or the scenario id; the Evaluator slices on the transformed scenario index."""
    if hasattr(slice_key, "single_slice_keys"):  # a SliceKey proto from the validation result
        slice_key = [(k.column, k.bytes_value or k.int64_value) for k in slice_key.single_slice_keys]
    if not slice_key:
        return "overall"
    names = []
    for column, value in slice_key:
        value = value.decode() if isinstance(value, bytes) else value
        if column == "scenario" and isinstance(value, int) and 0 <= value < len(scenario_ids):
            value = scenario_ids[value]
        elif column in SLICES and isinstance(value, int) and 0 <= value < len(slice_names(column)):
            column, value = column[len(SLICE_PREFIX):], slice_names(column)[value]
        names.append(f"{column}={value}")
    return ", ".join(names)


def _scalar(value) -> float:
    if isinstance(value, dict):
        if "doubleValue" in value:
            return float(value["doubleValue"])
        if "boundedValue" in value:
            return float(value["boundedValue"]["value"])
    return float("nan")


def _latest_push(config: PipelineConfig) -> Optional[str]:
    from llm4msr.serving.layout import version_dirs

    versions = version_dirs(config.serving_dir)
    return versions[max(versions)] if versions else None


def format_report(report: dict) -> str:
    lines = ["component                          state        seconds"]
    for row in report.get("components", []):
        lines.append(f"{row['component']:<35}{row['state']:<13}{row['seconds']:>7.1f}")
    if "seconds" in report:
        lines.append(f"{'total (wall)':<48}{report['seconds']:>7.1f}")
    evaluation = report.get("evaluation")
    if evaluation:
        lines.append("")
        lines.append(f"{'slice':<28}{'examples':>9}{'AUC':>8}{'logloss':>9}{'norm.':>7}{'calib.':>8}")
        for name, metrics in sorted(evaluation["slices"].items(), key=_slice_order):
            lines.append(f"{name:<28}{metrics.get('example_count', float('nan')):>9.0f}"
                         f"{metrics.get('auc', float('nan')):>8.4f}{metrics.get('logloss', float('nan')):>9.4f}"
                         f"{_ratio(metrics.get('normalized_logloss')):>7}{_ratio(metrics.get('calibration')):>8}")
        lines.append("blessed: yes" if evaluation["blessed"] else
                     "blessed: NO — not pushed:\n  " + "\n  ".join(evaluation["failures"]))
    lines.append(f"pushed model: {report.get('pushed') or 'none'}")
    return "\n".join(lines)


def _ratio(value) -> str:
    """A ratio metric for the table: 3 decimals, or `>999` when a tiny slice makes it explode."""
    if value is None:
        return "nan"
    return ">999" if value > 999 else f"{value:.3f}"


def _slice_order(item):
    """overall, scenarios, then each bucketed slice in bucket order."""
    name = item[0]
    if name == "overall":
        return (0, "", 0)
    column, _, value = name.partition("=")
    if f"{SLICE_PREFIX}{column}" in SLICES:
        return (2, column, slice_names(f"{SLICE_PREFIX}{column}").index(value))
    return (1, column, value)


def write_report(report: dict, path: str) -> None:
    write_file(path, json.dumps(report, indent=2, default=str))
