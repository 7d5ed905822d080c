"""Public Keras layers: feature embedding, the LLM4MSR meta layers and per-scenario building blocks.

Meta layers (docs/DESIGN.md, "Meta layers"): a frozen knowledge vector `k` is projected
to a small `d_k` (`KnowledgeProjector`); a generator MLP turns it into per-example low-rank weights
`W(k) = U(k) V(k)^T` and a bias `b(k)` (`MetaWeightGenerator`); `MetaDense` applies
`y = act(x W(k) + b(k)) + x`. `UserMetaStack` sits at the bottom of a backbone (user knowledge),
`ScenarioMetaTower` runs in parallel with it (scenario knowledge, optionally also user knowledge:
the hierarchy) and returns a logit to add to the backbone's.

Every layer is registered under the package name `llm4msr` and has `get_config`, so models that
use them load with plain `tf.keras.models.load_model`. Use them in your own functional model::

    from llm4msr.trainer.layers import UserMetaStack
    x = UserMetaStack(num_layers=2, projection_dim=32, rank=4)([features, user_knowledge])
"""
import inspect
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from llm4msr.trainer.features import as_vector

serializable = tf.keras.utils.register_keras_serializable(package="llm4msr")


def no_autograph(call):
    """Decorator: a layer's `call` that Keras runs without AutoGraph conversion.

    Keras runs subclassed layers' `call` through AutoGraph, which slows every model build and trace.
    The calls in this package have no tensor-dependent Python control flow, so they skip it. The
    wrapper is `tf.autograph.experimental.do_not_convert(call)` with `call`'s own signature set as
    its `__signature__`: Keras reads it (`inspect.getfullargspec` honours it) to decide whether to
    pass `training`.

    Args:
      call: a layer's `call` method.

    Returns:
      The wrapped method, with `call`'s signature.
    """
    wrapper = tf.autograph.experimental.do_not_convert(call)
    wrapper.__signature__ = inspect.signature(call)
    return wrapper


@serializable
class FeatureEmbedding(tf.keras.layers.Layer):
    """Embeds the categorical features of a feature dict and appends its dense scalars.

    Each categorical feature's int index is looked up in its own `Embedding` table
    (`embedding_{name}`); the dense features are cast to the compute dtype and appended as they are.
    Features are taken in sorted name order, so the layout does not depend on dict order; keys of
    the dict that are in neither list are ignored.

    Args:
      vocab_sizes: categorical feature name -> vocabulary size (number of rows of its table,
        including any out-of-vocabulary slot).
      embedding_dim: width of every embedding.
      dense_features: names of float scalar features appended after the embeddings (default none).

    Inputs:
      A dict name -> tensor: `[B]` or `[B, 1]` int64 indices in `[0, vocab_sizes[name])` for the
      categorical features, `[B]` or `[B, 1]` numbers for the dense ones.

    Returns:
      `[B, len(vocab_sizes) * embedding_dim + len(dense_features)]`.
    """

    def __init__(self, vocab_sizes: Dict[str, int], embedding_dim: int = 16,
                 dense_features: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = dict(sorted(vocab_sizes.items()))
        self.embedding_dim = embedding_dim
        self.dense_features = sorted(dense_features)
        self.embeddings = {name: tf.keras.layers.Embedding(size, embedding_dim, name=f"embedding_{name}")
                           for name, size in self.vocab_sizes.items()}

    @no_autograph
    def call(self, features):
        parts = [self.embeddings[name](as_vector(features[name])) for name in self.vocab_sizes]
        if self.dense_features:
            parts.append(tf.stack([tf.cast(as_vector(features[name]), self.compute_dtype)
                                   for name in self.dense_features], axis=1))
        return tf.concat(parts, axis=1)

    def get_config(self):
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes,
                "embedding_dim": self.embedding_dim, "dense_features": self.dense_features}


@serializable
class IdDropout(tf.keras.layers.Layer):
    """Replaces id indices by the out-of-vocabulary index at random while training (cold-start training).

    DropoutNet-style: in training each index is replaced with probability `rate`; at inference the
    ids pass through. Without it the out-of-vocabulary embedding of a data set where every user has
    enough train rows is never trained, and nothing teaches the model what to do for a user it does
    not know: with it, the shared unknown-id embedding is trained, and the knowledge path (the
    LLM's reading of the user's history) learns to carry the user when the id is missing. Draws
    follow the global seed (`tf.random.set_seed`), as Keras' `Dropout` does.

    Args:
      oov_index: the index that replaces a dropped id (the feature's out-of-vocabulary slot).
      rate: probability of replacing each id while training; 0 (the default) makes the layer the
        identity.

    Inputs:
      ids: int index tensor of any shape, e.g. `[B]` or `[B, 1]`.
      training: Python bool or a symbolic learning phase; ids are dropped only when it is true.

    Returns:
      A tensor of the shape and dtype of `ids`.
    """

    def __init__(self, oov_index: int, rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.oov_index, self.rate = int(oov_index), float(rate)

    @no_autograph
    def call(self, ids, training=None):
        if not self.rate:
            return ids

        def dropped():  # seeded by the global seed (`tf.random.set_seed`), as Keras' Dropout
            drop = tf.random.uniform(tf.shape(ids)) < self.rate
            return tf.where(drop, tf.constant(self.oov_index, ids.dtype), ids)
        if tf.is_tensor(training):  # a symbolic learning phase
            return tf.cond(tf.cast(training, tf.bool), dropped, lambda: tf.identity(ids))
        return dropped() if training else ids

    def get_config(self):
        return {**super().get_config(), "oov_index": self.oov_index, "rate": self.rate}


@serializable
class MLP(tf.keras.layers.Layer):
    """A stack of `Dense` layers, each followed by the activation and dropout.

    Args:
      units: width of each `Dense` layer, bottom first.
      activation: applied after every layer, the last one included.
      dropout: dropout rate after every layer; 0 (the default) adds no dropout.

    Inputs:
      x: `[B, d]`.
      training: whether dropout is active.

    Returns:
      `[B, units[-1]]`.
    """

    def __init__(self, units: Sequence[int], activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation, self.dropout = list(units), activation, dropout
        self.dense_layers = [tf.keras.layers.Dense(u, activation=activation) for u in self.units]
        self.dropouts = [tf.keras.layers.Dropout(dropout) for _ in self.units] if dropout else []

    @no_autograph
    def call(self, x, training=None):
        for index, dense in enumerate(self.dense_layers):
            x = dense(x)
            if self.dropouts:
                x = self.dropouts[index](x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "dropout": self.dropout}


@serializable
class Cross(tfrs.layers.dcn.Cross):
    """TFRS's DCN cross layer `x0 * (W x + b) + x`, called without AutoGraph (see `no_autograph`).

    Args:
      Those of `tfrs.layers.dcn.Cross` (e.g. `projection_dim` for a low-rank `W`, `use_bias`,
      `diag_scale`, initialisers and regularisers).

    Inputs:
      x0: `[B, d]`, the input of the first cross layer.
      x: `[B, d]`, the previous cross layer's output; None (the default) means `x0`.

    Returns:
      `[B, d]`.
    """

    @no_autograph
    def call(self, x0, x=None):
        return super().call(x0, x)


# ---------------------------------------------------------------------------------------------
# Meta layers

@serializable
class KnowledgeProjector(tf.keras.layers.Layer):
    """Projects a frozen LLM knowledge vector to a small width: `Dense(k)`, or with `normalize=True`
    `Dense(LayerNormalization(k))`.

    The feature contract already centres and scales every knowledge level on the train rows
    (`transform.preprocessing.normalize_knowledge`), so the model's projections are plain; use
    `normalize=True` for raw LLM vectors, whose scales differ a lot between LLMs. The normalised form
    is computed in one fused, exact form: with `m`, `s` the row mean and `1/sqrt(var + eps)`,
    `Dense(LayerNorm(k))` equals `s * (k @ (gamma * W) - m * sum(gamma * W)) + (beta @ W + b)`: the
    `[B, d_llm]` work is one matmul and the row statistics; the normalised `[B, d_llm]` tensor and its
    backward pass never exist. The knowledge is frozen: no gradient flows back into it, which lets the
    kernel's gradient be computed as `(G^T k)^T`, packing the tall `k` once in its own layout, instead
    of TF's `k^T G` (see `bench/bench_trainer.py`). Variables are those of the `Dense` (and
    `LayerNormalization`) sublayers (`dense`, `norm`), so checkpoints are those of the unfused form.

    Args:
      units: width `d_k` of the projection.
      activation: of the projection; None (the default) is linear.
      normalize: layer-normalise the knowledge first.

    Inputs:
      knowledge: `[B, d_llm]` float knowledge vectors; no gradient flows into them.

    Returns:
      `[B, units]`.
    """

    def __init__(self, units: int = 32, activation: Optional[str] = None, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation, self.normalize = units, activation, normalize
        self._activation = tf.keras.activations.get(activation)
        self.norm = tf.keras.layers.LayerNormalization() if normalize else None
        self.dense = tf.keras.layers.Dense(units, activation=activation)

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        for layer in (self.norm, self.dense):
            if layer is not None:
                with tf.name_scope(layer.name):
                    layer.build(input_shape)
        super().build(input_shape)

    @no_autograph
    def call(self, knowledge):
        k = tf.stop_gradient(tf.cast(knowledge, self.compute_dtype))
        if self.norm is None:
            return self._activation(_frozen_input_matmul(k, self.dense.kernel) + self.dense.bias)
        mean, variance = tf.nn.moments(k, axes=[-1], keepdims=True)
        kernel = self.norm.gamma[:, None] * self.dense.kernel  # [d_llm, units]
        scale = tf.math.rsqrt(variance + self.norm.epsilon)
        bias = tf.linalg.matvec(self.dense.kernel, self.norm.beta, transpose_a=True) + self.dense.bias
        return self._activation(scale * (_frozen_input_matmul(k, kernel) - mean * tf.reduce_sum(kernel, axis=0)) + bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "normalize": self.normalize}


@tf.custom_gradient
def _frozen_input_matmul(inputs, kernel):
    """`inputs @ kernel` for a tall input that takes no gradient: the kernel's gradient is computed
    as `(G^T inputs)^T`, which packs the tall operand once, in its own layout."""
    def gradient(upstream):
        return None, tf.transpose(tf.matmul(upstream, inputs, transpose_a=True))
    return tf.matmul(inputs, kernel), gradient


@serializable
class MetaWeightGenerator(tf.keras.layers.Layer):
    """Generates per-example low-rank weights `W(z) = U(z) V(z)^T` and a bias `b(z)` from knowledge `z`.

    A hidden ReLU layer reads the projected knowledge `z` (`h = relu(z W_h + b_h)`, `g` wide); three
    linear heads of `h1 = [h, 1]` give the factors `U`, `V` of a `units x units` weight and the bias.
    The heads start small (a truncated normal of variance `0.1 / g`, their biases zero), so a meta
    layer starts close to the identity (its residual) and cannot destabilise the backbone early in
    training. `MetaDense` uses `apply`, which computes the layer's output without materialising `U`
    and `V`; the heads' variables are stored in the layout `apply` multiplies by (see there), so a
    step does no reshaping of them.

    Args:
      units: width `d` of the input the generated weight applies to (the weight is `d x d`).
      rank: rank `r` of the generated weight.
      hidden_units: width `g` of the hidden layer.

    Inputs:
      z: `[B, d_k]` projected knowledge.

    Returns:
      `(U, V, b)`: `[B, units, rank]`, `[B, units, rank]` and `[B, units]`.
    """

    def __init__(self, units: int, rank: int = 4, hidden_units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.units, self.rank, self.hidden_units = units, rank, hidden_units
        self.hidden = tf.keras.layers.Dense(hidden_units, activation="relu")

    def build(self, input_shape):
        d, r, g1 = self.units, self.rank, self.hidden_units + 1
        with tf.name_scope(self.hidden.name):
            self.hidden.build(tf.TensorShape(input_shape))
        # u_kernel[i, (j, g)] = U's head weight of h1_g for U[i, j]; vb_kernel rows (j, g) hold V's
        # head (V[k, j] from h1_g), then g1 rows of b's head. The last of every g1 is the head's bias.
        bias_entry = np.arange(r * g1) % g1 == g1 - 1
        self.u_kernel = self.add_weight("u_kernel", [d, r * g1], initializer=self._head_initializer(bias_entry[None]))
        bias_entry = np.concatenate([bias_entry, np.arange(g1) == g1 - 1])[:, None]
        self.vb_kernel = self.add_weight("vb_kernel", [(r + 1) * g1, d],
                                         initializer=self._head_initializer(bias_entry))
        super().build(input_shape)

    def _head_initializer(self, bias_entry: np.ndarray):
        """Keras' `VarianceScaling(0.1, "fan_in")` of a head (fan-in `g`), zero on the bias entries."""
        stddev = np.sqrt(0.1 / self.hidden_units) / .87962566103423978  # Keras' truncated-normal correction
        small = tf.keras.initializers.TruncatedNormal(stddev=stddev)
        return lambda shape, dtype=None: small(shape, dtype) * tf.constant(~bias_entry, dtype or tf.float32)

    def _hidden_with_one(self, z):
        h = self.hidden(z)
        return tf.concat([h, tf.ones_like(h[:, :1])], axis=1)  # [B, g+1]: the heads' biases ride along

    def _rank_sum(self, dtype):
        """`[(rank, g), rank]`: sums each rank's block of `g + 1` columns."""
        return tf.constant(np.kron(np.eye(self.rank), np.ones((self.hidden_units + 1, 1))), dtype=dtype)

    @no_autograph
    def call(self, z):
        d, r, g1 = self.units, self.rank, self.hidden_units + 1
        h1 = self._hidden_with_one(z)
        u = tf.einsum("bg,ijg->bij", h1, tf.reshape(self.u_kernel, [d, r, g1]))
        v = tf.einsum("bg,jgk->bkj", h1, tf.reshape(self.vb_kernel[:r * g1], [r, g1, d]))
        return u, v, tf.matmul(h1, self.vb_kernel[r * g1:])

    def apply(self, x, z, activation):
        """The meta layer's output `activation(x U(z) V(z)^T + b(z)) + x`, per example (`U, V, b = self(z)`).

        Computed without materialising `U`, `V` (`[B, units, rank]` each), in 2-D GEMMs and
        element-wise products only, which on CPU beats 3-D broadcasting over the tiny rank axis
        (see `bench/bench_trainer.py`). `U` is linear in `h1`: `(x U)_j = sum_g h1_g (x Wu_gj)`. So `x`
        meets every `Wu_gj` in one GEMM with `u_kernel` (`[B, rank * (g+1)]`), the product with `h1`
        tiled per rank and a block-sum GEMM give `x U`, and `(x U) V^T + b` is one GEMM of
        `[(x U)_j h1_g, h1]` with `vb_kernel`. The layer must be built.

        Args:
          x: `[B, units]`.
          z: `[B, d_k]` projected knowledge.
          activation: a callable applied before the residual.

        Returns:
          `[B, units]`.
        """
        h1 = self._hidden_with_one(z)
        h1_per_rank = tf.tile(h1, [1, self.rank])
        rank_sum = self._rank_sum(x.dtype)
        xu = tf.matmul(tf.matmul(x, self.u_kernel) * h1_per_rank, rank_sum)  # [B, rank]
        outer = tf.matmul(xu, rank_sum, transpose_b=True) * h1_per_rank  # (x U)_j h1_g
        return activation(tf.matmul(tf.concat([outer, h1], axis=1), self.vb_kernel)) + x

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rank": self.rank,
                "hidden_units": self.hidden_units}


@serializable
class MetaDense(tf.keras.layers.Layer):
    """A meta layer: a residual dense layer whose weight and bias are generated per example from knowledge.

    Computes `act(x W(z) + b(z)) + x` with the low-rank `W(z)` and `b(z)` of its own
    `MetaWeightGenerator` (`generator`, created at build time, once the width `d` of `x` is known).

    Args:
      rank: rank of the generated `d x d` weight.
      generator_units: width of the generator's hidden layer.
      activation: applied before the residual.

    Inputs:
      `[x, z]`: `x` `[B, d]` features, `z` `[B, d_k]` projected knowledge.

    Returns:
      `[B, d]`.
    """

    def __init__(self, rank: int = 4, generator_units: int = 64, activation: str = "relu", **kwargs):
        super().__init__(**kwargs)
        self.rank, self.generator_units, self.activation = rank, generator_units, activation
        self._activation = tf.keras.activations.get(activation)
        self.generator = None

    def build(self, input_shape):
        width = int(input_shape[0][-1])
        self.generator = MetaWeightGenerator(width, self.rank, self.generator_units, name="generator")
        with tf.name_scope(self.generator.name):
            self.generator.build(input_shape[1])
        super().build(input_shape)

    @no_autograph
    def call(self, inputs):
        x, z = inputs
        return self.generator.apply(x, z, self._activation)

    def get_config(self):
        return {**super().get_config(), "rank": self.rank, "generator_units": self.generator_units,
                "activation": self.activation}


def _meta_layers(count, rank, generator_units, activation):
    return [MetaDense(rank, generator_units, activation, name=f"meta_dense_{i}") for i in range(count)]


@serializable
class SemanticMatch(tf.keras.layers.Layer):
    """User–item semantic match of the projected user knowledge and the item's knowledge.

    The item's frozen knowledge vector is projected (a linear `KnowledgeProjector`,
    `item_projector`, created at build time) to the width `d` of the projected user knowledge
    `z_user`; the output is their elementwise product and their dot product scaled by `1/sqrt(d)`,
    so every backbone sees how well the item's text matches the user's.

    Args:
      Only the base `Layer` arguments (`name`, ...).

    Inputs:
      `[z_user, item_knowledge]`: `z_user` `[B, d]` (e.g. `UserMetaStack(return_projection=True)`'s
      second output), `item_knowledge` `[B, d_llm]`.

    Returns:
      `[B, d + 1]`: the product `[B, d]`, then the scaled dot product.
    """

    def build(self, input_shape):
        user_shape, item_shape = (tf.TensorShape(shape) for shape in input_shape)
        self.width = int(user_shape[-1])
        self.projector = KnowledgeProjector(self.width, name="item_projector")
        with tf.name_scope(self.projector.name):
            self.projector.build(item_shape)
        super().build(input_shape)

    @no_autograph
    def call(self, inputs):
        z_user, item_knowledge = inputs
        product = z_user * self.projector(item_knowledge)
        dot = tf.reduce_sum(product, axis=-1, keepdims=True) * (self.width ** -0.5)
        return tf.concat([product, dot], axis=-1)


@serializable
class UserMetaStack(tf.keras.layers.Layer):
    """User-level meta layers at the bottom of a backbone: `[x, user_knowledge] -> x'` (same width).

    The user knowledge is projected once (`KnowledgeProjector`, `user_projector`) and drives a
    stack of `MetaDense` layers, personalising the input representation before the backbone sees
    it.

    Args:
      num_layers: stacked `MetaDense` layers.
      projection_dim: `d_k` of the user knowledge projection.
      rank, generator_units: of each layer's `MetaWeightGenerator`.
      activation: of the meta layers.
      return_projection: also return the projected user knowledge, for a hierarchical
        `ScenarioMetaTower` (and `SemanticMatch`) to reuse.

    Inputs:
      `[x, user_knowledge]`: `x` `[B, d]` features, `user_knowledge` `[B, d_llm]`.

    Returns:
      `x'` `[B, d]`, or with `return_projection=True` `(x', z_u)` with `z_u` `[B, projection_dim]`.
    """

    def __init__(self, num_layers: int = 2, projection_dim: int = 32, rank: int = 4,
                 generator_units: int = 64, activation: str = "relu", return_projection: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.projection_dim, self.rank = num_layers, projection_dim, rank
        self.generator_units, self.activation = generator_units, activation
        self.return_projection = return_projection
        self.projector = KnowledgeProjector(projection_dim, name="user_projector")
        self.meta_layers = _meta_layers(num_layers, rank, generator_units, activation)

    @no_autograph
    def call(self, inputs):
        x, knowledge = inputs
        z = self.projector(knowledge)
        for layer in self.meta_layers:
            x = layer([x, z])
        return (x, z) if self.return_projection else x

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "projection_dim": self.projection_dim,
                "rank": self.rank, "generator_units": self.generator_units, "activation": self.activation,
                "return_projection": self.return_projection}


@serializable
class ScenarioMetaTower(tf.keras.layers.Layer):
    """Scenario-level meta layers in parallel with a backbone: a logit `[B, 1]` to add to the backbone's.

    The scenario knowledge is projected (`KnowledgeProjector`, `scenario_projector`) and drives a
    stack of `MetaDense` layers, followed by an `MLP` and a one-unit `Dense` logit. The scenario
    knowledge is a function of the scenario, so only one row per scenario present in the batch is
    projected (`[S, d_llm]` instead of `[B, d_llm]`) and the projections are gathered back per
    example. Rows of the same scenario must be equal (one vector per scenario); otherwise the first
    row of each scenario in the batch is used.

    Args:
      num_scenarios: number of scenarios S.
      num_layers: stacked `MetaDense` layers.
      projection_dim: `d_k` of the scenario knowledge projection.
      rank, generator_units: of each layer's `MetaWeightGenerator`.
      hidden_units: the MLP between the meta layers and the logit.
      hierarchical: whether a user projection is the third input.
      activation, dropout: of the meta layers and the MLP.

    Inputs:
      `[x, scenario_knowledge, scenario]`, or with `hierarchical=True`
      `[x, scenario_knowledge, user_projection, scenario]`:

      * `x`: `[B, d]` features (e.g. the output of `UserMetaStack`);
      * `scenario_knowledge`: `[B, d_llm]`, the vector of each example's scenario;
      * `user_projection`: `[B, d_u]`, the user knowledge projected once per model
        (`UserMetaStack(return_projection=True)`'s second output); the generators then see both, so
        the scenario-level weights are specialised per user (the paper's hierarchy);
      * `scenario`: `[B]` or `[B, 1]` int scenario index in `[0, num_scenarios)`.

      `training`: whether the MLP's dropout is active.

    Returns:
      `[B, 1]` logit.
    """

    def __init__(self, num_scenarios: int, num_layers: int = 2, projection_dim: int = 32, rank: int = 4,
                 generator_units: int = 64, hidden_units: Sequence[int] = (32,), hierarchical: bool = False,
                 activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_layers, self.projection_dim = num_scenarios, num_layers, projection_dim
        self.rank, self.generator_units, self.hidden_units = rank, generator_units, list(hidden_units)
        self.hierarchical, self.activation, self.dropout = hierarchical, activation, dropout
        self.scenario_projector = KnowledgeProjector(projection_dim, name="scenario_projector")
        self.meta_layers = _meta_layers(num_layers, rank, generator_units, activation)
        self.mlp = MLP(self.hidden_units, activation, dropout, name="mlp")
        self.logit = tf.keras.layers.Dense(1, name="logit")

    def _project_scenarios(self, knowledge, scenario):
        """Projects one row per scenario and gathers the projections back per example."""
        index = tf.cast(as_vector(scenario), tf.int32)
        rows = tf.range(tf.shape(index)[0])
        first = tf.math.unsorted_segment_min(rows, index, self.num_scenarios)  # absent: int32 max
        first = tf.minimum(first, tf.maximum(tf.shape(index)[0] - 1, 0))
        return tf.gather(self.scenario_projector(tf.gather(knowledge, first)), index)

    @no_autograph
    def call(self, inputs, training=None):
        x, scenario_knowledge, scenario = inputs[0], inputs[1], inputs[-1]
        z = self._project_scenarios(scenario_knowledge, scenario)
        if self.hierarchical:
            z = tf.concat([z, inputs[2]], axis=1)
        for layer in self.meta_layers:
            x = layer([x, z])
        return self.logit(self.mlp(x, training=training))

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios, "num_layers": self.num_layers,
                "projection_dim": self.projection_dim, "rank": self.rank, "generator_units": self.generator_units,
                "hidden_units": self.hidden_units, "hierarchical": self.hierarchical,
                "activation": self.activation, "dropout": self.dropout}


# ---------------------------------------------------------------------------------------------
# Per-scenario and expert building blocks used by the backbones.
#
# Every example needs only its own scenario's parameters. `ScenarioDense` partitions the batch by
# scenario (`tf.dynamic_partition`), runs one GEMM per scenario and stitches the rows back: on CPU
# this costs less than one GEMM for all scenarios plus a per-example gather, and far less than
# gathering a `[B, d, units]` weight per example (`per_scenario` does the partitioning).
# An expert bank runs one GEMM for all its experts; PLE's scenario experts run per scenario, so an
# example's input meets its own scenario's experts only, which is cheaper than running all experts
# for every example and selecting per example. `bench/bench_trainer.py throughput` times the backbones.
# Variables holding one slice per scenario have `per_scenario` in their name and the scenario as
# their leading axis (scenario-major), which the isolation tests rely on.

def per_scenario(apply, x, scenario, num_scenarios):
    """Runs each example through its own scenario's computation only, and restores batch order.

    The batch is partitioned by scenario (`tf.dynamic_partition`), `apply(rows_of_scenario_s, s)`
    runs once per scenario (also, on an empty part, for a scenario absent from the batch) and the
    results are stitched back (`tf.dynamic_stitch`).

    Args:
      apply: `(rows [n_s, ...], s) -> [n_s, ...]`, with `s` a Python int in `[0, num_scenarios)`.
      x: `[B, ...]`.
      scenario: `[B]` or `[B, 1]` int scenario index in `[0, num_scenarios)`.
      num_scenarios: number of scenarios S (a Python int).

    Returns:
      `[B, ...]`: `apply`'s output rows, in the batch order of `x`.
    """
    index = tf.cast(as_vector(scenario), tf.int32)
    rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), index, num_scenarios)
    parts = tf.dynamic_partition(x, index, num_scenarios)
    return tf.dynamic_stitch(rows, [apply(part, s) for s, part in enumerate(parts)])


@serializable
class ScenarioDense(tf.keras.layers.Layer):
    """A dense layer with one kernel and bias per scenario, each example through its own scenario's.

    Variables: `per_scenario_kernel` `[S, d, units]` and `per_scenario_bias` `[S, units]`. Subclasses
    change the initialiser and the effective weights through `kernel_initializer`,
    `scenario_kernels` and `scenario_biases` (see `StarDense`).

    Args:
      num_scenarios: number of scenarios S.
      units: output width.
      activation: None (the default) is linear.

    Inputs:
      `[x, scenario]`: `x` `[B, d]`, `scenario` `[B]` or `[B, 1]` int index in `[0, num_scenarios)`.

    Returns:
      `[B, units]`.
    """

    def __init__(self, num_scenarios: int, units: int, activation: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.units, self.activation = num_scenarios, units, activation
        self._activation = tf.keras.activations.get(activation)

    def build(self, input_shape):
        width = int(input_shape[0][-1])
        self.kernel = self.add_weight("per_scenario_kernel", [self.num_scenarios, width, self.units],
                                      initializer=self.kernel_initializer())
        self.bias = self.add_weight("per_scenario_bias", [self.num_scenarios, self.units], initializer="zeros")
        super().build(input_shape)

    def kernel_initializer(self):
        """The initialiser of `per_scenario_kernel` (Glorot uniform)."""
        return tf.keras.initializers.GlorotUniform()

    def scenario_kernels(self):
        """The effective `[S, d, units]` kernels (STAR overrides this)."""
        return self.kernel

    def scenario_biases(self):
        """The effective `[S, units]` biases (STAR overrides this)."""
        return self.bias

    @no_autograph
    def call(self, inputs):
        x, scenario = inputs
        kernels, biases = self.scenario_kernels(), self.scenario_biases()
        return self._activation(per_scenario(lambda part, s: tf.matmul(part, kernels[s]) + biases[s],
                                             x, scenario, self.num_scenarios))

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios, "units": self.units,
                "activation": self.activation}


@serializable
class ScenarioTower(tf.keras.layers.Layer):
    """One MLP tower per scenario ending in a logit; each example goes through its own scenario's.

    Each hidden layer is a ReLU `ScenarioDense` followed by dropout; the logit is a linear
    one-unit `ScenarioDense`.

    Args:
      num_scenarios: number of scenarios S.
      units: widths of the hidden layers.
      dropout: dropout rate after every hidden layer.

    Inputs:
      `[x, scenario]`: `x` `[B, d]`, `scenario` `[B]` or `[B, 1]` int index in `[0, num_scenarios)`.
      `training`: whether dropout is active.

    Returns:
      `[B, 1]` logit.
    """

    def __init__(self, num_scenarios: int, units: Sequence[int] = (32,), dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.units, self.dropout = num_scenarios, list(units), dropout
        self.hidden = [ScenarioDense(num_scenarios, u, "relu", name=f"tower_{i}") for i, u in enumerate(self.units)]
        self.output_layer = ScenarioDense(num_scenarios, 1, name="tower_logit")
        self.dropout_layer = tf.keras.layers.Dropout(dropout)

    @no_autograph
    def call(self, inputs, training=None):
        x, scenario = inputs
        for layer in self.hidden:
            x = self.dropout_layer(layer([x, scenario]), training=training)
        return self.output_layer([x, scenario])

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios, "units": self.units,
                "dropout": self.dropout}


@serializable
class ExpertBank(tf.keras.layers.Layer):
    """`num_experts` independent MLPs on the same input.

    The first layer of all experts is one GEMM; deeper layers are one batched einsum. Variables are
    `{variable_prefix}_kernel_{i}` `[num_experts, fan_in, fan_out]` and `{variable_prefix}_bias_{i}`
    `[num_experts, fan_out]`, expert-major.

    Args:
      num_experts: number of experts E.
      units: widths of every expert's layers.
      activation: applied after every layer, the last one included.
      variable_prefix: prefix of the variable names (`per_scenario_expert` for a bank whose experts
        are grouped by scenario, as PLE's).

    Inputs:
      x: `[B, d]`.

    Returns:
      `[B, num_experts, units[-1]]`.
    """

    def __init__(self, num_experts: int, units: Sequence[int] = (64,), activation: str = "relu",
                 variable_prefix: str = "expert", **kwargs):
        super().__init__(**kwargs)
        self.num_experts, self.units, self.activation = num_experts, list(units), activation
        self.variable_prefix = variable_prefix
        self._activation = tf.keras.activations.get(activation)

    def build(self, input_shape):
        widths = [int(input_shape[-1])] + self.units
        self.kernels, self.biases = [], []
        for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
            self.kernels.append(self.add_weight(f"{self.variable_prefix}_kernel_{i}",
                                                [self.num_experts, fan_in, fan_out], initializer="glorot_uniform"))
            self.biases.append(self.add_weight(f"{self.variable_prefix}_bias_{i}", [self.num_experts, fan_out],
                                               initializer="zeros"))
        super().build(input_shape)

    @no_autograph
    def call(self, x):
        return self.experts(x, 0, self.num_experts)

    def experts(self, x, first: int, count: int):
        """Runs experts `first .. first + count - 1` only; the bank must be built.

        Args:
          x: `[B, d]`.
          first: index of the first expert.
          count: number of experts.

        Returns:
          `[B, count, units[-1]]`.
        """
        kernels = [kernel[first:first + count] for kernel in self.kernels]
        biases = [bias[first:first + count] for bias in self.biases]
        flat = tf.reshape(tf.transpose(kernels[0], [1, 0, 2]), [tf.shape(kernels[0])[1], -1])
        h = self._activation(tf.reshape(tf.matmul(x, flat), [-1, count, self.units[0]]) + biases[0])
        for kernel, bias in zip(kernels[1:], biases[1:]):
            h = self._activation(tf.einsum("bei,eio->beo", h, kernel) + bias)
        return h

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts, "units": self.units,
                "activation": self.activation, "variable_prefix": self.variable_prefix}


def mix_experts(gate_logits, experts):
    """Mixes expert outputs with softmax gate weights.

    Computed as a batched `[1, E] x [E, h]` matmul per example: the equivalent `einsum` transposes
    the experts first, which is slower on CPU (see `bench/bench_trainer.py`).

    Args:
      gate_logits: `[B, E]` gate logits (softmax over `E`).
      experts: `[B, E, h]` expert outputs.

    Returns:
      `[B, h]`.
    """
    weights = tf.nn.softmax(gate_logits, axis=-1)[:, None, :]
    return tf.squeeze(tf.matmul(weights, experts), axis=1)


@serializable
class ScenarioCalibration(tf.keras.layers.Layer):
    """Per-scenario Platt scaling of a logit: `scale[s] * logit + shift[s]`.

    Not trained by gradient descent (its variables are not trainable; it starts as the identity);
    `llm4msr.trainer.training.fit` sets it after training from the eval split (`set_calibration`),
    so the served probabilities match the observed click rates of every scenario.

    Args:
      num_scenarios: number of scenarios S.

    Inputs:
      `[logit, scenario]`: `logit` `[B, 1]`, `scenario` `[B]` or `[B, 1]` int index in
      `[0, num_scenarios)`.

    Returns:
      `[B, 1]` calibrated logit.
    """

    def __init__(self, num_scenarios: int, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.num_scenarios = num_scenarios

    def build(self, input_shape):
        self.scale = self.add_weight("scale", [self.num_scenarios], initializer="ones", trainable=False)
        self.shift = self.add_weight("shift", [self.num_scenarios], initializer="zeros", trainable=False)
        super().build(input_shape)

    @no_autograph
    def call(self, inputs):
        logit, scenario = inputs
        scenario = as_vector(tf.cast(scenario, tf.int32))
        return logit * tf.expand_dims(tf.gather(self.scale, scenario), -1) + tf.expand_dims(
            tf.gather(self.shift, scenario), -1)

    def set_calibration(self, scale, shift) -> None:
        """Sets the calibration.

        Args:
          scale: `[num_scenarios]` array, the slope per scenario.
          shift: `[num_scenarios]` array, the offset per scenario.
        """
        self.scale.assign(tf.constant(scale, tf.float32))
        self.shift.assign(tf.constant(shift, tf.float32))

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios}
