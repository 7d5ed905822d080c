"""The knowledge extraction Beam job (`extract.extract_knowledge` decides whether it must run):

prompts (built from the train split) -> cache key -> cache lookup
  -> hits: grouped by cache chunk, each chunk read once
  -> misses: deduplicated, batched by token length, embedded by one shared model per worker,
     each finished batch written to the cache as it completes
-> joined back to users, scenarios and items -> Parquet shards (artifact.SCHEMA) in a staging folder.

On the local DirectRunner, a job with prompts to embed runs in one worker process (TF already uses
both cores for one batch) started with TensorFlow's oneDNN kernels switched on: on AMD CPUs TF
leaves them off, and they make the encoder ~1.6x faster (bench/bench_knowledge.py measures both).
TF reads the switch once per process; the rest of the product keeps TF's default until its effect
on training and serving is measured. `--direct_running_mode=in_memory` keeps the job in the calling
process (tests, debugging).
"""
import contextlib
import os
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.utils.shared import Shared

from llm4msr.files import join
from llm4msr.pipeline.knowledge import artifact
from llm4msr.pipeline.knowledge.cache import KnowledgeCache, cache_key
from llm4msr.pipeline.knowledge.llm import ModelSpec, load_backend
from llm4msr.pipeline.knowledge.prompts import Prompt

NAMESPACE = "llm4msr.knowledge"
LOCAL_INFERENCE_WORKER = ["--direct_running_mode=multi_processing", "--direct_num_workers=1"]
INFERENCE_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1"}  # a value the user set wins


def run_job(prompts: List[Prompt], prompts_file: str, cache: KnowledgeCache, cached: Dict[str, str], out_dir: str,
            spec: ModelSpec, batch_size: int, bucket_by_length: bool, levels: Sequence[str],
            beam_pipeline_args: Optional[Sequence[str]], progress: bool, started: float) -> Dict[str, float]:
    """Runs the job into `out_dir` (a staging folder) and returns its counts (see `extract_knowledge`);
    `prompts` are the lines of `prompts_file` (JSON lines), which the job reads; `cached` is `cache.index()`."""
    pending = len({_key(p) for p in prompts} - set(cached))
    options = PipelineOptions(pipeline_args(beam_pipeline_args, pending))
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | ExtractKnowledge(prompts_file, cached, spec, cache, str(out_dir), batch_size, bucket_by_length,
                                    levels)
    in_memory = options.view_as(DirectOptions).direct_running_mode == "in_memory"
    worker_variables = {} if in_memory else INFERENCE_ENVIRONMENT  # never this process's own
    with _ProgressBar(cache, pending, enabled=progress), _worker_environment(worker_variables):
        result = pipeline.run()
        result.wait_until_finish()
    return {**_counts(result, prompts, cached, started), "discarded_cache_chunks": len(cache.discarded)}


def pipeline_args(args: Optional[Sequence[str]], pending: int) -> List[str]:
    """The user's Beam flags; on the local DirectRunner without a running mode, one worker process
    when there is something to embed (it costs ~20 s to start: a fully cached run stays here)."""
    args = list(args or [])
    local = PipelineOptions(args).view_as(StandardOptions).runner in (None, "DirectRunner")
    if local and not any(a.startswith("--direct_running_mode") for a in args):
        defaults = LOCAL_INFERENCE_WORKER if pending else ["--direct_running_mode=in_memory"]
        args += [flag for flag in defaults if not any(a.startswith(flag.split("=")[0]) for a in args)]
    return args


@contextlib.contextmanager
def _worker_environment(variables: Dict[str, str]):
    """Sets the variables the caller has not set while the job starts its worker processes (they
    inherit `os.environ`). TensorFlow reads the oneDNN switch once, at its first use: a loaded
    TensorFlow reads it here first, so this process keeps its setting (the trainer's) whatever runs
    in it meanwhile; one not loaded yet is left alone (importing it costs ~10 s)."""
    if "tensorflow" in sys.modules:
        _onednn_enabled()
    added = {name: value for name, value in variables.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class ExtractKnowledge(beam.PTransform):
    """The whole job as one composite transform (root: it reads the prompts from `prompts_file`,
    one JSON object per line, so that they are read by the workers, not shipped in the job's graph)."""

    def __init__(self, prompts_file: str, cached: Dict[str, str], spec: ModelSpec, cache: KnowledgeCache,
                 out_dir: str, batch_size: int, bucket_by_length: bool, levels: Sequence[str] = artifact.LEVELS):
        super().__init__()
        self.prompts_file, self.cached, self.spec, self.cache = prompts_file, cached, spec, cache
        self.out_dir, self.batch_size, self.bucket_by_length = out_dir, batch_size, bucket_by_length
        self.levels = list(levels)

    def expand(self, pbegin):
        keyed = (pbegin | "Prompts" >> beam.io.ReadFromText(self.prompts_file) | "Parse" >> beam.Map(Prompt.from_json)
                 | "CacheKey" >> beam.Map(lambda prompt: (_key(prompt), prompt)))
        misses, hits = keyed | "CacheLookup" >> beam.Partition(
            lambda element, _, cached: int(element[0] in cached), 2, cached=self.cached)
        computed = (misses
                    | "Unique" >> beam.Map(lambda kv: (kv[0], kv[1].text, kv[1].n_tokens)) | beam.Distinct()
                    | "Batch" >> LengthBatches(self.batch_size, self.bucket_by_length)
                    | "Embed" >> beam.ParDo(EmbedBatch(self.spec, self.cache, Shared())))
        reused = (hits
                  | "ByChunk" >> beam.Map(lambda kv, cached: (cached[kv[0]], kv[0]), cached=self.cached)
                  | "GroupByChunk" >> beam.GroupByKey()
                  | "ReadCache" >> beam.ParDo(ReadCachedChunk(self.cache)))
        rows = ({"prompt": keyed, "result": (computed, reused) | beam.Flatten()}
                | "Join" >> beam.CoGroupByKey() | "Rows" >> beam.FlatMap(_rows))
        for level in self.levels:
            _ = (rows | f"Only{level}" >> beam.Filter(lambda row, lv: row[0] == lv, level)
                 | f"Drop{level}" >> beam.Map(lambda row: row[1])
                 | f"Write{level}" >> beam.io.WriteToParquet(
                        join(self.out_dir, f"{level}/part"), artifact.SCHEMA, file_name_suffix=".parquet"))
        return rows


class LengthBatches(beam.PTransform):
    """(key, text, n_tokens) -> lists of at most `batch_size`. Bucketed: all pending prompts sorted
    by length, so each batch pads to a similar length (padding is most of the waste on CPU)."""

    def __init__(self, batch_size: int, bucket_by_length: bool = True):
        super().__init__()
        self.batch_size, self.bucket_by_length = int(batch_size), bucket_by_length

    def expand(self, prompts):
        if not self.bucket_by_length:
            return prompts | beam.BatchElements(min_batch_size=self.batch_size, max_batch_size=self.batch_size)
        return (prompts | "All" >> beam.combiners.ToList()
                | "SortedBatches" >> beam.FlatMap(_sorted_batches, self.batch_size)
                | "Spread" >> beam.Reshuffle())  # batches spread over workers when there are several


def _sorted_batches(prompts, batch_size: int):
    ordered = sorted(prompts, key=lambda p: (-p[2], p[0]))  # longest first: peak memory shows early
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]


class EmbedBatch(beam.DoFn):
    """Embeds one batch with the worker's shared model, writes it to the cache, emits (key, (vector, text))."""

    def __init__(self, spec: ModelSpec, cache: KnowledgeCache, shared: Shared):
        self.spec, self.cache, self.shared = spec, cache, shared
        self.inferences = Metrics.counter(NAMESPACE, "inferences")
        self.tokens = Metrics.counter(NAMESPACE, "tokens")
        self.millis = Metrics.counter(NAMESPACE, "inference_ms")
        self.cpu_millis = Metrics.counter(NAMESPACE, "inference_cpu_ms")  # all threads: robust to a busy machine
        self.onednn = Metrics.counter(NAMESPACE, "inferences_with_onednn")

    def process(self, batch):
        # acquired on the first batch, not in setup(): a fully cached run never loads the model
        model = self.shared.acquire(lambda: load_backend(self.spec), tag=self.spec.fingerprint)
        started, cpu_started = time.perf_counter(), time.process_time()
        vectors, texts = model.embed([text for _, text, _ in batch])
        keys = [key for key, _, _ in batch]
        self.cache.write(keys, vectors, texts)
        self.millis.inc(int(1000 * (time.perf_counter() - started)))
        self.cpu_millis.inc(int(1000 * (time.process_time() - cpu_started)))
        self.inferences.inc(len(batch))
        if _onednn_enabled():
            self.onednn.inc(len(batch))
        self.tokens.inc(sum(min(n, self.spec.prompt_budget) for _, _, n in batch))
        for key, vector, text in zip(keys, vectors, texts):
            yield key, (vector, text)


class ReadCachedChunk(beam.DoFn):
    def __init__(self, cache: KnowledgeCache):
        self.cache = cache

    def process(self, chunk_and_keys):
        chunk, keys = chunk_and_keys
        for key, vector, text in self.cache.read(chunk, keys):
            yield key, (vector, text)


def _onednn_enabled() -> bool:
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _key(prompt: Prompt) -> str:
    return cache_key(prompt.template_version, prompt.prompt_hash)


def _rows(joined):
    key, grouped = joined
    results = list(grouped["result"])
    if not results:
        raise RuntimeError(f"no vector for cache key {key}")  # a bug, never bad input
    vector, text = results[0]
    for prompt in grouped["prompt"]:
        yield prompt.level, artifact.row(prompt, vector, text)


def _counts(result, prompts: List[Prompt], cached: Dict[str, str], started: float) -> Dict[str, float]:
    seconds = time.time() - started
    counters = {r.key.metric.name: r.committed for r in
                result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    return {"prompts": len(prompts), "cache_hits": sum(_key(p) in cached for p in prompts),
            "inferences": int(counters.get("inferences", 0)), "tokens": int(counters.get("tokens", 0)),
            "inferences_with_onednn": int(counters.get("inferences_with_onednn", 0)),
            "inference_seconds": round(counters.get("inference_ms", 0) / 1000, 3),
            "inference_cpu_seconds": round(counters.get("inference_cpu_ms", 0) / 1000, 3),
            "seconds": round(seconds, 3), "prompts_per_second": round(len(prompts) / max(seconds, 1e-9), 2)}


class _ProgressBar:
    """A tqdm bar fed by the cache chunks appearing on disk: works whatever process runs the batches."""

    def __init__(self, cache: KnowledgeCache, total: int, enabled: bool):
        self.cache, self.total, self.enabled = cache, total, enabled and total > 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.enabled:
            self._baseline = self._finished()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()

    def _finished(self) -> int:
        return self.cache.finished_prompts()

    def _poll(self):
        from tqdm import tqdm

        with tqdm(total=self.total, unit="prompt", desc="knowledge", dynamic_ncols=True) as bar:
            while True:
                stopping = self._stop.wait(0.5)
                done = self._finished() - self._baseline
                bar.update(min(done, self.total) - bar.n)
                if stopping:
                    break
