"""The model factory: `ModelConfig` + `InputSpec` -> a Keras functional model, and `RankingModel`,
the trainable `tfrs.Model` around it.

    embeddings ─> [+ item content] ─> [UserMetaStack(user_knowledge)] ─> [+ user–item match] ─> [DCN Cross]
        ─┬─> backbone ──────────┐
         └─> [ScenarioMetaTower] ─┴─ + ─> calibration ─> sigmoid

Item knowledge enters twice: its projection (`item content`, `embedding_dim` wide) is concatenated
to the id and attribute embeddings, so an item the ids know little about still has a content
representation; with user knowledge too, `SemanticMatch` of the projected user and item vectors is
concatenated after the user meta layers. Every backbone receives both.

`build_model` returns a plain functional `tf.keras.Model` (dict of features -> click probability
`[B, 1]`, output name `probability`): save it with `model.save(path)` (SavedModel) or
`model.save("m.keras")` and load it with `tf.keras.models.load_model(path)` after importing
`llm4msr.trainer.model` (which registers the layers and backbones). Reuse parts in your own functional model:

    from llm4msr.trainer import backbones, layers
    x = layers.FeatureEmbedding({"user_id": 100, "scenario": 3}, 16)(my_inputs)
    x = layers.UserMetaStack(num_layers=1)([x, my_inputs["user_knowledge"]])
    logit = backbones.BACKBONES["star"](num_scenarios=3)([x, my_inputs["scenario"]])
"""
from dataclasses import asdict, dataclass, field, fields
from typing import List, Mapping, Union

import tensorflow as tf
import tensorflow_recommenders as tfrs

from llm4msr.contract import ITEM_KNOWLEDGE, LABEL, PREDICTION_KEY, SCENARIO_KNOWLEDGE, USER_KNOWLEDGE
from llm4msr.trainer.backbones import BACKBONES, make_backbone
from llm4msr.trainer.features import InputSpec, fail, require_positive
from llm4msr.trainer.layers import (Cross, FeatureEmbedding, IdDropout, KnowledgeProjector, ScenarioCalibration,
                                    ScenarioMetaTower, SemanticMatch, UserMetaStack, no_autograph)
from llm4msr.trainer.knowledge_modes import KNOWLEDGE_LEVELS, KNOWLEDGE_MODES  # noqa: F401  (re-exported)
from llm4msr.trainer.optimizer import LazyAdam

CALIBRATION_LAYER = "calibration"  # ScenarioCalibration, set after training from the eval split


@dataclass
class ModelConfig:
    backbone: str = "dnn"
    embedding_dim: int = 16
    hidden_units: List[int] = field(default_factory=lambda: [128, 64])  # dnn, shared-bottom bottom, STAR FCN
    tower_units: List[int] = field(default_factory=lambda: [32])  # per-scenario towers, STAR auxiliary net
    num_experts: int = 4  # MMoE experts; PLE shared experts per level
    scenario_experts: int = 1  # PLE experts per scenario per level
    expert_units: List[int] = field(default_factory=lambda: [64])
    ple_levels: int = 2
    knowledge: Union[str, List[str]] = "none"  # none | user | scenario | item | both | all, or levels: ["user", "item"] or "user+item"
    projection_dim: int = 16  # d_k
    meta_rank: int = 2
    meta_layers: int = 1
    meta_generator_units: int = 8  # small: generator cost grows with d * rank * this (16: 6 % slower, same AUC)
    meta_tower_units: List[int] = field(default_factory=lambda: [16])
    cross_layers: int = 0  # tfrs DCN cross layers after the user meta stack
    dropout: float = 0.0
    knowledge_dropout: float = 0.0  # on the item content and match features (they overfit rare items fast)
    # share of training rows whose ids are replaced by the out-of-vocabulary (last) index: trains the
    # unknown-id embedding and teaches the knowledge path to stand in for a new user's id
    id_dropout: float = 0.0
    id_dropout_features: List[str] = field(default_factory=lambda: ["user_id"])
    learning_rate: float = 1e-3

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, value: Union["ModelConfig", Mapping, None]) -> "ModelConfig":
        if isinstance(value, ModelConfig):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value or {}) - known)
        if unknown:
            fail("ModelConfig", unknown[0], f"unknown field (expected one of {sorted(known)})")
        return cls(**(value or {}))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def knowledge_levels(self) -> tuple:
        """The knowledge levels the model uses, in `KNOWLEDGE_LEVELS` order."""
        wanted = KNOWLEDGE_MODES[self.knowledge] if isinstance(self.knowledge, str) else tuple(self.knowledge)
        return tuple(level for level in KNOWLEDGE_LEVELS if level in wanted)

    @property
    def knowledge_name(self) -> str:
        """The mode as one word: its name, or the levels joined by '+'."""
        return self.knowledge if isinstance(self.knowledge, str) else "+".join(self.knowledge_levels) or "none"

    @property
    def uses_user_knowledge(self) -> bool:
        return "user" in self.knowledge_levels

    @property
    def uses_scenario_knowledge(self) -> bool:
        return "scenario" in self.knowledge_levels

    @property
    def uses_item_knowledge(self) -> bool:
        return "item" in self.knowledge_levels

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            fail("ModelConfig", "backbone", f"unknown backbone {self.backbone!r} (expected one of {sorted(BACKBONES)})")
        if isinstance(self.knowledge, str) and "+" in self.knowledge:  # "user+item", as the CLI takes it
            self.knowledge = [level.strip() for level in self.knowledge.split("+")]
        if isinstance(self.knowledge, (list, tuple)):
            unknown = [level for level in self.knowledge if level not in KNOWLEDGE_LEVELS]
            if unknown or not self.knowledge:
                fail("ModelConfig", "knowledge", f"unknown knowledge levels {unknown or self.knowledge!r} "
                                                 f"(a list of levels from {list(KNOWLEDGE_LEVELS)})")
            self.knowledge = list(self.knowledge)
        elif self.knowledge not in KNOWLEDGE_MODES:
            fail("ModelConfig", "knowledge", f"unknown knowledge mode {self.knowledge!r} "
                                             f"(expected one of {list(KNOWLEDGE_MODES)} or a list of levels)")
        for name in ("embedding_dim", "num_experts", "scenario_experts", "ple_levels", "projection_dim",
                     "meta_rank", "meta_layers", "meta_generator_units"):
            require_positive("ModelConfig", name, getattr(self, name))
        require_positive("ModelConfig", "cross_layers", self.cross_layers, allow_zero=True)
        for name in ("hidden_units", "tower_units", "expert_units", "meta_tower_units"):
            units = getattr(self, name)
            if not isinstance(units, (list, tuple)) or not units:
                fail("ModelConfig", name, f"expected a non-empty list of layer sizes, got {units!r}")
            for index, size in enumerate(units):
                require_positive("ModelConfig", f"{name}[{index}]", size)
        if not isinstance(self.id_dropout_features, (list, tuple)):
            fail("ModelConfig", "id_dropout_features", f"expected a list of categorical feature names, "
                                                       f"got {self.id_dropout_features!r}")
        self.id_dropout_features = list(self.id_dropout_features)
        for name in ("dropout", "knowledge_dropout", "id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail("ModelConfig", name, f"expected 0 <= {name} < 1, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            fail("ModelConfig", "learning_rate", f"expected a positive number, got {self.learning_rate!r}")

    def check_inputs(self, spec: InputSpec) -> None:
        """The knowledge mode needs the matching knowledge inputs."""
        if self.uses_user_knowledge and not spec.user_knowledge_dim:
            fail("InputSpec", "user_knowledge_dim", f"knowledge={self.knowledge!r} needs user knowledge vectors "
                                                    f"(got width 0)")
        if self.uses_scenario_knowledge and not spec.scenario_knowledge_dim:
            fail("InputSpec", "scenario_knowledge_dim", f"knowledge={self.knowledge!r} needs scenario knowledge "
                                                        f"vectors (got width 0)")
        missing = [name for name in self.id_dropout_features if name not in spec.categorical]
        if self.id_dropout and missing:
            fail("ModelConfig", "id_dropout_features", f"{missing} are not categorical features "
                                                       f"({sorted(spec.categorical)})")
        if self.uses_item_knowledge and not spec.item_knowledge_dim:
            fail("InputSpec", "item_knowledge_dim", f"knowledge={self.knowledge!r} needs item knowledge vectors "
                                                    f"(got width 0: extract the item level)")


def model_inputs(config: ModelConfig, spec: InputSpec) -> dict:
    """The Keras inputs the model uses: features plus the knowledge its mode needs."""
    inputs = spec.keras_inputs()
    for name, used in ((USER_KNOWLEDGE, config.uses_user_knowledge),
                       (SCENARIO_KNOWLEDGE, config.uses_scenario_knowledge),
                       (ITEM_KNOWLEDGE, config.uses_item_knowledge)):
        if not used:
            inputs.pop(name, None)
    return inputs


def build_model(config: Union[ModelConfig, Mapping], input_spec: Union[InputSpec, Mapping]) -> tf.keras.Model:
    """Builds the functional model: dict of features -> click probability `[B, 1]`."""
    config, spec = ModelConfig.from_dict(config), InputSpec.from_dict(input_spec)
    config.check_inputs(spec)
    inputs = model_inputs(config, spec)
    features = {name: inputs[name] for name in [*spec.categorical, *spec.dense]}
    if config.id_dropout:
        for name in config.id_dropout_features:  # the out-of-vocabulary slot is the last index
            features[name] = IdDropout(spec.categorical[name] - 1, config.id_dropout,
                                       name=f"{name}_dropout")(features[name])
    x = FeatureEmbedding(spec.categorical, config.embedding_dim, spec.dense, name="features")(features)
    meta = dict(projection_dim=config.projection_dim, rank=config.meta_rank,
                generator_units=config.meta_generator_units)
    if config.uses_item_knowledge:
        item_content = KnowledgeProjector(config.embedding_dim, name="item_content")(inputs[ITEM_KNOWLEDGE])
        item_content = tf.keras.layers.Dropout(config.knowledge_dropout, name="item_content_dropout")(item_content)
        x = tf.keras.layers.Concatenate(name="with_item_content")([x, item_content])
    user_projection = None
    if config.uses_user_knowledge:
        # the user vector is projected once; the hierarchical scenario tower and the match reuse it
        x, user_projection = UserMetaStack(config.meta_layers, name="user_meta", return_projection=True,
                                           **meta)([x, inputs[USER_KNOWLEDGE]])
    if config.uses_item_knowledge and config.uses_user_knowledge:
        match = SemanticMatch(name="semantic_match")([user_projection, inputs[ITEM_KNOWLEDGE]])
        match = tf.keras.layers.Dropout(config.knowledge_dropout, name="semantic_match_dropout")(match)
        x = tf.keras.layers.Concatenate(name="with_semantic_match")([x, match])
    x0 = x
    for index in range(config.cross_layers):
        x = Cross(name=f"cross_{index}")(x0, x)
    scenario = inputs[spec.scenario_feature]
    logit = make_backbone(config, spec.num_scenarios)([x, scenario])
    if config.uses_scenario_knowledge:
        tower_inputs = [x, inputs[SCENARIO_KNOWLEDGE]]
        if config.uses_user_knowledge:
            tower_inputs.append(user_projection)  # the hierarchy: user-specialised scenario weights
        tower_inputs.append(scenario)  # scenario knowledge is projected once per scenario in the batch
        tower = ScenarioMetaTower(spec.num_scenarios, config.meta_layers, hidden_units=config.meta_tower_units,
                                  hierarchical=config.uses_user_knowledge, dropout=config.dropout,
                                  name="scenario_meta", **meta)
        logit = tf.keras.layers.Add(name="logit")([logit, tower(tower_inputs)])
    logit = ScenarioCalibration(spec.num_scenarios, name=CALIBRATION_LAYER)([logit, scenario])
    probability = tf.keras.layers.Activation("sigmoid", name=PREDICTION_KEY)(logit)
    return tf.keras.Model(inputs, probability, name=f"llm4msr_{config.backbone}_{config.knowledge_name.replace('+', '_')}")


class RankingModel(tfrs.Model):
    """Trains a model from `build_model` with a `tfrs.tasks.Ranking` task (binary cross-entropy,
    AUC metric). Batches are `(features, labels)` or a features dict holding `label_key`.
    Metrics are computed on evaluation only (training stays fast); save `ranking_model.model`."""

    def __init__(self, model: tf.keras.Model, label_key: str = LABEL, **kwargs):
        super().__init__(**kwargs)
        self.model, self.label_key = model, label_key
        # summed here and divided by the global batch in `compute_loss`: the mean under any tf.distribute strategy
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.BinaryCrossentropy(reduction=tf.keras.losses.Reduction.SUM),
                                       metrics=[tf.keras.metrics.AUC(name="auc")])

    @no_autograph
    def call(self, features, training=False):
        return self.model(self._model_features(features), training=training)

    def _model_features(self, features):
        """Only the model's inputs: batches may carry the label and other columns."""
        return {name: features[name] for name in self.model.input_names}

    # The steps have no tensor-dependent Python control flow; skipping AutoGraph saves seconds per trace.
    @no_autograph
    def train_step(self, inputs):
        logs = super().train_step(inputs)
        # task metrics are updated on evaluation only: do not log their stale values while training
        return {name: value for name, value in logs.items() if name.endswith("loss")}

    @no_autograph
    def test_step(self, inputs):
        return super().test_step(inputs)

    @no_autograph
    def predict_step(self, data):
        return self.model(self._model_features(data[0] if isinstance(data, (tuple, list)) else data),
                          training=False)

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        if isinstance(inputs, (tuple, list)):
            features, labels = inputs[0], inputs[1]
        else:
            features, labels = inputs, inputs[self.label_key]
        predictions = self.model(self._model_features(features), training=training)
        labels = tf.reshape(tf.cast(labels, predictions.dtype), [-1, 1])
        summed = self.task(labels=labels, predictions=predictions, compute_metrics=not training)
        return summed / _global_batch_rows(labels)


def _global_batch_rows(labels: tf.Tensor) -> tf.Tensor:
    """Rows of the global batch, over every replica (with one replica, this batch's rows). Each replica's
    loss is its share of the global mean, because the optimizer sums the replicas' gradients."""
    rows = tf.cast(tf.shape(labels)[0], labels.dtype)
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, rows)


def compile_ranking_model(config: Union[ModelConfig, Mapping], input_spec, steps_per_execution: int = 1,
                          **compile_kwargs) -> RankingModel:
    """`build_model` + `RankingModel` + Adam (`LazyAdam`: row-sparse on embeddings) at `config.learning_rate`,
    ready for `fit`."""
    config = ModelConfig.from_dict(config)
    ranking = RankingModel(build_model(config, input_spec))
    ranking.compile(optimizer=LazyAdam(config.learning_rate),
                    steps_per_execution=steps_per_execution, **compile_kwargs)
    # Creating the slot variables now spares `fit` a second trace of the train step (a tf.function
    # that creates variables on its first call is traced twice).
    ranking.optimizer.build(ranking.trainable_variables)
    return ranking
