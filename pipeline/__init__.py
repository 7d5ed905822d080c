"""The TFX pipeline, its custom components, data adapters and runners."""
