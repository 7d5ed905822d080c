"""Data adapters into the canonical multi-scenario layout (docs/DATA_FORMAT.md)."""
