"""Multi-scenario backbones: Keras layers `[x [B, d], scenario [B]] -> logit [B, 1]` for the
example's own scenario. `x` is the (possibly meta-layer-personalised) feature vector.

Backbones plug in by name::

    @register_backbone("my_net")
    class MyNet(Backbone):
        config_fields = ("hidden_units", "dropout")   # ModelConfig fields passed to __init__

        def __init__(self, num_scenarios, hidden_units=(64,), dropout=0.0, **kwargs):
            super().__init__(num_scenarios, hidden_units=list(hidden_units), dropout=dropout, **kwargs)
            ...

        @no_autograph
        def call(self, inputs, training=None):
            x, scenario = inputs
            ...

after which `ModelConfig(backbone="my_net")` builds it. A built backbone is an ordinary layer, so it
can also be used directly in a user's own functional model:
`logit = BACKBONES["star"](num_scenarios=3)([x, scenario])`.
"""
from typing import Dict, Sequence, Type

import tensorflow as tf

from llm4msr.trainer.features import as_vector, fail
from llm4msr.trainer.layers import (MLP, ExpertBank, ScenarioDense, ScenarioTower, mix_experts,
                                    no_autograph, per_scenario, serializable)

BACKBONES: Dict[str, Type["Backbone"]] = {}


def register_backbone(name: str):
    """Class decorator: makes a `Backbone` subclass buildable by name and deserialisable by Keras.

    Sets the class's `backbone_name`, adds it to `BACKBONES` and registers it as Keras-serialisable
    under the package `llm4msr`.

    Args:
      name: the `ModelConfig.backbone` value that selects it.

    Returns:
      The decorator, which returns the class.
    """
    def register(cls):
        cls.backbone_name = name
        BACKBONES[name] = cls
        return serializable(cls)
    return register


def make_backbone(config, num_scenarios: int) -> "Backbone":
    """Builds the backbone a model config names.

    Args:
      config: a `ModelConfig`; `config.backbone` names the backbone, whose `config_fields` are read
        from it.
      num_scenarios: number of scenarios S.

    Returns:
      An unbuilt `Backbone`.

    Raises:
      ConfigError: `config.backbone` is not registered.
    """
    if config.backbone not in BACKBONES:
        fail("ModelConfig", "backbone", f"unknown backbone {config.backbone!r} (expected one of {sorted(BACKBONES)})")
    return BACKBONES[config.backbone].from_model_config(config, num_scenarios)


class Backbone(tf.keras.layers.Layer):
    """Base class of the backbones: stores its constructor arguments so `get_config` is automatic.

    Subclasses pass their own arguments on to `__init__` as keywords and name in `config_fields`
    those read from a `ModelConfig` (`from_model_config`). Every backbone is called on
    `[x, scenario]`, `x` `[B, d]` and `scenario` `[B]` or `[B, 1]` int index in
    `[0, num_scenarios)`, with `training`, and returns a `[B, 1]` logit.

    Args:
      num_scenarios: number of scenarios S.
      **kwargs: the subclass's own arguments, stored for `get_config`, and the base `Layer`'s
        `name` (default: the registered `backbone_name`), `trainable` and `dtype`.
    """
    backbone_name = ""
    config_fields: Sequence[str] = ()

    def __init__(self, num_scenarios: int, **kwargs):
        base = {k: kwargs.pop(k) for k in ("name", "trainable", "dtype") if k in kwargs}
        super().__init__(name=base.pop("name", self.backbone_name), **base)
        self.num_scenarios = num_scenarios
        self._arguments = {"num_scenarios": num_scenarios, **kwargs}

    @classmethod
    def from_model_config(cls, config, num_scenarios: int) -> "Backbone":
        """The backbone with the `config_fields` of `config` (a `ModelConfig`) as its arguments."""
        return cls(num_scenarios=num_scenarios, **{name: getattr(config, name) for name in cls.config_fields})

    def get_config(self):
        return {**super().get_config(), **self._arguments}


@register_backbone("dnn")
class DNN(Backbone):
    """One MLP for all scenarios, then a logit; the scenario is just another input feature (the baseline).

    Args:
      num_scenarios: number of scenarios S (kept in the config; the scenario is not used).
      hidden_units: widths of the ReLU MLP.
      dropout: dropout rate after every MLP layer.

    Inputs:
      `[x, scenario]`: `x` `[B, d]`; `scenario` is ignored.
      `training`: whether dropout is active.

    Returns:
      `[B, 1]` logit.
    """
    config_fields = ("hidden_units", "dropout")

    def __init__(self, num_scenarios, hidden_units=(128, 64), dropout=0.0, **kwargs):
        super().__init__(num_scenarios, hidden_units=list(hidden_units), dropout=dropout, **kwargs)
        self.mlp = MLP(hidden_units, dropout=dropout, name="mlp")
        self.logit = tf.keras.layers.Dense(1, name="logit")

    @no_autograph
    def call(self, inputs, training=None):
        return self.logit(self.mlp(inputs[0], training=training))


@register_backbone("shared_bottom")
class SharedBottom(Backbone):
    """A shared MLP bottom, then one tower per scenario (`ScenarioTower`).

    Args:
      num_scenarios: number of scenarios S.
      hidden_units: widths of the shared ReLU bottom.
      tower_units: widths of each scenario tower's hidden layers.
      dropout: dropout rate after every layer of the bottom and the towers.

    Called like every `Backbone`: `[x, scenario]` (and `training`) -> `[B, 1]` logit.
    """
    config_fields = ("hidden_units", "tower_units", "dropout")

    def __init__(self, num_scenarios, hidden_units=(128, 64), tower_units=(32,), dropout=0.0, **kwargs):
        super().__init__(num_scenarios, hidden_units=list(hidden_units), tower_units=list(tower_units),
                         dropout=dropout, **kwargs)
        self.bottom = MLP(hidden_units, dropout=dropout, name="bottom")
        self.towers = ScenarioTower(num_scenarios, tower_units, dropout, name="towers")

    @no_autograph
    def call(self, inputs, training=None):
        x, scenario = inputs
        return self.towers([self.bottom(x, training=training), scenario], training=training)


@register_backbone("mmoe")
class MMoE(Backbone):
    """Multi-gate mixture of experts: shared experts, one softmax gate and one tower per scenario.

    The experts (`ExpertBank`) all run on `x`; each example's gate (a linear `ScenarioDense` over
    `x`) mixes them, and its scenario's tower reads the mixture.

    Args:
      num_scenarios: number of scenarios S.
      num_experts: number of shared experts.
      expert_units: widths of every expert's ReLU layers.
      tower_units: widths of each scenario tower's hidden layers.
      dropout: dropout rate after every tower hidden layer.

    Called like every `Backbone`: `[x, scenario]` (and `training`) -> `[B, 1]` logit.
    """
    config_fields = ("num_experts", "expert_units", "tower_units", "dropout")

    def __init__(self, num_scenarios, num_experts=4, expert_units=(64,), tower_units=(32,), dropout=0.0, **kwargs):
        super().__init__(num_scenarios, num_experts=num_experts, expert_units=list(expert_units),
                         tower_units=list(tower_units), dropout=dropout, **kwargs)
        self.experts = ExpertBank(num_experts, expert_units, name="experts")
        self.gates = ScenarioDense(num_scenarios, num_experts, name="gates")
        self.towers = ScenarioTower(num_scenarios, tower_units, dropout, name="towers")

    @no_autograph
    def call(self, inputs, training=None):
        x, scenario = inputs
        mixed = mix_experts(self.gates([x, scenario]), self.experts(x))
        return self.towers([mixed, scenario], training=training)


@serializable
class CGCLevel(tf.keras.layers.Layer):
    """One customised-gate-control level of PLE, specialised to multi-scenario data.

    Each example carries its own scenario's stream and the shared stream. Its scenario's experts
    read its own stream and the shared experts the shared stream; its scenario gate (a linear
    `ScenarioDense` over the own stream) mixes both sets into the next own stream, and the shared
    gate (a `Dense` over the shared stream, not on the last level) mixes the same experts into the
    next shared stream. Other scenarios' experts never touch the example. The scenario experts'
    variables are `per_scenario_expert_*`, `[num_scenarios * scenario_experts, ...]`, scenario-major.

    Args:
      num_scenarios: number of scenarios S.
      shared_experts: number of shared experts.
      scenario_experts: number of experts per scenario.
      expert_units: widths of every expert's ReLU layers.
      last: whether this is the last level (no shared gate; the shared output is the own one).

    Inputs:
      `[own, shared, scenario]`: the own and shared streams, `[B, d_own]` and `[B, d_shared]`
      (both `x` on the first level), and `scenario` `[B]` or `[B, 1]` int index in
      `[0, num_scenarios)`.

    Returns:
      `(next_own, next_shared)`, each `[B, expert_units[-1]]`.
    """

    def __init__(self, num_scenarios, shared_experts=2, scenario_experts=1, expert_units=(64,),
                 last=False, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.shared_experts, self.scenario_experts = num_scenarios, shared_experts, scenario_experts
        self.expert_units, self.last = list(expert_units), last
        gate_width = shared_experts + scenario_experts
        self.shared = ExpertBank(shared_experts, expert_units, name="shared_experts")
        self.specific = ExpertBank(num_scenarios * scenario_experts, expert_units,
                                   variable_prefix="per_scenario_expert", name="scenario_experts")
        self.scenario_gate = ScenarioDense(num_scenarios, gate_width, name="scenario_gate")
        self.shared_gate = None if last else tf.keras.layers.Dense(gate_width, name="shared_gate")

    def build(self, input_shape):
        with tf.name_scope(self.specific.name):  # called per scenario through `experts`, not `__call__`
            self.specific.build(input_shape[0])
        super().build(input_shape)

    @no_autograph
    def call(self, inputs):
        own, shared, scenario = inputs
        count = self.scenario_experts  # each example runs its own scenario's experts only
        own_experts = per_scenario(lambda part, s: self.specific.experts(part, s * count, count),
                                   own, scenario, self.num_scenarios)
        experts = tf.concat([own_experts, self.shared(shared)], axis=1)
        next_own = mix_experts(self.scenario_gate([own, scenario]), experts)
        next_shared = next_own if self.last else mix_experts(self.shared_gate(shared), experts)
        return next_own, next_shared

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios, "shared_experts": self.shared_experts,
                "scenario_experts": self.scenario_experts, "expert_units": self.expert_units, "last": self.last}


@register_backbone("ple")
class PLE(Backbone):
    """Progressive layered extraction: stacked CGC levels, then one tower per scenario.

    Both streams of the first `CGCLevel` are `x`; the last level's own stream feeds the example's
    scenario tower (`ScenarioTower`).

    Args:
      num_scenarios: number of scenarios S.
      num_experts: number of shared experts per level.
      scenario_experts: number of experts per scenario per level.
      expert_units: widths of every expert's ReLU layers.
      ple_levels: number of CGC levels.
      tower_units: widths of each scenario tower's hidden layers.
      dropout: dropout rate after every tower hidden layer.

    Called like every `Backbone`: `[x, scenario]` (and `training`) -> `[B, 1]` logit.
    """
    config_fields = ("num_experts", "scenario_experts", "expert_units", "ple_levels", "tower_units", "dropout")

    def __init__(self, num_scenarios, num_experts=2, scenario_experts=1, expert_units=(64,), ple_levels=2,
                 tower_units=(32,), dropout=0.0, **kwargs):
        super().__init__(num_scenarios, num_experts=num_experts, scenario_experts=scenario_experts,
                         expert_units=list(expert_units), ple_levels=ple_levels, tower_units=list(tower_units),
                         dropout=dropout, **kwargs)
        self.levels = [CGCLevel(num_scenarios, num_experts, scenario_experts, expert_units,
                                last=i == ple_levels - 1, name=f"cgc_{i}") for i in range(ple_levels)]
        self.towers = ScenarioTower(num_scenarios, tower_units, dropout, name="towers")

    @no_autograph
    def call(self, inputs, training=None):
        x, scenario = inputs
        own = shared = x
        for level in self.levels:
            own, shared = level([own, shared, scenario])
        return self.towers([own, scenario], training=training)


@serializable
class PartitionedNormalization(tf.keras.layers.Layer):
    """STAR's partitioned normalisation: batch normalisation with per-scenario statistics.

    The statistics are kept per scenario and the scale and shift are `gamma * gamma_s` and
    `beta + beta_s` (shared and per-scenario). In training each example is normalised by its own
    scenario's batch statistics (STAR trains on single-scenario batches; this is the same for mixed
    batches) and the moving statistics of the scenarios present in the batch are updated; at
    inference the moving statistics are used.

    Args:
      num_scenarios: number of scenarios S.
      momentum: of the moving statistics.
      epsilon: added to the variance.

    Inputs:
      `[x, scenario]`: `x` `[B, d]`, `scenario` `[B]` or `[B, 1]` int index in `[0, num_scenarios)`.
      `training`: whether to normalise by the batch statistics (and update the moving ones).

    Returns:
      `[B, d]`.
    """

    def __init__(self, num_scenarios: int, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.momentum, self.epsilon = num_scenarios, momentum, epsilon

    def build(self, input_shape):
        width, s = int(input_shape[0][-1]), self.num_scenarios
        self.gamma = self.add_weight("gamma", [width], initializer="ones")
        self.beta = self.add_weight("beta", [width], initializer="zeros")
        self.scenario_gamma = self.add_weight("per_scenario_gamma", [s, width], initializer="ones")
        self.scenario_beta = self.add_weight("per_scenario_beta", [s, width], initializer="zeros")
        self.moving_mean = self.add_weight("per_scenario_moving_mean", [s, width], initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight("per_scenario_moving_variance", [s, width], initializer="ones",
                                               trainable=False)
        super().build(input_shape)

    @no_autograph
    def call(self, inputs, training=None):
        x, scenario = inputs
        index = tf.cast(as_vector(scenario), tf.int32)
        if training:
            mean, variance = self._batch_statistics(x, index)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        normalised = (x - tf.gather(mean, index)) * tf.math.rsqrt(tf.gather(variance, index) + self.epsilon)
        return (normalised * (self.gamma * tf.gather(self.scenario_gamma, index))
                + self.beta + tf.gather(self.scenario_beta, index))

    def _batch_statistics(self, x, index):
        count = tf.math.unsorted_segment_sum(tf.ones_like(index, x.dtype), index, self.num_scenarios)[:, None]
        safe = tf.maximum(count, 1.0)
        mean = tf.math.unsorted_segment_sum(x, index, self.num_scenarios) / safe
        variance = tf.maximum(tf.math.unsorted_segment_sum(tf.square(x), index, self.num_scenarios) / safe
                              - tf.square(mean), 0.0)
        present = count > 0  # scenarios absent from the batch keep their statistics
        for moving, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(tf.where(present, moving * self.momentum + value * (1 - self.momentum), moving))
        return mean, variance

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios, "momentum": self.momentum,
                "epsilon": self.epsilon}


@serializable
class StarDense(ScenarioDense):
    """STAR's star-topology fully connected layer: scenario `s` uses `W * W_s` and `b + b_s`.

    A shared centre (`shared_kernel` `[d, units]`, `shared_bias` `[units]`) and per-scenario
    weights (`ScenarioDense`'s, the kernels starting at ones), the kernels multiplied element-wise.

    Args, inputs and returns: those of `ScenarioDense`.
    """

    def build(self, input_shape):
        super().build(input_shape)
        width = int(input_shape[0][-1])
        self.shared_kernel = self.add_weight("shared_kernel", [width, self.units], initializer="glorot_uniform")
        self.shared_bias = self.add_weight("shared_bias", [self.units], initializer="zeros")

    def kernel_initializer(self):
        return tf.keras.initializers.Ones()  # each scenario starts as the shared centre

    def scenario_kernels(self):
        return self.shared_kernel[None] * self.kernel

    def scenario_biases(self):
        return self.shared_bias[None] + self.bias


@register_backbone("star")
class STAR(Backbone):
    """STAR (Sheng et al., CIKM 2021): partitioned normalisation, a star-topology FCN, an auxiliary net.

    `x` goes through `PartitionedNormalization` and a ReLU `StarDense` FCN with dropout to a
    `StarDense` logit; the auxiliary network (an `MLP` on the unnormalised `x`, which includes the
    scenario embedding) gives a logit that is added to the FCN's.

    Args:
      num_scenarios: number of scenarios S.
      hidden_units: widths of the star-topology FCN.
      tower_units: widths of the auxiliary network.
      dropout: dropout rate after every FCN and auxiliary layer.

    Inputs:
      `[x, scenario]`: `x` `[B, d]`, `scenario` `[B]` or `[B, 1]` int index in `[0, num_scenarios)`.
      `training`: whether dropout is active and the normalisation uses batch statistics.

    Returns:
      `[B, 1]` logit.
    """
    config_fields = ("hidden_units", "tower_units", "dropout")

    def __init__(self, num_scenarios, hidden_units=(128, 64), tower_units=(32,), dropout=0.0, **kwargs):
        super().__init__(num_scenarios, hidden_units=list(hidden_units), tower_units=list(tower_units),
                         dropout=dropout, **kwargs)
        self.norm = PartitionedNormalization(num_scenarios, name="partitioned_norm")
        self.fcn = [StarDense(num_scenarios, u, "relu", name=f"star_{i}") for i, u in enumerate(hidden_units)]
        self.fcn_logit = StarDense(num_scenarios, 1, name="star_logit")
        self.dropout_layer = tf.keras.layers.Dropout(dropout)
        self.auxiliary = MLP(tower_units, dropout=dropout, name="auxiliary")
        self.auxiliary_logit = tf.keras.layers.Dense(1, name="auxiliary_logit")

    @no_autograph
    def call(self, inputs, training=None):
        x, scenario = inputs
        h = self.norm([x, scenario], training=training)
        for layer in self.fcn:
            h = self.dropout_layer(layer([h, scenario]), training=training)
        auxiliary = self.auxiliary_logit(self.auxiliary(x, training=training))
        return self.fcn_logit([h, scenario]) + auxiliary
