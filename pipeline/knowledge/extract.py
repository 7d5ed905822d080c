"""Knowledge extraction: build the prompts, run the Beam job (`beam_job`) on what the artifact
needs, and publish the artifact atomically: `out_dir` is either the previous complete artifact or
the new one.

An artifact records the inputs it was made from (data set contents, model fingerprint, template
versions, levels, and the prompt-building code). A rerun on the same inputs finds the artifact
current and does nothing: no Beam, no TensorFlow, no tokenizer. A run into a new folder whose
prompts are all cached reads the prompts built last time for the same inputs (the cache keeps them)
and writes the artifact from the cache, again without Beam, TensorFlow or tokenizer.
"""
import datetime
import json
import time
from typing import Dict, List, Optional, Sequence, Tuple

from llm4msr.files import (absolute, glob, is_file, join, read_text, remove_tree, replace_dir, source_fingerprint,
                           staging_dir, with_beam_plugins, write_file)
from llm4msr.pipeline.data.canonical import dataset_fingerprint, read_dataset
from llm4msr.pipeline.knowledge import artifact, prompts as prompts_module, templates as templates_module
from llm4msr.pipeline.knowledge.cache import KnowledgeCache, cache_key, default_cache_dir
from llm4msr.pipeline.knowledge.llm import ModelSpec, load_tokenizer, resolve_model, token_counter
from llm4msr.pipeline.knowledge.prompts import Prompt, build_prompts
from llm4msr.pipeline.knowledge.templates import combined_version, load_templates


def extract_knowledge(dataset_dir, out_dir, model: str = "minilm", cache_dir=None, templates=None,
                      batch_size: int = 64, beam_pipeline_args: Optional[Sequence[str]] = None,
                      progress: bool = True, backend: Optional[str] = None, max_length: Optional[int] = None,
                      max_new_tokens: int = 64, bucket_by_length: bool = True,
                      levels: Sequence[str] = artifact.LEVELS, force: bool = False,
                      precision: str = "auto") -> Dict[str, float]:
    """Builds every prompt of the data set at `levels` (user and scenario, and item unless left
    out), embeds what the cache does not hold and writes the knowledge artifact to `out_dir`
    atomically, unless `out_dir` already holds the artifact of the same inputs (`force` redoes it).
    Returns counts: prompts, cache_hits, inferences (prompts run through the model, deduplicated),
    tokens (their tokens), inference_seconds, seconds, prompts_per_second, and up_to_date (1 when
    nothing had to be done)."""
    started = time.time()
    spec = resolve_model(model, backend=backend, max_length=max_length, max_new_tokens=max_new_tokens,
                         precision=precision)
    loaded = load_templates(templates)
    out_dir = absolute(out_dir)
    inputs = _inputs(spec, loaded, dataset_dir, levels)
    current = None if force else _current_counts(out_dir, inputs, started)
    if current is not None:
        return current
    cache = KnowledgeCache(cache_dir or default_cache_dir(), spec.fingerprint)
    prompts, prompts_file = _prompts(dataset_dir, loaded, spec, levels, inputs, cache)
    cached = cache.index()
    staging = staging_dir(out_dir)
    try:
        if all(cache_key(p.template_version, p.prompt_hash) in cached for p in prompts):
            counts = _write_from_cache(prompts, cache, cached, staging, levels, started)
        else:
            from llm4msr.pipeline.knowledge import beam_job  # imports Beam (seconds): only when there is work

            flags = with_beam_plugins(beam_pipeline_args, [dataset_dir, out_dir, cache.folder])
            counts = {**beam_job.run_job(prompts, prompts_file, cache, cached, staging, spec, batch_size,
                                         bucket_by_length, levels, flags, progress, started),
                      "up_to_date": 0}
        artifact.write_metadata(staging, _metadata(spec, loaded, dataset_dir, staging, counts, levels, inputs))
        replace_dir(staging, out_dir)
    finally:
        remove_tree(staging)
    return counts


def _prompts(dataset_dir, templates, spec: ModelSpec, levels: Sequence[str], inputs: dict,
             cache: KnowledgeCache) -> Tuple[List[Prompt], str]:
    """The data set's prompts and the file holding them (JSON lines, which the Beam job reads).
    Building them reads the data set and counts tokens to fit the budget (most of a fully cached
    run's time), so the cache keeps the file under the artifact's inputs and a later run with the
    same inputs reads it back."""
    manifest = cache.prompts_manifest(json.dumps({**inputs, "prompt_budget": spec.prompt_budget}, sort_keys=True))
    try:
        if is_file(manifest):
            return [Prompt.from_json(line) for line in read_text(manifest).split("\n") if line], manifest
    except (OSError, ValueError, TypeError):  # not readable (or an older format): built again
        pass
    prompts = build_prompts(read_dataset(dataset_dir), templates, token_counter(load_tokenizer(spec)),
                            spec.prompt_budget, levels)
    write_file(manifest, "".join(prompt.to_json() + "\n" for prompt in prompts))
    return prompts, manifest


def _write_from_cache(prompts, cache: KnowledgeCache, cached: Dict[str, str], staging: str,
                      levels: Sequence[str], started: float) -> Dict[str, float]:
    """Every prompt is in the cache: the artifact is written here, each chunk read once, with no
    Beam job, TensorFlow or model (a Beam job's start alone took longer than this whole path)."""
    keyed = [(cache_key(p.template_version, p.prompt_hash), p) for p in prompts]
    by_chunk: Dict[str, set] = {}
    for key, _ in keyed:
        by_chunk.setdefault(cached[key], set()).add(key)
    found = {key: (vector, text) for chunk, keys in by_chunk.items() for key, vector, text in cache.read(chunk, keys)}
    for level in levels:
        artifact.write_level(staging, level, (artifact.row(p, *found[key]) for key, p in keyed if p.level == level))
    return {**_cached_counts(len(prompts), started), "discarded_cache_chunks": len(cache.discarded), "up_to_date": 0}


def _cached_counts(prompts: int, started: float) -> Dict[str, float]:
    """The counts of a run that embedded nothing (every prompt came from the cache)."""
    seconds = time.time() - started
    return {"prompts": prompts, "cache_hits": prompts, "inferences": 0, "tokens": 0, "inferences_with_onednn": 0,
            "inference_seconds": 0.0, "inference_cpu_seconds": 0.0, "seconds": round(seconds, 3),
            "prompts_per_second": round(prompts / max(seconds, 1e-9), 2)}


def _inputs(spec: ModelSpec, templates, dataset_dir, levels: Sequence[str]) -> dict:
    """Everything the artifact's contents depend on; the prompt code is hashed too, so a changed
    prompt builder is not mistaken for an unchanged input."""
    return {"dataset": dataset_fingerprint(dataset_dir), "model": spec.fingerprint,
            "templates": combined_version(templates), "levels": sorted(levels),
            "prompt_code": source_fingerprint(prompts_module, templates_module)}


def _current_counts(out_dir: str, inputs: dict, started: float) -> Optional[Dict[str, float]]:
    """The counts of a rerun that finds `out_dir` current (None when it must be made)."""
    meta_path = join(out_dir, artifact.METADATA)
    try:
        metadata = json.loads(read_text(meta_path)) if is_file(meta_path) else None
    except ValueError:  # damaged: made again
        metadata = None
    if metadata is None:
        return None
    whole = all(glob(join(out_dir, f"{level}/*.parquet")) for level in inputs["levels"])
    if metadata.get("inputs") != inputs or metadata.get("format") != artifact.FORMAT_VERSION or not whole:
        return None
    prompts = int(metadata.get("counts", {}).get("prompts", 0))
    return {**_cached_counts(prompts, started), "discarded_cache_chunks": 0, "up_to_date": 1}


def _metadata(spec: ModelSpec, templates, dataset_dir, staging: str, counts, levels, inputs) -> dict:
    first_shard = glob(join(staging, f"{artifact.SCENARIO}/*.parquet"))[0]
    dim = len(artifact.read_parquet(first_shard, columns=["vector"]).column("vector")[0].as_py())
    return {"fingerprint": spec.fingerprint, "template_version": combined_version(templates),
            "templates": {level: {"path": t.path, "version": t.version} for level, t in templates.items()},
            "dim": dim, "model": spec.describe(), "dataset": str(dataset_dir), "counts": counts,
            "levels": list(levels), "inputs": inputs,
            "cold_start_id": artifact.COLD_START_ID,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
