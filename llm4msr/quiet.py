"""Quiet command output: what TensorFlow, TFX, Beam and Hugging Face print for their own developers
(CUDA factory registration, deprecation notices, worker WARN lines, weight-conversion messages)
stays out of a user's terminal unless they ask for it with `llm4msr -v`.

Errors and llm4msr's own messages always show; everything is set through the environment too, so
Beam worker processes and subprocesses inherit it.
"""
import logging
import os
import sys
import warnings

# the third-party Python loggers whose INFO and WARNING lines are for their developers
LIBRARY_LOGGERS = ("absl", "tensorflow", "apache_beam", "transformers", "tfx", "ml_metadata")
WARNING_CATEGORIES = (FutureWarning, DeprecationWarning, UserWarning, RuntimeWarning, PendingDeprecationWarning)
QUIET_ENV = "LLM4MSR_QUIET"  # "1" in processes started quiet (e.g. the Trainer then fits without per-epoch lines)


def quiet_libraries() -> None:
    """Call before TensorFlow is imported (the C++ log level is read once, at load)."""
    os.environ[QUIET_ENV] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # its start-up E-lines (cuDNN/cuFFT/cuBLAS factories) are not errors
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["GRPC_VERBOSITY"] = "ERROR"  # its C++ core logs e.g. a GOAWAY at every server shutdown (read at import)
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                          *(f"ignore::{c.__name__}" for c in WARNING_CATEGORIES)]))
    for category in WARNING_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module="llm4msr")  # ours stay visible
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    sys.unraisablehook = drop_teardown_noise


def drop_teardown_noise(unraisable, _sys=sys) -> None:  # `_sys`: module globals are gone by then
    """TensorFlow functions still alive when the interpreter exits fail in their `__del__` once TF's
    module globals are gone: a traceback per function after a pipeline run that succeeded (19 on the
    tiny fixture; which object keeps them alive is not known). Those are dropped; every other unraisable exception is printed."""
    destructor = getattr(unraisable.object, "__qualname__", "")
    if not (_sys.is_finalizing() and destructor == "AtomicFunction.__del__"):
        _sys.__unraisablehook__(unraisable)


def is_quiet() -> bool:
    """Whether `quiet_libraries` was applied in this process or the one that started it."""
    return os.environ.get(QUIET_ENV) == "1"
