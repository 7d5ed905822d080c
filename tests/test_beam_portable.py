"""The knowledge Beam job on a runner other than the DirectRunner, for real: `PortableRunner`
against a job service and an SDK worker pool started on 127.0.0.1 (`beam_cluster.py`). The
artifact and the job's counters equal the DirectRunner's. (Beam's Dask runner was tried first and
is not usable for these jobs: its Partition sends every element to every output and its file sinks
write empty files; Flink and Spark job servers need jars from Maven, which this machine cannot reach.)
The joiner runs on the same cluster in `test_pipeline_e2e.py`."""
import numpy as np

from beam_cluster import completed_jobs, portable_cluster
from llm4msr.pipeline.knowledge.artifact import read_knowledge
from llm4msr.pipeline.knowledge.extract import extract_knowledge


def test_knowledge_extraction_on_the_portable_runner_equals_the_direct_runner(tiny_data, tmp_path):
    def extract(name, beam_args):  # a fresh cache each: every prompt is embedded by the job's workers
        return extract_knowledge(tiny_data, tmp_path / name, cache_dir=tmp_path / f"cache-{name}",
                                 levels=["user", "scenario"], beam_pipeline_args=beam_args, progress=False)
    direct = extract("direct", None)
    with portable_cluster(tmp_path / "cluster") as options:
        remote = extract("portable", options)
    assert completed_jobs(tmp_path / "cluster") == 1  # the cluster's job service ran it
    assert remote["inferences"] == direct["inferences"] == direct["prompts"] > 0  # counters from the job service
    assert remote["tokens"] == direct["tokens"]
    made_direct, made_remote = read_knowledge(tmp_path / "direct"), read_knowledge(tmp_path / "portable")
    for level in ("users", "scenarios"):
        records, others = getattr(made_direct, level), getattr(made_remote, level)
        assert records.keys() == others.keys()
        for key, record in records.items():
            assert (record.prompt, record.text) == (others[key].prompt, others[key].text)
            np.testing.assert_allclose(record.vector, others[key].vector, rtol=1e-5, atol=1e-6)
