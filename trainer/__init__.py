"""Keras layers, multi-scenario backbones, LLM4MSR meta layers and the TFX `run_fn`."""
