"""The Beam extraction job: artifact, cache hits and misses, new users, resume after a failure,
cache isolation between models and templates, a rerun on unchanged inputs, the causal-LM path
and the CLI."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from llm4msr import cli
from llm4msr.errors import UserFacingError
from llm4msr.pipeline.data import canonical
from llm4msr.pipeline.data.prepare import prepare
from llm4msr.pipeline.knowledge import llm
from llm4msr.pipeline.knowledge.artifact import COLD_START_ID, LEVELS, SCENARIO, USER, read_knowledge
from llm4msr.pipeline.knowledge.beam_job import LOCAL_INFERENCE_WORKER, pipeline_args
from llm4msr.pipeline.knowledge.extract import extract_knowledge
from llm4msr.pipeline.knowledge.templates import DEFAULT_DIR
from test_knowledge_encoder import build_tiny_gpt2

SCENARIOS = 3
IN_MEMORY = ["--direct_running_mode=in_memory"]  # failures are injected into this process


@pytest.fixture(scope="module")
def data(tiny_movielens, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare("movielens-latest-small", out, data_dir=tiny_movielens, download=False)
    return out


@pytest.fixture(scope="module")
def small(data, tmp_path_factory):
    """Six users of the tiny set and the first six items each rated (train rows, so no user is
    cold): cheap to embed again and again."""
    full = canonical.read_dataset(data)
    rows = full.interactions[full.interactions["user_id"].isin(["2", "3", "5", "7", "9", "10"])]
    top = set(rows.sort_values("timestamp").groupby("user_id").head(6)["item_id"])
    out = tmp_path_factory.mktemp("data") / "small"
    canonical.write_dataset(canonical.Dataset(rows[rows["item_id"].isin(top)], full.items[full.items["item_id"].isin(top)],
                                              full.scenarios), out)
    return out


def unique_prompts(folder) -> int:
    knowledge = read_knowledge(folder)
    return len({r.prompt_hash for r in [*knowledge.users.values(), *knowledge.scenarios.values()]})


def run(data, out, cache, levels=(USER, SCENARIO), **options):
    return extract_knowledge(data, out, cache_dir=cache, progress=False, beam_pipeline_args=IN_MEMORY,
                             levels=levels, **options)


def test_two_runs_hit_the_cache_and_write_a_complete_artifact(data, tmp_path):
    users = set(canonical.read_dataset(data).interactions["user_id"])
    first = run(data, tmp_path / "k1", tmp_path / "cache", batch_size=16)
    prompts = len(users) + SCENARIOS + 1  # + the cold-start row
    assert first["prompts"] == prompts and first["cache_hits"] == 0
    assert first["inferences"] == prompts  # every user of the fixture has train history
    assert first["tokens"] > 100 * prompts
    second = run(data, tmp_path / "k2", tmp_path / "cache", batch_size=64)
    assert (second["cache_hits"], second["inferences"], second["tokens"]) == (prompts, 0, 0)

    one, two = read_knowledge(tmp_path / "k1"), read_knowledge(tmp_path / "k2")
    assert set(one.users) == users | {COLD_START_ID} and set(one.scenarios) == {"S0", "S1", "S2"}
    assert one.dim == 384 and one.metadata["fingerprint"] == llm.resolve_model("minilm").fingerprint
    assert one.metadata["counts"]["inferences"] == prompts
    for user in users:
        assert np.array_equal(one.users[user].vector, two.users[user].vector)
        assert one.users[user].prompt == two.users[user].prompt
        assert abs(np.linalg.norm(one.users[user].vector) - 1) < 1e-5
    assert np.array_equal(one.user_vector("never-seen"), one.users[COLD_START_ID].vector)
    # cached vectors are the model's: re-embed a few prompts directly
    direct, _ = llm.load_backend(llm.resolve_model("minilm")).embed([one.users["2"].prompt, one.scenarios["S1"].prompt])
    assert np.dot(direct[0], two.users["2"].vector) > 0.9999 and np.dot(direct[1], two.scenarios["S1"].vector) > 0.9999


def _extract_in_a_new_process(data, out, cache):
    """(counts, which of Beam, TensorFlow and transformers the extraction imported) of a run in a fresh
    interpreter."""
    script = ("import sys, json; from llm4msr.pipeline.knowledge.extract import extract_knowledge; "
              f"counts = extract_knowledge({str(data)!r}, {str(out)!r}, "
              f"cache_dir={str(cache)!r}, levels=['user', 'scenario'], progress=False); "
              "heavy = ('apache_beam', 'tensorflow', 'transformers'); "
              "print(json.dumps([counts, [m for m in heavy if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_rerun_on_the_same_inputs_does_nothing_and_loads_neither_beam_nor_tensorflow(small, tmp_path):
    first = run(small, tmp_path / "out", tmp_path / "cache")
    assert first["up_to_date"] == 0
    before = read_knowledge(tmp_path / "out")
    counts, loaded = _extract_in_a_new_process(small, tmp_path / "out", tmp_path / "cache")
    assert counts["up_to_date"] == 1 and counts["inferences"] == 0 and loaded == []
    assert counts["prompts"] == counts["cache_hits"] == first["prompts"]
    assert read_knowledge(tmp_path / "out").metadata == before.metadata  # untouched
    # changed data, another level set, or force: the job runs (all from the cache here)
    dataset = canonical.read_dataset(small)
    dataset.items.loc[dataset.items.index[0], "title"] = "Another Title (1999)"
    canonical.write_dataset(dataset, tmp_path / "edited")
    def up_to_date(levels=(USER, SCENARIO), **options):
        return run(tmp_path / "edited", tmp_path / "out", tmp_path / "cache", levels=levels, **options)["up_to_date"]
    assert up_to_date() == 0
    assert up_to_date(levels=LEVELS) == 0
    assert up_to_date(levels=LEVELS) == 1
    assert up_to_date(levels=LEVELS, force=True) == 0


def test_a_fully_cached_run_into_a_new_folder_writes_the_same_artifact_without_beam_tensorflow_or_tokenizer(
        small, tmp_path):
    first = run(small, tmp_path / "first", tmp_path / "cache")  # the Beam job embeds every prompt
    counts, loaded = _extract_in_a_new_process(small, tmp_path / "second", tmp_path / "cache")
    assert loaded == [] and counts["up_to_date"] == 0
    assert counts["inferences"] == 0 and counts["prompts"] == counts["cache_hits"] == first["prompts"]
    beam_made, cache_made = read_knowledge(tmp_path / "first"), read_knowledge(tmp_path / "second")
    for level in ("users", "scenarios"):
        made_by_beam, made_from_cache = getattr(beam_made, level), getattr(cache_made, level)
        assert made_by_beam.keys() == made_from_cache.keys()
        for key, record in made_by_beam.items():
            other = made_from_cache[key]
            assert (record.prompt, record.prompt_hash, record.text) == (other.prompt, other.prompt_hash, other.text)
            np.testing.assert_array_equal(record.vector, other.vector)


def test_damaged_cache_chunks_are_discarded_and_recomputed(small, tmp_path, caplog):
    run(small, tmp_path / "k1", tmp_path / "cache", batch_size=4)
    chunks = sorted((tmp_path / "cache").glob("*/*.npz"))
    assert len(chunks) >= 3
    truncated, flipped = chunks[0], chunks[1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the vectors: only a full read's CRC check sees it
    flipped.write_bytes(bytes(data))
    lost = sum(int(p.stem.rsplit("-n", 1)[1]) for p in (truncated, flipped))
    again = run(small, tmp_path / "k2", tmp_path / "cache", batch_size=4)
    assert again["discarded_cache_chunks"] == 2 and again["inferences"] == lost
    assert truncated.name in caplog.text and flipped.name in caplog.text
    one, two = read_knowledge(tmp_path / "k1"), read_knowledge(tmp_path / "k2")
    for user, record in one.users.items():
        np.testing.assert_allclose(two.users[user].vector, record.vector, atol=1e-5)


def test_new_users_cost_only_their_own_prompts(small, tmp_path):
    full = canonical.read_dataset(small)
    newcomers = ["2", "5"]
    assert set(newcomers) <= set(full.split("train")["user_id"])
    fewer = canonical.Dataset(full.interactions[~full.interactions["user_id"].isin(newcomers)], full.items,
                              full.scenarios, full.users, full.manifest)
    canonical.write_dataset(fewer, tmp_path / "fewer")
    run(tmp_path / "fewer", tmp_path / "k1", tmp_path / "cache")
    grown = run(small, tmp_path / "k2", tmp_path / "cache")
    # the newcomers, plus the scenario prompts whose train statistics they changed
    old, new = read_knowledge(tmp_path / "k1").scenarios, read_knowledge(tmp_path / "k2").scenarios
    changed = sum(old[s].prompt != new[s].prompt for s in new)
    assert changed >= 1
    assert grown["inferences"] == len(newcomers) + changed
    assert grown["cache_hits"] == grown["prompts"] - len(newcomers) - changed


def test_killed_run_resumes_where_it_stopped(small, tmp_path, monkeypatch):
    run(small, tmp_path / "out", tmp_path / "old-cache", batch_size=64)  # a previous good artifact
    before = read_knowledge(tmp_path / "out")
    (tmp_path / "out" / "marker").write_text("the previous artifact")
    original, calls = llm.Encoder.embed, []

    def failing_embed(self, texts):
        calls.append(len(texts))
        if len(calls) > 2:
            raise RuntimeError("injected failure in batch 3")
        return original(self, texts)

    monkeypatch.setattr(llm.Encoder, "embed", failing_embed)
    with pytest.raises(Exception, match="injected failure"):
        run(small, tmp_path / "out", tmp_path / "cache", batch_size=2, force=True)  # same inputs: forced
    finished = sum(calls[:2])
    assert finished == 4
    assert (tmp_path / "out" / "marker").exists()  # the old artifact is untouched, never half-written
    assert set(read_knowledge(tmp_path / "out").users) == set(before.users)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left over

    monkeypatch.setattr(llm.Encoder, "embed", original)
    resumed = run(small, tmp_path / "out", tmp_path / "cache", batch_size=2, force=True)
    assert resumed["inferences"] == unique_prompts(tmp_path / "out") - finished
    assert resumed["cache_hits"] == finished
    assert set(read_knowledge(tmp_path / "out").users) == set(before.users)


def test_cache_never_serves_another_template_or_model(small, tmp_path):
    run(small, tmp_path / "k", tmp_path / "cache")
    templates = tmp_path / "templates"
    shutil.copytree(DEFAULT_DIR, templates)
    user = templates / "user.tmpl"
    user.write_text(re.sub(r"(?m)^version: \d+", "version: 99", user.read_text()))  # same wording, new version
    changed = run(small, tmp_path / "k", tmp_path / "cache", templates=templates)
    assert changed["inferences"] == changed["prompts"] - SCENARIOS and changed["cache_hits"] == SCENARIOS
    shorter = run(small, tmp_path / "k", tmp_path / "cache", max_length=64)  # another model fingerprint
    # (64 tokens hold hardly any history: users share prompts, each distinct prompt is embedded once)
    assert shorter["cache_hits"] == 0 and shorter["inferences"] == unique_prompts(tmp_path / "k")
    assert read_knowledge(tmp_path / "k").metadata["model"]["max_length"] == 64


def test_causal_lm_generates_text_end_to_end(small, tmp_path):
    items = pd.read_csv(small / "items.csv", dtype=str).fillna("")
    corpus = [*items["title"], *items["categories"].str.replace("|", " "),
              *(p.read_text() for p in DEFAULT_DIR.glob("*.tmpl"))]
    model = build_tiny_gpt2(tmp_path / "gpt2", corpus)
    first = run(small, tmp_path / "k", tmp_path / "cache", model=str(model), max_new_tokens=6, batch_size=4)
    assert first["inferences"] == unique_prompts(tmp_path / "k") > 3
    knowledge = read_knowledge(tmp_path / "k")
    assert knowledge.dim == 32 and knowledge.metadata["model"]["backend"] == "causal-lm"
    texts = [r.text for r in knowledge.users.values()] + [r.text for r in knowledge.scenarios.values()]
    assert sum(bool(t) for t in texts) > len(texts) // 2
    again = run(small, tmp_path / "k2", tmp_path / "cache", model=str(model), max_new_tokens=6)
    assert again["inferences"] == 0
    assert read_knowledge(tmp_path / "k2").users["2"].text == knowledge.users["2"].text  # texts are cached too


def test_cli_extract_and_show(small, tmp_path, capsys):
    data, out, cache = small, tmp_path / "k", tmp_path / "cache"
    args = ["knowledge", "extract", "--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    assert cli.main(args) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    dataset = canonical.read_dataset(data)
    prompts = dataset.interactions["user_id"].nunique() + SCENARIOS + len(dataset.items) + 2  # + 2 cold-start rows
    assert f"{prompts} prompts, 0 cache hits, {prompts} inferences" in final and "prompts/s" in final
    assert cli.main(["knowledge", "show", "--data", str(data), "--user", "2", "--knowledge", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "Question:" in shown and "norm 1.0000" in shown
    assert cli.main(["knowledge", "show", "--data", str(data), "--scenario", "S2", "--cache-dir", str(cache)]) == 0
    assert "vector from the cache" in capsys.readouterr().out
    item = canonical.read_dataset(data).items["item_id"].iloc[0]
    assert cli.main(["knowledge", "show", "--data", str(data), "--item", item, "--knowledge", str(out)]) == 0
    assert "Categories:" in capsys.readouterr().out


def test_item_level_has_every_item_and_a_cold_start_row(small, tmp_path):
    first = run(small, tmp_path / "k1", tmp_path / "cache", levels=LEVELS)
    knowledge = read_knowledge(tmp_path / "k1")
    items = set(canonical.read_dataset(small).items["item_id"])
    assert set(knowledge.items) == items | {COLD_START_ID} and knowledge.metadata["levels"] == list(LEVELS)
    assert np.array_equal(knowledge.item_vector("never-seen"), knowledge.items[COLD_START_ID].vector)
    assert knowledge.item_matrix(["never-seen", next(iter(items))]).shape == (2, 384)
    users = canonical.read_dataset(small).interactions["user_id"].nunique()
    assert first["prompts"] == users + SCENARIOS + len(items) + 2
    # the user and scenario vectors are those of a run without the item level (same cache entries)
    without = run(small, tmp_path / "k2", tmp_path / "cache")
    assert without["inferences"] == 0 and not read_knowledge(tmp_path / "k2").has_items
    with pytest.raises(UserFacingError, match="no item level"):
        read_knowledge(tmp_path / "k2").item_vector("1")


def test_bad_input_is_reported_without_traceback(data, tmp_path, capsys):
    args = ["knowledge", "extract", "--data", str(data), "--out", str(tmp_path / "k"), "--model", "gpt-9"]
    assert cli.main(args) == 2
    assert "unknown model 'gpt-9'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    shutil.copytree(data, empty)
    header = (empty / "interactions.csv").read_text().splitlines()[0]
    (empty / "interactions.csv").write_text(header + "\n")
    with pytest.raises(UserFacingError, match="no data rows"):
        extract_knowledge(empty, tmp_path / "k", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "k").exists()


def test_default_local_run_embeds_in_a_onednn_worker_process(small, tmp_path):
    """Without Beam flags the job runs its inference in one worker process with oneDNN on (this
    process keeps it off), and the vectors equal those embedded in this process."""
    from llm4msr.pipeline.knowledge.beam_job import _onednn_enabled

    # This process reads its oneDNN switch first, as a trainer that loaded TensorFlow has: whether an
    # earlier test happened to load TensorFlow must not decide what this test sees. TensorFlow's own
    # default depends on the CPU (on with AVX-512 and similar, off otherwise).
    here_uses_onednn = _onednn_enabled()
    default = extract_knowledge(small, tmp_path / "worker", cache_dir=tmp_path / "cache-worker", progress=False)
    assert default["inferences"] == default["prompts"] > 0
    assert default["inferences_with_onednn"] == default["inferences"]
    in_memory = run(small, tmp_path / "here", tmp_path / "cache-here")
    assert in_memory["inferences_with_onednn"] == (in_memory["inferences"] if here_uses_onednn else 0)
    worker, here = read_knowledge(tmp_path / "worker"), read_knowledge(tmp_path / "here")
    for user, entry in here.users.items():
        # oneDNN's kernels sum in another order: equal up to float rounding (bfloat16 on CPUs that have it)
        assert np.dot(entry.vector, worker.users[user].vector) > 0.9999


def test_local_runs_get_an_inference_worker_unless_the_flags_choose():
    assert pipeline_args(None, pending=5) == LOCAL_INFERENCE_WORKER
    assert pipeline_args(None, pending=0) == ["--direct_running_mode=in_memory"]  # nothing to embed
    assert pipeline_args(["--direct_num_workers=2"], pending=5) == [
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    for chosen in (["--direct_running_mode=in_memory"], ["--runner", "DataflowRunner"]):
        assert pipeline_args(chosen, pending=5) == chosen
