"""Knowledge extraction throughput: prompts/s and tokens/s of the full Beam job on the prompts of
MovieLens latest-small (610 users + 3 scenarios + the cold-start row), MiniLM on TensorFlow, at
several batch sizes with and without length bucketing, plus a fully cached rerun.

    .venv/bin/python bench/bench_knowledge.py [--data /tmp/ml-small] [--batch-sizes 16,64,128]
        [--torch-python /tmp/torchref/bin/python] [--precisions float32,bfloat16] [--bucketed-only]

`--precisions` runs the bucketed worker rows at each precision of the forward pass (each with its
own paired reference); `--bucketed-only` skips the rows without bucketing and in this process.

Inference figures (tokenisation + forward + cache write, model load excluded, as in the PyTorch
reference table of ../shared/data/reference/README.md) come from the job's own counters; `e2e`
is the whole call (read data, build prompts, Beam, write the artifact). The job runs as `make run`
runs it: inference in one worker process with oneDNN; one extra row runs it in this process
(oneDNN off) to show what that costs.

The reference README's figures were taken on another CPU (AVX-512); with `--torch-python` (an
interpreter with torch and sentence-transformers, see reference_sentence_transformers.py) the
PyTorch reference encodes the same prompts right after each of our runs, on this machine, and
the ratio is to that paired figure. The machine may be shared: `uptime` is printed with the numbers.
"""
import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile

from llm4msr.pipeline.knowledge import llm
from llm4msr.pipeline.knowledge.artifact import read_knowledge
from llm4msr.pipeline.knowledge.extract import extract_knowledge

REPO = pathlib.Path(__file__).resolve().parents[1]
README_TOKENS_PER_S = {16: 6124, 64: 5490, 128: 4834}  # reference README: sentence-transformers, AVX-512 CPU
IN_MEMORY = ["--direct_running_mode=in_memory"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/tmp/ml-small", help="canonical ml-latest-small (prepared if missing)")
    parser.add_argument("--batch-sizes", default="16,64,128")
    parser.add_argument("--torch-python", help="interpreter with torch + sentence-transformers: paired reference")
    parser.add_argument("--precisions", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--bucketed-only", action="store_true", help="only the bucketed worker rows")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    data = ensure_data(pathlib.Path(args.data))
    print(f"uptime before: {uptime()}")
    warm_up()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs = [(b, True, None, p) for b in batch_sizes for p in args.precisions.split(",")]
    if not args.bucketed_only:
        runs += [(b, False, None, "float32") for b in batch_sizes] + [(batch_sizes[0], True, IN_MEMORY, "float32")]
    rows = []
    for batch_size, bucketing, beam_args, precision in runs:
        with tempfile.TemporaryDirectory() as scratch:
            counts = run(data, scratch, batch_size, bucketing, beam_args, precision)
            rows.append({**row(batch_size, bucketing, beam_args, counts), "precision": precision})
            if args.torch_python and bucketing and beam_args is None:
                rows[-1]["paired_reference"] = reference(args.torch_python, pathlib.Path(scratch), batch_size)
            print(format_row(rows[-1]), flush=True)
            if len(rows) == 1:
                cached = run(data, scratch, batch_size, bucketing, beam_args, precision)
                assert cached["inferences"] == 0, cached
                print(f"fully cached rerun: {cached['prompts']} prompts, {cached['cache_hits']} cache hits, "
                      f"0 inferences, {cached['seconds']:.2f} s end to end", flush=True)
    print(f"uptime after: {uptime()}")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def ensure_data(folder: pathlib.Path) -> pathlib.Path:
    if not (folder / "interactions.csv").exists():
        from llm4msr.pipeline.data.prepare import prepare

        prepare("movielens-latest-small", folder, data_dir=REPO.parent / "shared" / "data" / "ml-latest-small",
                download=False)
    return folder


def warm_up() -> None:
    """Loads the model and traces the forward pass once, outside every measurement."""
    llm.load_backend(llm.resolve_model("minilm")).embed(["warm up"] * 4)


def run(data, scratch, batch_size: int, bucketing: bool, beam_args, precision: str = "float32") -> dict:
    return extract_knowledge(data, pathlib.Path(scratch) / "out", cache_dir=pathlib.Path(scratch) / "cache",
                             batch_size=batch_size, bucket_by_length=bucketing, progress=False,
                             beam_pipeline_args=beam_args, precision=precision)


def reference(python: str, scratch: pathlib.Path, batch_size: int) -> dict:
    """sentence-transformers on the prompts this run embedded (read back from its artifact)."""
    knowledge = read_knowledge(scratch / "out")
    texts = sorted({entry.prompt for entry in [*knowledge.users.values(), *knowledge.scenarios.values()]})
    job = scratch / "prompts.json"
    spec = llm.resolve_model("minilm")
    job.write_text(json.dumps({"folder": spec.folder, "texts": texts, "max_length": spec.max_length}))
    script = REPO / "bench" / "reference_sentence_transformers.py"
    out = subprocess.run([python, str(script), str(job), "--batch-size", str(batch_size)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def row(batch_size: int, bucketing: bool, beam_args, counts: dict) -> dict:
    seconds = counts["inference_seconds"]
    return {"batch": batch_size, "bucketing": bucketing, "where": "in this process" if beam_args else "worker",
            "onednn": counts["inferences_with_onednn"] == counts["inferences"],
            "prompts": counts["inferences"], "tokens": counts["tokens"],
            "inference_s": seconds, "prompts_per_s": counts["inferences"] / seconds,
            "tokens_per_s": counts["tokens"] / seconds, "cpu_s": counts["inference_cpu_seconds"],
            "tokens_per_cpu_s": counts["tokens"] / counts["inference_cpu_seconds"], "e2e_s": counts["seconds"],
            "e2e_prompts_per_s": counts["prompts_per_second"],
            "readme_reference_tokens_per_s": README_TOKENS_PER_S.get(batch_size)}


def format_row(r: dict) -> str:
    versus = ""
    if "paired_reference" in r:
        paired = r["paired_reference"]["tokens_per_s"]
        versus = f" ({r['tokens_per_s'] / paired:.2f}x the paired PyTorch reference, {paired:,.0f} tokens/s)"
    return (f"batch {r['batch']:>3} {r['precision']} bucketing={'on ' if r['bucketing'] else 'off'} {r['where']}, "
            f"oneDNN {'on' if r['onednn'] else 'off'}: {r['prompts']} prompts, "
            f"{r['tokens']} tokens in {r['inference_s']:.1f} s -> {r['prompts_per_s']:.1f} prompts/s, "
            f"{r['tokens_per_s']:,.0f} tokens/s{versus}; {r['tokens_per_cpu_s']:,.0f} tokens per CPU-second "
            f"({r['cpu_s']:.1f} CPU-s); end to end {r['e2e_s']:.1f} s ({r['e2e_prompts_per_s']:.1f} prompts/s)")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
