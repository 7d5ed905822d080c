"""Trainer benchmarks.

    python bench/bench_trainer.py throughput [--batch-sizes 1024 4096] [--backbones ...] [--mode all]
                                             [--knowledge-width 384]
        steady-state training examples/s (median of 7 windows after warm-up, traces excluded) and
        parameter counts for every backbone with knowledge none and MODE (default both), at the
        knowledge width the model sees (default 32, the default reduction; 384: MiniLM's), on synthetic in-memory
        data fed by tf.data (knowledge vectors gathered per batch, as `llm4msr train` does; every
        example's user is drawn from 50,000, so every user row is projected: the worst case);
    python bench/bench_trainer.py throughput --data /tmp/ml-small --knowledge-dir /tmp/ml-small-knowledge
                                             [--knowledge-reduction 0]
        the same on a real data set and its extracted knowledge (normalised in Transform and reduced to 32 unless
        --knowledge-reduction says otherwise), through `llm4msr train`'s own input
        pipeline (its features, vocabularies, user distribution and shuffled train split);
    python bench/bench_trainer.py reference --torch-python /tmp/torchref/bin/python [--batch-size 4096]
        each backbone (knowledge none, synthetic data) against the same backbone in PyTorch
        (`reference_torch_backbones.py`, run by that interpreter), in alternating windows: both
        processes live, one training at a time; prints both examples/s and the median per-pair ratio;
    python bench/bench_trainer.py auc --data /tmp/ml-small [--seed 0]
        `llm4msr train` test metrics for every backbone with knowledge=none on a prepared set
        (`llm4msr data prepare --out /tmp/ml-small`).
    python bench/bench_trainer.py optimizer [--vocabularies 10000 1000000 10000000]
        the train step time of an embedding model (a user table of each vocabulary size, a 20k-row
        item table, an MLP; batch 4096, ids uniform) with `LazyAdam` and with Keras' Adam (whose
        sparse path decays and moves every row), in alternating windows;
    python bench/bench_trainer.py optimizer-auc --data /tmp/ml-small [--seeds 0 1 2]
        eval and test AUC of every backbone (knowledge none) trained with `LazyAdam` and with Keras'
        Adam, seed by seed, and the paired difference.

The machine load (`uptime`) is printed with the figures: other jobs share the cores.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

import llm4msr  # noqa: F401  (Keras 2 before TensorFlow loads)
import tensorflow as tf

from llm4msr.contract import ITEM_KNOWLEDGE, KNOWLEDGE_REDUCTION, SCENARIO_KNOWLEDGE, USER_KNOWLEDGE
from llm4msr.trainer.backbones import BACKBONES
from llm4msr.trainer.features import InputSpec
from llm4msr.trainer.model import ModelConfig, compile_ranking_model

VOCABULARY = {"user_id": 50_000, "item_id": 20_000, "category": 21, "scenario": 3}
KNOWLEDGE_DIM = 384  # all-MiniLM-L6-v2 width
ROWS = 1 << 17
WINDOW_SECONDS = 1.5
WINDOWS = 7


def load() -> str:
    return "load average %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count())


class SyntheticWorkload:
    """In-memory random features; every example's user drawn uniformly from 50,000."""
    name = "synthetic"

    def __init__(self, width: int = KNOWLEDGE_REDUCTION):  # the width the model sees by default
        self.width = width

    def spec(self, knowledge: bool) -> InputSpec:
        dim = self.width if knowledge else 0
        return InputSpec(VOCABULARY, ["year"], "scenario", dim, dim, dim)

    def dataset(self, batch_size: int, knowledge: bool) -> tf.data.Dataset:
        return synthetic_dataset(batch_size, self.width if knowledge else 0)


class RealWorkload:
    """A canonical data set's train split through `llm4msr train`'s input pipeline (shuffled, repeated)."""

    def __init__(self, data_dir, knowledge_dir, knowledge_reduction: int = KNOWLEDGE_REDUCTION):
        from llm4msr.pipeline.data.canonical import read_dataset
        from llm4msr.pipeline.knowledge.artifact import read_knowledge
        from llm4msr.trainer.fast import ExampleEncoder

        self.name = str(data_dir)
        dataset = read_dataset(data_dir)
        self.encoders = {False: ExampleEncoder(dataset),
                         True: ExampleEncoder(dataset, read_knowledge(knowledge_dir), knowledge_reduction)}
        self.train = {knowledge: encoder.encode(dataset, "train") for knowledge, encoder in self.encoders.items()}

    def spec(self, knowledge: bool) -> InputSpec:
        return self.encoders[knowledge].input_spec()

    def dataset(self, batch_size: int, knowledge: bool) -> tf.data.Dataset:
        return self.encoders[knowledge].tf_dataset(self.train[knowledge], batch_size, shuffle_seed=0).repeat()


def synthetic_dataset(batch_size: int, width: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    features = {name: rng.integers(0, size, ROWS) for name, size in VOCABULARY.items()}
    features["year"] = rng.normal(size=ROWS).astype(np.float32)
    labels = rng.integers(0, 2, ROWS).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size, drop_remainder=True)
    data = data.cache().repeat()
    if width:
        tables = {name: (column, tf.constant(rng.normal(size=(VOCABULARY[column], width)).astype(np.float32)))
                  for name, column in ((USER_KNOWLEDGE, "user_id"), (SCENARIO_KNOWLEDGE, "scenario"),
                                       (ITEM_KNOWLEDGE, "item_id"))}

        def add_knowledge(features, label):
            return {**features, **{name: tf.gather(table, features[column])
                                   for name, (column, table) in tables.items()}}, label
        data = data.map(add_knowledge, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


class TrainLoop:
    """One backbone x knowledge mode x batch size, compiled and warmed up: the data iterator and the
    train function are made once, as in one long `fit` epoch; traces and warm-up are not timed."""

    def __init__(self, workload, backbone: str, knowledge: str, batch_size: int, steps_per_execution: int):
        self.ranking = compile_ranking_model(ModelConfig(backbone=backbone, knowledge=knowledge),
                                             workload.spec(knowledge != "none"),
                                             steps_per_execution=steps_per_execution)
        self.batches = iter(workload.dataset(batch_size, knowledge != "none"))
        self.train = self.ranking.make_train_function()
        self.examples_per_call = steps_per_execution * batch_size
        self.run(4)
        started = time.perf_counter()
        self.run(4)
        self.calls = max(2, int(WINDOW_SECONDS / ((time.perf_counter() - started) / 4)))

    def run(self, calls: int):
        for _ in range(calls):
            self.train(self.batches)["loss"].numpy()

    def window(self):
        """(examples per wall second, examples per CPU second of this process) over one window."""
        started, cpu = time.perf_counter(), time.process_time()
        self.run(self.calls)
        examples = self.calls * self.examples_per_call
        return examples / (time.perf_counter() - started), examples / (time.process_time() - cpu)


def paired_throughput(workload, backbone: str, batch_size: int, steps_per_execution: int, mode: str = "both"):
    """knowledge none and `mode`, timed in alternating windows in one process, so a change in the
    machine's speed (large here: other tenants) hits both alike. Returns, per mode, the median
    examples/s, examples per CPU-s and parameters, and the median of the per-pair time ratios."""
    loops = {name: TrainLoop(workload, backbone, name, batch_size, steps_per_execution) for name in ("none", mode)}
    windows = {name: [] for name in loops}
    for _ in range(WINDOWS):
        for name, loop in loops.items():
            windows[name].append(loop.window())
    ratios = [none[0] / other[0] for none, other in zip(windows["none"], windows[mode])]
    rates = {name: (float(np.median([w[0] for w in ws])), float(np.median([w[1] for w in ws])),
                    loops[name].ranking.model.count_params()) for name, ws in windows.items()}
    return rates, float(np.median(ratios))


def run_throughput(args) -> None:
    if bool(args.data) != bool(args.knowledge_dir):
        sys.exit("--data and --knowledge-dir go together (a real data set needs its knowledge)")
    workload = (RealWorkload(args.data, args.knowledge_dir, args.knowledge_reduction) if args.data
                else SyntheticWorkload(args.knowledge_width))
    print(f"# training throughput on {workload.name} data, embedding width 16, "
          f"knowledge width {workload.spec(True).user_knowledge_dim}, "
          f"steps_per_execution {args.steps_per_execution}, median of {WINDOWS} alternating windows; {load()}")
    print(f"{'backbone':<14}{'batch':>6}{'knowledge':>10}{'params':>11}{'ex/s':>10}{'ex/cpu-s':>10}{'time vs none':>14}")
    for backbone in args.backbones:
        for batch_size in args.batch_sizes:
            rates, ratio = paired_throughput(workload, backbone, batch_size, args.steps_per_execution, args.mode)
            for mode, (rate, cpu_rate, params) in rates.items():
                cost = f"{ratio:>13.2f}x" if mode != "none" else f"{1:>13.2f}x"
                print(f"{backbone:<14}{batch_size:>6}{mode:>10}{params:>11,}{rate:>10,.0f}{cpu_rate:>10,.0f}{cost}",
                      flush=True)
    print(f"# {load()}")


class TorchReference:
    """`reference_torch_backbones.py` in its own interpreter, trained one window at a time on command."""

    def __init__(self, python: str, backbone: str, batch_size: int):
        script = pathlib.Path(__file__).with_name("reference_torch_backbones.py")
        if not os.access(python, os.X_OK):
            sys.exit(f"--torch-python {python}: not an executable interpreter (see {script.name} for the set-up)")
        self.process = subprocess.Popen([python, str(script), "--backbone", backbone, "--batch-size", str(batch_size)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self._answer()
        self.params, self.versions = ready["params"], ready["versions"]

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"the PyTorch reference ended (exit {self.process.wait()}); see its error above")
        return json.loads(line)

    def window(self):
        self.process.stdin.write(f"window {WINDOW_SECONDS}\n")
        self.process.stdin.flush()
        answer = self._answer()
        return answer["examples_per_s"], answer["examples_per_cpu_s"]

    def close(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait()


def _after_pause(window):
    """Both runtimes' worker threads spin for a moment after their work: let the other's stop first."""
    time.sleep(0.3)
    return window()


def run_reference(args) -> None:
    print(f"# training throughput against PyTorch (reference_torch_backbones.py), synthetic data, knowledge none, "
          f"batch {args.batch_size}, median of {WINDOWS} alternating windows; {load()}")
    print(f"{'backbone':<14}{'params':>11}{'torch params':>13}{'ex/s':>10}{'torch ex/s':>12}{'ex/s vs torch':>15}")
    for backbone in args.backbones:
        reference = TorchReference(args.torch_python, backbone, args.batch_size)
        ours = TrainLoop(SyntheticWorkload(), backbone, "none", args.batch_size, args.steps_per_execution)
        pairs = []
        for _ in range(WINDOWS):
            pairs.append((_after_pause(ours.window)[0], _after_pause(reference.window)[0]))
        reference.close()
        ratio = float(np.median([mine / theirs for mine, theirs in pairs]))
        rate, reference_rate = (float(np.median(column)) for column in zip(*pairs))
        print(f"{backbone:<14}{ours.ranking.model.count_params():>11,}{reference.params:>13,}{rate:>10,.0f}"
              f"{reference_rate:>12,.0f}{ratio:>14.2f}x", flush=True)
    print(f"# {load()}; PyTorch {reference.versions['torch']}")


def run_auc(args) -> None:
    from llm4msr.trainer.fast import train
    from llm4msr.trainer.training import TrainConfig

    print(f"# llm4msr train --knowledge none --seed {args.seed} on {args.data}; {load()}")
    training = TrainConfig(seed=args.seed, epochs=args.epochs, batch_size=args.batch_size)
    results = [train(args.data, ModelConfig(backbone=b), training=training, verbose=0) for b in args.backbones]
    scenarios = list(results[0]["test"]["scenarios"])
    print(f"{'backbone':<14}{'AUC':>8}{'gAUC':>8}{'logloss':>9}" + "".join(f"{'AUC ' + s:>9}" for s in scenarios)
          + f"{'epochs':>8}{'seconds':>9}")
    for result in results:
        overall = result["test"]["overall"]
        per = "".join(f"{result['test']['scenarios'][s]['auc']:>9.4f}" for s in scenarios)
        print(f"{result['backbone']:<14}{overall['auc']:>8.4f}{overall['gauc']:>8.4f}{overall['logloss']:>9.4f}"
              f"{per}{result['epochs']:>8}{result['train_seconds']:>9.1f}")
    print(f"# {load()}")


class EmbeddingStep:
    """One compiled train step of a user table [vocabulary, 16] + item table [20k, 16] + MLP."""

    def __init__(self, vocabulary: int, optimizer, batch_size: int = 4096):
        rng = np.random.default_rng(0)
        self.users = tf.constant(rng.integers(0, vocabulary, size=(16, batch_size)), tf.int64)
        self.items = tf.constant(rng.integers(0, 20_000, size=(16, batch_size)), tf.int64)
        self.labels = tf.constant(rng.integers(0, 2, size=(16, batch_size, 1)), tf.float32)
        self.user_table = tf.keras.layers.Embedding(vocabulary, 16)
        self.item_table = tf.keras.layers.Embedding(20_000, 16)
        self.mlp = tf.keras.Sequential([tf.keras.layers.Dense(64, "relu"), tf.keras.layers.Dense(1)])
        self.mlp(self.embed(0))
        self.variables = [*self.user_table.trainable_variables, *self.item_table.trainable_variables,
                          *self.mlp.trainable_variables]
        self.optimizer = optimizer
        self.optimizer.build(self.variables)
        self.step = tf.function(self._step)
        self.run(3)

    def embed(self, i):
        return tf.concat([self.user_table(self.users[i]), self.item_table(self.items[i])], axis=1)

    def _step(self, i):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(
                self.labels[i], self.mlp(self.embed(i)), from_logits=True))
        self.optimizer.apply_gradients(zip(tape.gradient(loss, self.variables), self.variables))
        return loss

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` steps."""
        started = time.perf_counter()
        for i in range(steps):
            self.step(tf.constant(i % 16)).numpy()
        return (time.perf_counter() - started) / steps


def run_optimizer(args) -> None:
    from llm4msr.trainer.optimizer import LazyAdam

    print(f"# train step ms, embedding 16, batch 4096, median of {WINDOWS} alternating windows; {load()}")
    print(f"{'user vocabulary':>16}{'LazyAdam':>10}{'Keras Adam':>12}{'Keras / Lazy':>14}")
    for vocabulary in args.vocabularies:
        steps = {"lazy": EmbeddingStep(vocabulary, LazyAdam(1e-3)),
                 "keras": EmbeddingStep(vocabulary, tf.keras.optimizers.Adam(1e-3))}
        calls = {name: max(3, int(WINDOW_SECONDS / step.run(3))) for name, step in steps.items()}
        windows = {name: [] for name in steps}
        for _ in range(WINDOWS):
            for name, step in steps.items():
                windows[name].append(step.run(calls[name]))
        ratio = np.median([k / l for k, l in zip(windows["keras"], windows["lazy"])])
        lazy, keras = (1e3 * float(np.median(windows[name])) for name in ("lazy", "keras"))
        print(f"{vocabulary:>16,}{lazy:>10.2f}{keras:>12.2f}{ratio:>13.2f}x", flush=True)
        del steps
    print(f"# {load()}")


def run_optimizer_auc(args) -> None:
    import llm4msr.trainer.model as model_module
    from llm4msr.trainer.fast import train
    from llm4msr.trainer.optimizer import LazyAdam
    from llm4msr.trainer.training import TrainConfig

    optimizers = {"LazyAdam": LazyAdam, "Keras Adam": tf.keras.optimizers.Adam}
    print(f"# llm4msr train --knowledge none on {args.data}, AUC per optimizer; {load()}")
    print(f"{'backbone':<14}{'seed':>5}" + "".join(f"{'eval ' + n:>17}{'test ' + n:>17}" for n in optimizers)
          + f"{'test lazy-keras':>16}")
    differences = []
    for backbone in args.backbones:
        for seed in args.seeds:
            aucs = []
            for optimizer in optimizers.values():
                model_module.LazyAdam = optimizer  # the optimizer compile_ranking_model makes
                result = train(args.data, ModelConfig(backbone=backbone), training=TrainConfig(seed=seed), verbose=0)
                aucs += [result["eval"]["overall"]["auc"], result["test"]["overall"]["auc"]]
            model_module.LazyAdam = LazyAdam
            differences.append(aucs[1] - aucs[3])
            print(f"{backbone:<14}{seed:>5}" + "".join(f"{a:>17.4f}" for a in aucs) + f"{differences[-1]:>+16.4f}",
                  flush=True)
    mean, sd = float(np.mean(differences)), float(np.std(differences, ddof=1))
    print(f"# test AUC LazyAdam - Keras Adam: mean {mean:+.4f}, sd {sd:.4f}, "
          f"standard error {sd / np.sqrt(len(differences)):.4f} over {len(differences)} pairs; {load()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    speed = modes.add_parser("throughput")
    speed.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    speed.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    speed.add_argument("--steps-per-execution", type=int, default=4)
    speed.add_argument("--data", help="a prepared data set (llm4msr data prepare --out DIR) instead of synthetic data")
    speed.add_argument("--knowledge-dir", help="its knowledge (llm4msr knowledge extract --out DIR)")
    speed.add_argument("--mode", default="both", help="the knowledge mode timed against none (both, all, ...)")
    speed.add_argument("--knowledge-width", type=int, default=KNOWLEDGE_REDUCTION,
                       help=f"synthetic data: the knowledge width the model sees (default {KNOWLEDGE_REDUCTION}, the "
                            f"product's reduction; {KNOWLEDGE_DIM}: MiniLM's)")
    speed.add_argument("--knowledge-reduction", type=int, default=KNOWLEDGE_REDUCTION,
                       help=f"real data: Transform reduction width (default {KNOWLEDGE_REDUCTION}, the product's; "
                            f"0: the LLM's width)")
    speed.set_defaults(func=run_throughput)
    versus = modes.add_parser("reference")
    versus.add_argument("--torch-python", required=True, help="an interpreter with torch (reference_torch_backbones.py)")
    versus.add_argument("--batch-size", type=int, default=4096)
    versus.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    versus.add_argument("--steps-per-execution", type=int, default=4)
    versus.set_defaults(func=run_reference)
    quality = modes.add_parser("auc")
    quality.add_argument("--data", required=True, help="canonical data set (llm4msr data prepare --out DIR)")
    quality.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--epochs", type=int, default=10)
    quality.add_argument("--batch-size", type=int, default=1024)
    quality.set_defaults(func=run_auc)
    steps = modes.add_parser("optimizer")
    steps.add_argument("--vocabularies", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    steps.set_defaults(func=run_optimizer)
    paired_auc = modes.add_parser("optimizer-auc")
    paired_auc.add_argument("--data", required=True, help="canonical data set (llm4msr data prepare --out DIR)")
    paired_auc.add_argument("--backbones", nargs="+", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    paired_auc.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    paired_auc.set_defaults(func=run_optimizer_auc)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
