"""Scale figures for docs/SCALING.md: synthetic canonical sets of U users x 50 interactions over a
catalogue of I items, through each stage of the pipeline's data path, timed on this machine.

    python bench/bench_scale.py [--users 2000 10000] [--items 100000] [--per-user 50]
                                [--extraction-users 1000] [--work /tmp/llm4msr-scale]

For every U: writing the canonical set (`write_dataset`), building every prompt (the tokenizer
counts tokens to fit the budget; the dedupe rate is the share of prompts whose text another prompt
already has), CanonicalExampleGen and KnowledgeJoiner (the components' own functions on the Beam
DirectRunner with one worker process per core, as `configs/default.yaml` runs them), and one epoch
of `llm4msr train`'s loop (Shared-Bottom, user knowledge, batch 4096; its in-memory Transform
included). The knowledge job itself (`extract_knowledge`: its Beam worker, the frozen LLM, the
cache) runs once, on the first users' prompts (seconds and tokens per prompt, cache bytes per
prompt): extraction is the stage this machine cannot run at 1M users (docs/SCALING.md has the
estimate); the joiner and the training get random 384-wide vectors for every user instead, which
cost them what real ones would.
Synthetic users have distinct random histories, so the dedupe rate here is a floor, not a forecast.
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np
import pandas as pd

import llm4msr  # noqa: F401  (Keras 2 before TensorFlow loads)

SCENARIOS = [("S0", "Drama and romance", "Films about people"), ("S1", "Action and thrillers", "Films that move"),
             ("S2", "Comedy and family", "Films to laugh at")]
GENRES = ["Drama", "Romance", "Action", "Thriller", "Comedy", "Children", "Sci-Fi", "Horror", "Documentary"]
GENRE_SCENARIO = {"Drama": "S0", "Romance": "S0", "Documentary": "S0", "Action": "S1", "Thriller": "S1",
                  "Sci-Fi": "S1", "Horror": "S1", "Comedy": "S2", "Children": "S2"}
DIM = 384
BEAM_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]


def synthetic_dataset(users: int, items: int, per_user: int, seed: int = 0):
    """Items with titles, years and genres; each user rates `per_user` distinct items drawn by a
    Zipf-like popularity, at increasing timestamps; the scenario is the item's genre group."""
    from llm4msr.pipeline.data.canonical import Dataset, assign_split
    from llm4msr.pipeline.data.scenarios import Scenario

    rng = np.random.default_rng(seed)
    genre = rng.integers(0, len(GENRES), items)
    item_frame = pd.DataFrame({"item_id": np.arange(1, items + 1).astype(str),
                               "title": [f"Synthetic film {i} ({1950 + i % 70})" for i in range(1, items + 1)],
                               "categories": [GENRES[g] for g in genre], "description": ""})
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity /= popularity.sum()
    chosen = np.concatenate([rng.choice(items, per_user, replace=False, p=popularity) for _ in range(users)])
    user = np.repeat(np.arange(1, users + 1), per_user)
    timestamps = 1_500_000_000 + np.tile(np.arange(per_user), users) * 3600 + rng.integers(0, 3600, users * per_user)
    interactions = pd.DataFrame({"user_id": user.astype(str), "item_id": (chosen + 1).astype(str),
                                 "scenario": [GENRE_SCENARIO[GENRES[g]] for g in genre[chosen]],
                                 "label": (rng.random(users * per_user) < 0.55).astype("int64"),
                                 "timestamp": timestamps.astype("int64")})
    interactions["split"] = assign_split(interactions, "time", seed, "synthetic")
    return Dataset(interactions, item_frame, [Scenario(*s) for s in SCENARIOS],
                   manifest={"source": "synthetic", "users": users, "items": items, "per_user": per_user})


def timed(name: str, results: dict, function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    results[name] = round(time.perf_counter() - started, 2)
    print(f"  {name:<28}{results[name]:>9.1f} s", flush=True)
    return value


def folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


def build_all_prompts(data_dir: str):
    from llm4msr.pipeline.data.canonical import read_dataset
    from llm4msr.pipeline.knowledge.llm import load_tokenizer, resolve_model, token_counter
    from llm4msr.pipeline.knowledge.prompts import build_prompts
    from llm4msr.pipeline.knowledge.templates import load_templates

    spec = resolve_model("minilm")
    return build_prompts(read_dataset(data_dir), load_templates(None), token_counter(load_tokenizer(spec)),
                         spec.prompt_budget, ["user", "scenario"])


def random_knowledge(dataset, out: str) -> str:
    from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, KnowledgeRecord, write_knowledge

    rng = np.random.default_rng(1)
    users = {u: KnowledgeRecord(u, rng.normal(size=DIM).astype(np.float32))
             for u in [*dataset.interactions["user_id"].unique(), COLD_START_ID]}
    scenarios = {s.id: KnowledgeRecord(s.id, rng.normal(size=DIM).astype(np.float32)) for s in dataset.scenarios}
    return write_knowledge(out, users, scenarios, {"dim": DIM, "synthetic": True})


def artifact(kind, uri, splits=False):
    from llm4msr.pipeline.data.split import SPLITS

    made = kind()
    made.uri = str(uri)
    os.makedirs(made.uri, exist_ok=True)
    if splits:
        made.splits = list(SPLITS)
    return made


def raw_schema(folder: pathlib.Path):
    """The schema SchemaGen infers for canonical examples (what the joiner extends)."""
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import io_utils

    schema = schema_pb2.Schema()
    for name in ("user_id", "item_id", "scenario"):
        schema.feature.add(name=name, type=schema_pb2.BYTES)
    schema.feature.add(name="label", type=schema_pb2.INT)
    made = artifact(standard_artifacts.Schema, folder)
    io_utils.write_pbtxt_file(str(folder / "schema.pbtxt"), schema)
    return made


def beam_pipeline():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    return beam.Pipeline(options=PipelineOptions(BEAM_ARGS))


def run_example_gen(data_dir: str, out: pathlib.Path):
    from tfx.types import standard_artifacts

    from llm4msr.pipeline import components

    examples = artifact(standard_artifacts.Examples, out)
    components.CanonicalExampleGen.EXECUTOR_SPEC.executor_class._FUNCTION(
        examples=examples, dataset_dir=data_dir, dataset_fingerprint="synthetic", beam_pipeline=beam_pipeline())
    return examples


def run_joiner(examples, knowledge_dir: str, work: pathlib.Path):
    from tfx.types import standard_artifacts

    from llm4msr.pipeline import components

    joined = artifact(standard_artifacts.Examples, work / "joined")
    components.KnowledgeJoiner.EXECUTOR_SPEC.executor_class._FUNCTION(
        examples=examples, knowledge=artifact(components.KnowledgeArtifact, knowledge_dir),
        schema=raw_schema(work / "schema"), anomalies=artifact(standard_artifacts.ExampleAnomalies, work / "anomalies"),
        joined_examples=joined, joined_schema=artifact(standard_artifacts.Schema, work / "joined_schema"),
        beam_pipeline=beam_pipeline())
    return joined


def train_one_epoch(data_dir: str, knowledge_dir: str) -> dict:
    from llm4msr.trainer.fast import train
    from llm4msr.trainer.model import ModelConfig
    from llm4msr.trainer.training import TrainConfig

    return train(data_dir, ModelConfig(backbone="shared_bottom", knowledge="user"), knowledge_dir,
                 TrainConfig(epochs=1, batch_size=4096), verbose=0)


def extraction_sample(dataset, users: int, work: pathlib.Path) -> dict:
    """The knowledge job itself (its Beam worker process, the cache) on the first `users` users'
    rows (every item kept, so the set stays valid), from an empty cache."""
    from llm4msr.pipeline.data.canonical import Dataset, write_dataset
    from llm4msr.pipeline.knowledge.extract import extract_knowledge

    kept = dataset.interactions["user_id"].isin(dataset.interactions["user_id"].unique()[:users])
    sample = Dataset(dataset.interactions[kept].reset_index(drop=True), dataset.items, dataset.scenarios,
                     manifest=dataset.manifest)
    data_dir = write_dataset(sample, str(work / "sample-data"))
    counts = extract_knowledge(data_dir, str(work / "sample-knowledge"), cache_dir=str(work / "sample-cache"),
                               levels=["user", "scenario"], progress=False)
    return {"prompts": counts["prompts"], "inferences": counts["inferences"], "seconds": counts["seconds"],
            "inference_seconds": counts["inference_seconds"], "tokens": counts["tokens"],
            "tokens_per_second": round(counts["tokens"] / max(counts["inference_seconds"], 1e-9)),
            "seconds_per_prompt": round(counts["seconds"] / counts["inferences"], 4),
            "cache_bytes_per_prompt": round(folder_bytes(work / "sample-cache") / counts["inferences"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=50)
    parser.add_argument("--extraction-users", type=int, default=1000,
                        help="users whose prompts the knowledge job embeds (once, at the first size)")
    parser.add_argument("--work", default="/tmp/llm4msr-scale")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    from llm4msr.pipeline.data.canonical import write_dataset

    figures = {"load": os.getloadavg(), "cores": os.cpu_count(), "runs": []}
    for users in args.users:
        work = pathlib.Path(args.work) / f"u{users}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rows = users * args.per_user
        print(f"{users:,} users x {args.per_user} = {rows:,} rows over {args.items:,} items", flush=True)
        run = {"users": users, "rows": rows, "items": args.items, "seconds": {}}
        seconds = run["seconds"]
        dataset = timed("synthesize", seconds, synthetic_dataset, users, args.items, args.per_user)
        data_dir = str(work / "data")
        timed("write canonical set", seconds, write_dataset, dataset, data_dir)
        prompts = timed("build prompts", seconds, build_all_prompts, data_dir)
        texts = [p.text for p in prompts]
        run.update(prompts=len(prompts), dedupe_rate=round(1 - len(set(texts)) / len(texts), 4),
                   prompt_tokens_mean=round(float(np.mean([p.n_tokens for p in prompts])), 1))
        if "extraction" not in figures:
            figures["extraction"] = timed("extraction (sample)", seconds, extraction_sample, dataset,
                                          args.extraction_users, work)
        knowledge_dir = timed("random knowledge (store)", seconds, random_knowledge, dataset, str(work / "knowledge"))
        run["store_bytes"] = folder_bytes(knowledge_dir)
        examples = timed("CanonicalExampleGen", seconds, run_example_gen, data_dir, work / "examples")
        joined = timed("KnowledgeJoiner", seconds, run_joiner, examples, knowledge_dir, work)
        run["joined_bytes"] = folder_bytes(joined.uri)
        result = timed("train 1 epoch (+Transform)", seconds, train_one_epoch, data_dir, knowledge_dir)
        run["train_seconds"] = result["train_seconds"]
        run["test_auc"] = result["test"]["overall"]["auc"] if "overall" in result["test"] else None
        figures["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "seconds"}), flush=True)
        shutil.rmtree(work / "joined", ignore_errors=True)  # GBs at the larger sizes
    print(json.dumps(figures, indent=2, default=float))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
