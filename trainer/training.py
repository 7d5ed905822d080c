"""The one training loop: the TFX `run_fn`, `llm4msr train` and `llm4msr grid` all train with
`fit`, from one `TrainConfig`, so the model the pipeline pushes is the model the quality grid measures.

    ranking, summary = fit(model_config, input_spec, train_batches, eval_batches, TrainConfig())

Adam (`LazyAdam`) at `ModelConfig.learning_rate`; at most `epochs` epochs, early stopping when the
eval AUC has not improved for `patience` epochs, the best epoch's weights restored; `max_steps` (the
TFX Trainer's `train_steps`) caps the total number of train steps across epochs.

Data-parallel training on several machines: `TrainConfig.distribute` (`auto` by default: one
`MultiWorkerMirroredStrategy` replica per worker when `TF_CONFIG` names more than one). Every worker
runs the same command; each global batch is split between the workers, so a step sees the same
rows as on one machine. Embedding tables stay replicated: tables too large for one worker need
`ParameterServerStrategy` with sharded variables (`variable_partitioner`) and a coordinator-driven
loop, which this loop does not implement.
"""
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Optional, Sequence, Tuple, Union

from llm4msr.errors import UserFacingError
from llm4msr.trainer.validation import fail, require_positive


DISTRIBUTE_MODES = ("auto", "none", "multi_worker")


@dataclass
class TrainConfig:
    epochs: int = 10  # at most; early stopping on eval AUC usually ends sooner
    patience: int = 2  # epochs without an eval AUC gain before stopping
    batch_size: int = 1024
    seed: int = 0  # initialisation and data order: a rerun differs by thread scheduling only
    max_steps: Optional[int] = None  # total train steps across epochs (TFX `train_steps`); None: no cap
    calibrate: bool = True  # fit per-scenario Platt scaling on the eval split after training
    distribute: str = "auto"  # "auto" (multi-worker when TF_CONFIG names several workers), "none", "multi_worker"
    # the Trainer (run_fn): a split's transformed examples stay in memory after the first epoch when
    # they take at most this many MB (twice that while shuffled), so later epochs skip reading,
    # parsing and the Transform graph; 0 streams every epoch from the files
    example_cache_mb: int = 1024

    def __post_init__(self):
        for name in ("epochs", "patience", "batch_size"):
            require_positive("TrainConfig", name, getattr(self, name))
        require_positive("TrainConfig", "seed", self.seed, allow_zero=True)
        require_positive("TrainConfig", "example_cache_mb", self.example_cache_mb, allow_zero=True)
        if self.max_steps is not None:
            require_positive("TrainConfig", "max_steps", self.max_steps)
        if self.distribute not in DISTRIBUTE_MODES:
            fail("TrainConfig", "distribute", f"expected one of {list(DISTRIBUTE_MODES)}, got {self.distribute!r}")

    @classmethod
    def from_dict(cls, value: Union["TrainConfig", Mapping, None]) -> "TrainConfig":
        if isinstance(value, TrainConfig):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value or {}) - known)
        if unknown:
            fail("TrainConfig", unknown[0], f"unknown field (expected one of {sorted(known)})")
        return cls(**(value or {}))

    def to_dict(self) -> dict:
        return asdict(self)


def _tf_config() -> dict:
    """The `TF_CONFIG` environment variable ({} when unset), refused clearly when it is not a JSON object."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as error:
        raise UserFacingError(f"TF_CONFIG: not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise UserFacingError('TF_CONFIG: expected {"cluster": {"worker": ["host:port", ...]}, "task": {...}}')
    return config


def cluster_size() -> int:
    """Workers (chief included) that `TF_CONFIG` names; 1 without a cluster."""
    cluster = _tf_config().get("cluster", {})
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def is_chief() -> bool:
    """Whether this process writes the outputs: the chief, else worker 0 (or no cluster at all)."""
    config = _tf_config()
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def distribution_strategy(mode: str):
    """The `tf.distribute` strategy for `TrainConfig.distribute`. Call it before any other
    TensorFlow work of the process: collective ops are configured when the runtime starts."""
    import tensorflow as tf

    if mode == "none" or (mode == "auto" and cluster_size() == 1):
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _shard_by_rows(batches):
    """Workers split every batch by rows: the default (by file) fails on fewer files than workers."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)


def stop_after_steps(max_steps: int):
    """A Keras callback that ends training once the optimizer has taken `max_steps` steps, in
    whichever epoch (defined here so that importing this module does not load TensorFlow)."""
    import tensorflow as tf

    class StopAfterSteps(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= max_steps:
                self.model.stop_training = True

    return StopAfterSteps()


def fit(model_config, input_spec, train, evaluation, config: TrainConfig, callbacks: Sequence = (),
        verbose: int = 0, strategy=None) -> Tuple["RankingModel", dict]:  # noqa: F821
    """Builds, compiles and trains a `RankingModel`. `train` and `evaluation` yield
    `(features, label)` batches; `train` is shuffled by its maker with `config.seed` (the same order
    on every worker). `strategy`: from `distribution_strategy(config.distribute)`, made at the
    start of the process (default: made here, which works unless TensorFlow already ran).
    Returns the model with its best weights and a summary (epochs, best epoch and eval AUC, seconds,
    parameters, workers)."""
    import tensorflow as tf

    from llm4msr.trainer.model import ModelConfig, compile_ranking_model

    model_config = ModelConfig.from_dict(model_config)
    strategy = strategy or distribution_strategy(config.distribute)
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        ranking = compile_ranking_model(model_config, input_spec)
    train, evaluation = _shard_by_rows(train), _shard_by_rows(evaluation)
    stopper = tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=config.patience,
                                               restore_best_weights=True)
    extra = [stop_after_steps(config.max_steps)] if config.max_steps else []
    started = time.time()
    history = ranking.fit(train, validation_data=evaluation, epochs=config.epochs,
                          callbacks=[stopper, *extra, *callbacks], verbose=verbose)
    epochs = len(history.history["val_auc"])  # EarlyStopping restores the best weights however training ended
    calibration = calibrate(ranking, evaluation) if config.calibrate else None
    return ranking, {
        "backbone": model_config.backbone, "knowledge": model_config.knowledge_name, "seed": config.seed,
        "epochs": epochs, "best_epoch": stopper.best_epoch + 1,
        "best_eval_auc": float(stopper.best), "train_seconds": round(time.time() - started, 2),
        "parameters": int(ranking.model.count_params()), "calibration": calibration,
        "workers": strategy.num_replicas_in_sync,
    }


MIN_CALIBRATION_ROWS = 200  # a scenario with fewer eval rows (or one class) shares the overall fit


def calibrate(ranking, evaluation) -> dict:
    """Fits `scale * logit + shift` per scenario on the eval batches (logistic regression on the
    model's logit, Newton steps) and sets the model's `ScenarioCalibration` layer. Monotonic within
    a scenario, so per-scenario AUC does not change. Returns the fitted values."""
    import numpy as np

    from llm4msr.trainer.model import CALIBRATION_LAYER

    layer = ranking.model.get_layer(CALIBRATION_LAYER)
    layer.set_calibration(np.ones(layer.num_scenarios), np.zeros(layer.num_scenarios))
    logits, labels, scenarios = [], [], []
    for features, label in evaluation:
        probability = np.clip(ranking.predict_step((features, label)).numpy().reshape(-1), 1e-7, 1 - 1e-7)
        logits.append(np.log(probability / (1 - probability)))
        labels.append(np.asarray(label).reshape(-1))
        scenarios.append(np.asarray(features["scenario"]).reshape(-1))
    logits, labels, scenarios = (np.concatenate(parts) for parts in (logits, labels, scenarios))
    overall = platt(logits, labels)
    fitted = []
    for scenario in range(layer.num_scenarios):
        rows = scenarios == scenario
        enough = rows.sum() >= MIN_CALIBRATION_ROWS and 0 < labels[rows].mean() < 1
        fitted.append(platt(logits[rows], labels[rows]) if enough else overall)
    scale, shift = np.array(fitted).T
    layer.set_calibration(scale, shift)
    return {"scale": scale.round(4).tolist(), "shift": shift.round(4).tolist()}


def platt(logits, labels, steps: int = 25) -> tuple:
    """(a, b) minimising the logloss of sigmoid(a * logit + b): two-parameter logistic regression."""
    import numpy as np

    a, b = 1.0, 0.0
    x = np.stack([logits, np.ones_like(logits)], axis=1)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(a * logits + b)))
        gradient = x.T @ (p - labels)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        a, b = np.array([a, b]) - np.linalg.solve(hessian, gradient)
    if not (np.isfinite(a) and np.isfinite(b)):  # separable or degenerate eval data: keep the model as it is
        return 1.0, 0.0
    return float(a), float(b)
