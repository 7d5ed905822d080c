"""`LazyAdam`: Adam whose step on an embedding table touches only the rows the batch looked up."""
import tensorflow as tf

from llm4msr.trainer.layers import serializable


@serializable
class LazyAdam(tf.keras.optimizers.legacy.Adam):
    """Keras' Adam (same hyper-parameters, slots and dense update) with row-sparse embedding updates.

    Dense gradients take Adam's fused `ResourceApplyAdam` kernel (one pass over a variable and its
    two slots). An embedding gradient (`tf.IndexedSlices`, duplicate rows already summed by the
    optimizer) updates only its rows of the table and of both moment slots, as TF-Addons' and
    Keras 3's `LazyAdam` do: the step costs O(rows in the batch), not O(vocabulary). Plain Adam would
    also decay the moments of every other row and move it, so a 10M-row table costs a pass over
    10M rows per step. The two differ only for rows a step does not touch (their moments are not
    decayed and they do not move on stale momentum).

    Built on the legacy optimizer's subclass hooks (`_resource_apply_sparse`, `add_slot`,
    `get_slot`, hyper-parameters as attributes), so it needs no private Keras state.

    Args: those of `tf.keras.optimizers.legacy.Adam` (`amsgrad=True` keeps Adam's dense-slot update
    for embeddings).
    """

    def build(self, var_list):
        """Creates the step counter, hyper-parameters and both slots of every variable in `var_list`
        now, so that the first `apply_gradients` inside a `tf.function` creates no variable (a
        function that creates variables on its first call is traced twice)."""
        _ = self.iterations, self.learning_rate, self.beta_1, self.beta_2  # created on first access
        for variable in var_list:
            for slot in ("m", "v", *(("vhat",) if self.amsgrad else ())):
                self.add_slot(variable, slot)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        if self.amsgrad:
            return super()._resource_apply_sparse(grad, var, indices, apply_state)
        dtype = var.dtype.base_dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        learning_rate = self.learning_rate
        if callable(learning_rate):  # a LearningRateSchedule
            learning_rate = learning_rate(self.iterations)
        step_size = tf.cast(learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(grad)
        return tf.group(
            m.scatter_update(tf.IndexedSlices(m_rows, indices)),
            v.scatter_update(tf.IndexedSlices(v_rows, indices)),
            var.scatter_sub(tf.IndexedSlices(step_size * m_rows / (tf.sqrt(v_rows) + tf.cast(self.epsilon, dtype)),
                                             indices)))
