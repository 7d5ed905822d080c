"""`FusedAdam`: Keras' Adam with TensorFlow's fused Adam kernel doing the update."""
import tensorflow as tf

from llm4msr.trainer.layers import serializable


@serializable
class FusedAdam(tf.keras.optimizers.Adam):
    """Keras' Adam (same hyper-parameters, slot variables and math) whose per-variable update is
    TensorFlow's fused `ResourceApplyAdam` kernel: one multi-threaded pass over the variable and its
    two slots instead of ~10 separate element-wise ops, each a pass of its own.

    Embedding gradients (`IndexedSlices`) are summed into a dense gradient first. That is not a
    change of method: Keras' sparse Adam path also decays every row of both slots and moves every
    row of the table (it is dense Adam), in ~10 passes over the table per step. On the 2-core CPU this
    per-step cost dominated small batches (see bench/bench_trainer.py)."""

    def update_step(self, gradient, variable):
        if self.amsgrad or self.adaptive_epsilon:  # not what the kernel computes
            return super().update_step(gradient, variable)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.math.unsorted_segment_sum(gradient.values, gradient.indices, tf.shape(variable)[0])
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._index_dict[self._var_key(variable)]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(self.learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=gradient, use_locking=False)
