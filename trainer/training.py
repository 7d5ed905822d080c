"""The one training loop: the TFX `run_fn`, `llm4msr train` and `llm4msr benchmark` all train with
`fit`, from one `TrainConfig`, so the model the pipeline pushes is the model the benchmark measures.

    ranking, summary = fit(model_config, input_spec, train_batches, eval_batches, TrainConfig())

Adam (`FusedAdam`) at `ModelConfig.learning_rate`; at most `epochs` epochs, early stopping when the
eval AUC has not improved for `patience` epochs, the best epoch's weights restored; `max_steps` (the
TFX Trainer's `train_steps`) caps the total number of train steps across epochs.
"""
import time
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Optional, Sequence, Tuple, Union

import tensorflow as tf

from llm4msr.trainer.features import fail, require_positive


@dataclass
class TrainConfig:
    epochs: int = 10  # at most; early stopping on eval AUC usually ends sooner
    patience: int = 2  # epochs without an eval AUC gain before stopping
    batch_size: int = 1024
    seed: int = 0  # initialisation and data order: a rerun differs by thread scheduling only
    max_steps: Optional[int] = None  # total train steps across epochs (TFX `train_steps`); None: no cap

    def __post_init__(self):
        for name in ("epochs", "patience", "batch_size"):
            require_positive("TrainConfig", name, getattr(self, name))
        require_positive("TrainConfig", "seed", self.seed, allow_zero=True)
        if self.max_steps is not None:
            require_positive("TrainConfig", "max_steps", self.max_steps)

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


class StopAfterSteps(tf.keras.callbacks.Callback):
    """Ends training once the optimizer has taken `max_steps` steps (in whichever epoch)."""

    def __init__(self, max_steps: int):
        super().__init__()
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.max_steps:
            self.model.stop_training = True


def fit(model_config, input_spec, train: tf.data.Dataset, evaluation: tf.data.Dataset,
        config: TrainConfig, callbacks: Sequence[tf.keras.callbacks.Callback] = (),
        verbose: int = 0) -> Tuple["RankingModel", dict]:  # noqa: F821
    """Builds, compiles and trains a `RankingModel`. `train` and `evaluation` yield
    `(features, label)` batches; `train` is shuffled by its maker with `config.seed`.
    Returns the model with its best weights and a summary (epochs, best epoch and eval AUC, seconds,
    parameters)."""
    from llm4msr.trainer.model import ModelConfig, compile_ranking_model

    model_config = ModelConfig.from_dict(model_config)
    tf.keras.utils.set_random_seed(config.seed)
    ranking = compile_ranking_model(model_config, input_spec)
    stopper = tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=config.patience,
                                               restore_best_weights=True)
    extra = [StopAfterSteps(config.max_steps)] if config.max_steps else []
    started = time.time()
    history = ranking.fit(train, validation_data=evaluation, epochs=config.epochs,
                          callbacks=[stopper, *extra, *callbacks], verbose=verbose)
    epochs = len(history.history["val_auc"])  # EarlyStopping restores the best weights however training ended
    return ranking, {
        "backbone": model_config.backbone, "knowledge": model_config.knowledge, "seed": config.seed,
        "epochs": epochs, "best_epoch": stopper.best_epoch + 1,
        "best_eval_auc": float(stopper.best), "train_seconds": round(time.time() - started, 2),
        "parameters": int(ranking.model.count_params()),
    }
