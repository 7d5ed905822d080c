"""LLM4MSR on TFX: LLM-enhanced multi-scenario recommendation.

Importing the package selects Keras 2 (`tf_keras`) for `tf.keras` before TensorFlow
loads: TFX 1.16, TensorFlow Transform, TFMA and tensorflow-recommenders are all built
on Keras 2, while TensorFlow 2.16 defaults to Keras 3.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of CLI output

__version__ = "0.1.0"
