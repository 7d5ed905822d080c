"""The PyTorch reference for bench_knowledge.py: sentence-transformers encoding the same prompts
with the same model folder, 2 threads, sorted by length (what `encode` does), model load excluded,
tokenisation included. Runs under a separate interpreter that has torch and sentence-transformers
(not part of this project's environment):

    python3.11 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/torchref/bin/python bench/reference_sentence_transformers.py PROMPTS.json --batch-size 16

PROMPTS.json holds {"folder": model folder, "texts": [...], "max_length": 256}; prints one JSON line:
{"batch": 16, "prompts": n, "tokens": n, "seconds": s, "tokens_per_s": x, "versions": {...}}.
"""
import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import sentence_transformers
    import torch

    torch.set_num_threads(args.threads)
    job = json.load(open(args.prompts))
    model = sentence_transformers.SentenceTransformer(job["folder"], device="cpu")
    model.max_seq_length = job["max_length"]
    texts = job["texts"]
    encoded = model.tokenizer(texts, truncation=True, max_length=job["max_length"])
    tokens = sum(len(ids) for ids in encoded["input_ids"])
    model.encode(texts[:2 * args.batch_size], batch_size=args.batch_size)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    print(json.dumps({"batch": args.batch_size, "prompts": len(texts), "tokens": tokens, "seconds": seconds,
                      "tokens_per_s": tokens / seconds,
                      "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__}}))


if __name__ == "__main__":
    main()
