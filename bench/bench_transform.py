"""Times the feature contract's analysis: `tft_beam.AnalyzeDataset(preprocessing_fn)` on a pipeline
run's joined examples (train split), in-process Beam, and counts the Beam graph's leaf transforms
(their fixed cost dominates small inputs).

    python bench/bench_transform.py --run-root runs/pipeline --data runs/data/movielens-latest-small \
        [--reduction 8] [--repeats 2]
"""
import argparse
import glob
import json
import os
import tempfile
import time

import llm4msr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import apache_beam as beam
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils
from tfx_bsl.public import tfxio

from llm4msr.transform.preprocessing import preprocessing_fn


def _latest(pattern: str) -> str:
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise SystemExit(f"nothing matches {pattern}: run the pipeline first")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-root", required=True, help="a pipeline root (holds artifacts/KnowledgeJoiner)")
    parser.add_argument("--data", required=True, help="the canonical data set the run used")
    parser.add_argument("--reduction", type=int, default=0, help="knowledge_reduction (0: none)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    joiner = os.path.join(args.run_root, "artifacts", "KnowledgeJoiner")
    schema = io_utils.parse_pbtxt_file(_latest(f"{joiner}/joined_schema/*/schema.pbtxt"), schema_pb2.Schema())
    files = glob.glob(os.path.join(_latest(f"{joiner}/joined_examples/*"), "Split-train", "*.gz"))
    with open(os.path.join(args.data, "scenarios.json")) as handle:
        scenarios = [s["id"] for s in json.load(handle)["scenarios"]]
    config = {"scenarios": scenarios, "dataset_dir": os.path.abspath(args.data), "knowledge_reduction": args.reduction}
    for repeat in range(args.repeats):
        started = time.perf_counter()
        source = tfxio.TFExampleRecord(file_pattern=files, schema=schema, telemetry_descriptors=["bench"])
        pipeline = beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"]))
        with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
            _ = ((pipeline | source.BeamSource(), source.TensorAdapterConfig())
                 | tft_beam.AnalyzeDataset(lambda inputs: preprocessing_fn(inputs, config)))
        leaves = sum(1 for t in pipeline.to_runner_api().components.transforms.values() if not t.subtransforms)
        pipeline.run().wait_until_finish()
        print(f"repeat {repeat}: analyze {time.perf_counter() - started:.1f} s, {leaves} leaf Beam transforms",
              flush=True)


if __name__ == "__main__":
    main()
