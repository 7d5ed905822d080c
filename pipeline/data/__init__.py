"""Data adapters into the canonical multi-scenario layout (../shared/docs/DATA_FORMAT.md)."""
