"""Kubeflow Pipelines entry point: compile the LLM4MSR pipeline to a KFP v2 / Vertex pipeline JSON.

    python -m llm4msr.kubeflow.compile --config my-kubeflow.yaml --image REGISTRY/llm4msr:TAG \
        --output runs/kubeflow/llm4msr_pipeline.json

Same as `llm4msr pipeline compile --target kubeflow`. In the config, point `dataset_dir`, `root`
and `serving_dir` at shared storage (gs://..., s3://...) and give Beam a distributed runner, e.g.
`beam_args: [--runner=DataflowRunner, --project=P, --region=R, --temp_location=gs://B/tmp]`.
"""
import sys

from llm4msr.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", "compile", "--target", "kubeflow", *sys.argv[1:]]))
