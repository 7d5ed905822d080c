"""Backends: the MiniLM encoder equals sentence-transformers; a tiny GPT-2 runs generate-then-embed;
model resolution and fingerprints."""
import json
import pathlib
import shutil

import numpy as np
import pytest

from conftest import require_data
from llm4msr.pipeline.knowledge import llm


@pytest.mark.parametrize("precision, min_cosine", [("float32", 0.9999), ("bfloat16", 0.999)])
def test_encoder_equals_sentence_transformers_reference(precision, min_cosine):
    lines = require_data("reference/minilm_reference.jsonl").read_text().splitlines()
    references = [json.loads(line) for line in lines if line.strip()]
    spec = llm.resolve_model("minilm", precision=precision)
    assert (spec.backend, spec.max_length, spec.prompt_budget) == ("encoder", 256, 256)
    vectors, texts = llm.load_backend(spec).embed([r["text"] for r in references])
    expected = np.asarray([r["embedding"] for r in references], np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    cosine = np.sum(vectors * expected, axis=1)
    assert vectors.dtype == np.float32 and vectors.shape == (len(references), 384) and texts == [""] * len(references)
    assert cosine.min() >= min_cosine, list(zip([r["text"][:30] for r in references], cosine))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert any(r["tokens_untruncated"] > 256 for r in references)  # truncation is exercised


@pytest.mark.parametrize("precision, min_cosine", [("float32", 0.99999), ("bfloat16", 0.9999)])
def test_vectors_do_not_depend_on_batch_mates(precision, min_cosine):
    backend = llm.load_backend(llm.resolve_model("minilm", precision=precision))
    alone, _ = backend.embed(["short text"])
    together, _ = backend.embed(["short text", "a much longer text " * 30])
    assert np.dot(alone[0], together[0]) > min_cosine


def test_fingerprint_identifies_model_and_settings(tmp_path):
    spec = llm.resolve_model("minilm", precision="float32")
    assert llm.resolve_model("minilm", precision="float32").fingerprint == spec.fingerprint
    assert llm.resolve_model("minilm").precision == ("bfloat16" if llm.cpu_has_bfloat16() else "float32")
    assert llm.resolve_model("minilm", max_length=128, precision="float32").fingerprint != spec.fingerprint
    assert llm.resolve_model("minilm", precision="bfloat16").fingerprint != spec.fingerprint
    assert spec.fingerprint == llm.model_fingerprint(pathlib.Path(spec.folder), "encoder", 256, 0)  # float32: as before
    with pytest.raises(llm.ModelError, match="unknown precision 'int8'"):
        llm.resolve_model("minilm", precision="int8")
    copy = tmp_path / "copy"
    shutil.copytree(spec.folder, copy)
    assert llm.resolve_model(str(copy), precision="float32").fingerprint == spec.fingerprint  # content, not location
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    assert llm.resolve_model(str(copy), precision="float32").fingerprint != spec.fingerprint


@pytest.mark.parametrize("model, message", [
    ("nope", "unknown model 'nope'"),
    ("/no/such/folder", "not found"),
    ("llm4msr-test/no-such-model", "fetching it as a hub model failed"),
])
def test_bad_model_names(model, message):
    with pytest.raises(llm.ModelError, match=message):
        llm.resolve_model(model)


def test_model_folder_without_weights(tmp_path):
    shutil.copy(llm.model_folder("minilm") / "config.json", tmp_path / "config.json")
    with pytest.raises(llm.ModelError, match="has no weights"):
        llm.resolve_model(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(llm.ModelError, match="config.json is missing"):
        llm.resolve_model(str(tmp_path))


def test_generated_tokens_masked_after_first_eos():
    generated = np.array([[5, 6, 0, 0], [5, 0, 7, 0], [5, 6, 7, 8]])
    assert llm._until_first_eos(generated, 0).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_tiny_causal_lm_generates_and_embeds(tiny_gpt2):
    spec = llm.resolve_model(str(tiny_gpt2), max_new_tokens=6)
    assert spec.backend == "causal-lm" and spec.prompt_budget == spec.max_length - 6
    backend = llm.load_backend(spec)
    prompts = ["a user who liked action movies", "a user", "question what does the user prefer"]
    vectors, texts = backend.embed(prompts)
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert any(texts) and all(len(backend.tokenizer(t)["input_ids"]) <= 6 for t in texts)
    again, texts_again = backend.embed(prompts[::-1])  # greedy and left-padded: order does not matter
    assert texts_again[::-1] == texts and np.allclose(again[::-1], vectors, atol=1e-4)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def build_tiny_gpt2(folder, corpus=()):
    """A 2-layer GPT-2 with random weights and a word-level tokenizer trained here, offline, on
    `corpus` plus a few words (a vocabulary covering the prompts keeps [UNK] out of generations)."""
    import tensorflow as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, PreTrainedTokenizerFast, TFGPT2LMHeadModel

    corpus = [*corpus, "a user who liked action movies and disliked comedy", "question what does the user prefer",
              "scenario light family drama other nothing liked disliked recent history", "the of and in on"]
    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="<eos>")
    tokenizer.save_pretrained(folder)
    tf.random.set_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=96, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = TFGPT2LMHeadModel(config)
    model(model.dummy_inputs)
    model.save_pretrained(folder)
    return folder
