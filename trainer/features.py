"""The input contract every model shares: which features exist, their kinds and sizes.

One `InputSpec` drives the Keras inputs of every backbone, the fast experiment path and the
TFX trainer. Input names and dtypes:

* each categorical feature: int64 index in `[0, size)`; the out-of-vocabulary slot is the last index,
  `size - 1`; the scenario feature is categorical too, its size is the number of scenarios;
* each dense feature: float32 scalar (already normalised);
* `user_knowledge` / `scenario_knowledge` / `item_knowledge`: float32 `[B, dim]` knowledge vectors
  (absent when the dim is 0).

Scalar features may arrive as `[B]` or `[B, 1]`; the layers accept both.
"""
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Mapping, Union

import tensorflow as tf

from llm4msr.contract import (ITEM_KNOWLEDGE, KNOWLEDGE_FEATURES, LABEL, SCENARIO, SCENARIO_KNOWLEDGE,
                              USER_KNOWLEDGE)
from llm4msr.trainer.validation import ConfigError, fail, require_positive  # noqa: F401  (re-exported)


@dataclass
class InputSpec:
    categorical: Dict[str, int]
    dense: List[str] = field(default_factory=list)
    scenario_feature: str = "scenario"
    user_knowledge_dim: int = 0
    scenario_knowledge_dim: int = 0
    item_knowledge_dim: int = 0

    def __post_init__(self):
        self.categorical = dict(self.categorical)
        self.dense = list(self.dense)
        self.validate()

    @classmethod
    def from_dict(cls, value: Union["InputSpec", Mapping]) -> "InputSpec":
        if isinstance(value, InputSpec):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            fail("InputSpec", unknown[0], f"unknown field (expected one of {sorted(known)})")
        return cls(**value)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def knowledge_dims(self) -> Dict[str, int]:
        """Knowledge input name -> width (0: not an input)."""
        return {USER_KNOWLEDGE: self.user_knowledge_dim, SCENARIO_KNOWLEDGE: self.scenario_knowledge_dim,
                ITEM_KNOWLEDGE: self.item_knowledge_dim}

    @property
    def num_scenarios(self) -> int:
        return self.categorical[self.scenario_feature]

    def validate(self) -> None:
        if not self.categorical:
            fail("InputSpec", "categorical", "needs at least the scenario feature")
        for name, size in self.categorical.items():
            require_positive("InputSpec", f"categorical[{name!r}]", size)
        if self.scenario_feature not in self.categorical:
            fail("InputSpec", "scenario_feature",
                 f"{self.scenario_feature!r} is not a categorical feature ({sorted(self.categorical)})")
        clash = set(self.dense) & (set(self.categorical) | set(KNOWLEDGE_FEATURES))
        if clash:
            fail("InputSpec", "dense", f"names used twice: {sorted(clash)}")
        require_positive("InputSpec", "user_knowledge_dim", self.user_knowledge_dim, allow_zero=True)
        require_positive("InputSpec", "scenario_knowledge_dim", self.scenario_knowledge_dim, allow_zero=True)
        require_positive("InputSpec", "item_knowledge_dim", self.item_knowledge_dim, allow_zero=True)

    def keras_inputs(self) -> Dict[str, tf.keras.Input]:
        """One `tf.keras.Input` per feature. Scalars are declared `[B]`; Keras functional models
        squeeze a `[B, 1]` tensor to fit, so both layouts work."""
        inputs = {name: tf.keras.Input(shape=(), dtype=tf.int64, name=name) for name in self.categorical}
        inputs.update({name: tf.keras.Input(shape=(), dtype=tf.float32, name=name) for name in self.dense})
        for name, dim in self.knowledge_dims.items():
            if dim:
                inputs[name] = tf.keras.Input(shape=(dim,), dtype=tf.float32, name=name)
        return inputs


def as_vector(tensor: tf.Tensor) -> tf.Tensor:
    """`[B]` or `[B, 1]` -> `[B]`."""
    return tf.reshape(tensor, [-1])


def input_spec_from_transform(tft_output, num_scenarios: int) -> InputSpec:
    """The model inputs the Transform graph produces (`llm4msr.transform.preprocessing`): every int64
    output but the label, the scenario and the evaluation slices is a categorical feature sized by
    its vocabulary (+ the out-of-vocabulary slot), every float scalar a dense one, and each knowledge
    output an input of its width (the Transform normalises, and may reduce, the knowledge)."""
    from llm4msr.transform.preprocessing import OOV_BUCKETS, SLICE_PREFIX

    shapes = tft_output.transformed_feature_spec()
    categorical, dense = {}, []
    for name in sorted(shapes):
        feature = shapes[name]
        if name in (LABEL, SCENARIO, USER_KNOWLEDGE, SCENARIO_KNOWLEDGE, ITEM_KNOWLEDGE) or name.startswith(SLICE_PREFIX):
            continue
        if feature.dtype == tf.int64:
            categorical[name] = tft_output.vocabulary_size_by_name(name) + OOV_BUCKETS
        else:
            dense.append(name)
    categorical[SCENARIO] = num_scenarios
    dims = [int(shapes[name].shape[-1]) if name in shapes else 0
            for name in (USER_KNOWLEDGE, SCENARIO_KNOWLEDGE, ITEM_KNOWLEDGE)]
    return InputSpec(categorical, dense, SCENARIO, *dims)
