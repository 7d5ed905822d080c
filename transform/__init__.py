"""The TensorFlow Transform `preprocessing_fn`."""
