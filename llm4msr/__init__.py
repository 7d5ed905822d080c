"""LLM4MSR on TFX: LLM-enhanced multi-scenario recommendation.

Importing the package selects Keras 2 (`tf_keras`) for `tf.keras` before TensorFlow
loads: TFX 1.16, TensorFlow Transform, TFMA and tensorflow-recommenders are all built
on Keras 2, while TensorFlow 2.16 defaults to Keras 3.
"""
import os
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of CLI output
# google-api-core warns on every import that Python 3.10 support ends; TFX 1.16 needs 3.10 (docs/STACK.md).
# Through the environment, so Beam's worker processes stay quiet too.
_PY310_NOTICE = "ignore::FutureWarning:google.api_core._python_version_support"
if _PY310_NOTICE not in os.environ.get("PYTHONWARNINGS", ""):
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _PY310_NOTICE]))
warnings.filterwarnings("ignore", category=FutureWarning, module="google.api_core._python_version_support")

__version__ = "0.1.0"
