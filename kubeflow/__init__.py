"""Kubeflow Pipelines: compile entry point, pipeline image and deployment manifests."""
