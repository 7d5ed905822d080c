"""Trainer benchmarks.

    python bench/bench_trainer.py throughput [--batch-sizes 1024 4096] [--backbones ...]
        steady-state training examples/s (after warm-up, traces excluded) and parameter counts for
        every backbone with knowledge none and both, on synthetic in-memory data fed by tf.data
        (knowledge vectors gathered per batch, as `llm4msr train` does);
    python bench/bench_trainer.py auc --data /tmp/ml-small [--seed 0]
        `llm4msr train` test metrics for every backbone with knowledge=none on a prepared set
        (`llm4msr data prepare --out /tmp/ml-small`).

The machine load (`uptime`) is printed with the figures: other jobs share the cores.
"""
import argparse
import os
import sys
import time

import numpy as np

import llm4msr  # noqa: F401  (Keras 2 before TensorFlow loads)
import tensorflow as tf

from llm4msr.trainer.backbones import BACKBONES
from llm4msr.trainer.features import SCENARIO_KNOWLEDGE, USER_KNOWLEDGE, InputSpec
from llm4msr.trainer.model import ModelConfig, compile_ranking_model

VOCABULARY = {"user_id": 50_000, "item_id": 20_000, "category": 21, "scenario": 3}
KNOWLEDGE_DIM = 384  # all-MiniLM-L6-v2 width
ROWS = 1 << 17
MEASURE_SECONDS = 4.0


def load() -> str:
    return "load average %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count())


def synthetic_dataset(batch_size: int, knowledge: bool) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    features = {name: rng.integers(0, size, ROWS) for name, size in VOCABULARY.items()}
    features["year"] = rng.normal(size=ROWS).astype(np.float32)
    labels = rng.integers(0, 2, ROWS).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size, drop_remainder=True)
    data = data.cache().repeat()
    if knowledge:
        users = tf.constant(rng.normal(size=(VOCABULARY["user_id"], KNOWLEDGE_DIM)).astype(np.float32))
        scenarios = tf.constant(rng.normal(size=(VOCABULARY["scenario"], KNOWLEDGE_DIM)).astype(np.float32))

        def add_knowledge(features, label):
            return {**features, USER_KNOWLEDGE: tf.gather(users, features["user_id"]),
                    SCENARIO_KNOWLEDGE: tf.gather(scenarios, features["scenario"])}, label
        data = data.map(add_knowledge, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def throughput(backbone: str, knowledge: str, batch_size: int, steps_per_execution: int):
    """(examples per wall second, examples per CPU second of this process, parameters) of `fit` in
    steady state: the first calls trace and warm up. On a shared machine the CPU-time figure is the
    steadier one; a dedicated 2-core machine approaches 2x it when both cores are kept busy."""
    dim = KNOWLEDGE_DIM if knowledge != "none" else 0
    spec = InputSpec(VOCABULARY, ["year"], "scenario", dim, dim)
    ranking = compile_ranking_model(ModelConfig(backbone=backbone, knowledge=knowledge), spec,
                                    steps_per_execution=steps_per_execution)
    data = synthetic_dataset(batch_size, knowledge != "none")
    warm = 4 * steps_per_execution
    ranking.fit(data, steps_per_epoch=warm, epochs=1, verbose=0)  # trace
    started = time.perf_counter()
    ranking.fit(data, steps_per_epoch=warm, epochs=1, verbose=0)  # warm up, size the measurement
    per_step = (time.perf_counter() - started) / warm
    steps = max(warm, int(MEASURE_SECONDS / per_step) // steps_per_execution * steps_per_execution)
    started, cpu = time.perf_counter(), time.process_time()
    ranking.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    examples = steps * batch_size
    return (examples / (time.perf_counter() - started), examples / (time.process_time() - cpu),
            ranking.model.count_params())


def run_throughput(args) -> None:
    print(f"# training throughput, embedding width 16, knowledge width {KNOWLEDGE_DIM}, "
          f"steps_per_execution {args.steps_per_execution}; {load()}")
    largest = args.batch_sizes[-1]
    print(f"{'backbone':<14}{'knowledge':<10}{'params':>11}" + "".join(f"{f'ex/s@{b}':>13}" for b in args.batch_sizes)
          + f"{f'ex/cpu-s@{largest}':>17}{'time vs none':>14}")
    for backbone in args.backbones:
        cpu_rates = {}
        for knowledge in ("none", "both"):
            row = []
            for batch_size in args.batch_sizes:
                rate, cpu_rates[knowledge], params = throughput(backbone, knowledge, batch_size,
                                                                args.steps_per_execution)
                row.append(f"{rate:>13,.0f}")
            cost = cpu_rates["none"] / cpu_rates[knowledge]  # CPU time per example, relative to none
            print(f"{backbone:<14}{knowledge:<10}{params:>11,}" + "".join(row)
                  + f"{cpu_rates[knowledge]:>17,.0f}{cost:>13.2f}x", flush=True)
    print(f"# {load()}")


def run_auc(args) -> None:
    from llm4msr.trainer.fast import train

    print(f"# llm4msr train --knowledge none --seed {args.seed} on {args.data}; {load()}")
    results = [train(args.data, ModelConfig(backbone=b), seed=args.seed, epochs=args.epochs,
                     batch_size=args.batch_size, verbose=0) for b in args.backbones]
    scenarios = list(results[0]["test"]["scenarios"])
    print(f"{'backbone':<14}{'AUC':>8}{'gAUC':>8}{'logloss':>9}" + "".join(f"{'AUC ' + s:>9}" for s in scenarios)
          + f"{'epochs':>8}{'seconds':>9}")
    for result in results:
        overall = result["test"]["overall"]
        per = "".join(f"{result['test']['scenarios'][s]['auc']:>9.4f}" for s in scenarios)
        print(f"{result['backbone']:<14}{overall['auc']:>8.4f}{overall['gauc']:>8.4f}{overall['logloss']:>9.4f}"
              f"{per}{result['epochs']:>8}{result['train_seconds']:>9.1f}")
    print(f"# {load()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    speed = modes.add_parser("throughput")
    speed.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    speed.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    speed.add_argument("--steps-per-execution", type=int, default=4)
    speed.set_defaults(func=run_throughput)
    quality = modes.add_parser("auc")
    quality.add_argument("--data", required=True, help="canonical data set (llm4msr data prepare --out DIR)")
    quality.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--epochs", type=int, default=10)
    quality.add_argument("--batch-size", type=int, default=1024)
    quality.set_defaults(func=run_auc)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
