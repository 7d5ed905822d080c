"""The PyTorch reference for `bench_trainer.py throughput --torch-python PY`: the same backbones at
the same shapes as `bench_trainer.py`'s synthetic workload, written as a PyTorch user would write them
fast, trained with `torch.optim.Adam`. Runs under a separate interpreter with torch (not part of this
project's environment):

    python3.10 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch numpy
    /tmp/torchref/bin/python bench/reference_torch_backbones.py --backbone ple --batch-size 4096

It reads commands on stdin, one per line, so that `bench_trainer.py` can alternate its own timing
windows with this process's (both processes live, one working at a time): `window SECONDS` trains for
about SECONDS and prints one JSON line `{"examples_per_s": x, "examples_per_cpu_s": y}`; `quit` ends.
On start it prints `{"ready": true, "params": n, "versions": {...}}` after a warm-up.

Shapes (`bench_trainer.py`'s `VOCABULARY`, `ModelConfig`'s defaults): embeddings of 16 for user (50k),
item (20k), category (21) and scenario (3) plus one dense scalar, so the backbone reads 65 features;
MLPs [128, 64], towers [32], MMoE 4 experts of 64, PLE 2 levels of 4 shared experts and 1 per
scenario (64 wide), STAR FCN [128, 64] and auxiliary net [32].
Per-scenario parameters (towers, gates, PLE's scenario experts) run for every example as one matmul
and the example's own scenario is gathered: on this CPU with 3 scenarios that is faster in PyTorch
than partitioning the batch for these narrow layers (shared_bottom 362k against 379k ex/s, PLE 111k
against 129k); STAR's wide layers partition the batch (see `StarLinear`). Batches are drawn from
a pool already in memory, so the reference pays no input pipeline (ours pays `tf.data`'s).
"""
import argparse
import json
import sys
import time

import torch
from torch import nn

VOCABULARY = {"user_id": 50_000, "item_id": 20_000, "category": 21, "scenario": 3}
EMBEDDING = 16
SCENARIOS = 3
POOL_ROWS = 1 << 17


def mlp(widths):
    layers = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


class ScenarioLinear(nn.Module):
    """One `[d, units]` kernel per scenario; every scenario's output for every example, the example's
    own gathered."""

    def __init__(self, fan_in, units):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(fan_in, SCENARIOS * units))
        nn.init.xavier_uniform_(self.kernel)
        self.bias = nn.Parameter(torch.zeros(SCENARIOS * units))
        self.units = units

    def kernels(self):
        return self.kernel

    def forward(self, x, scenario):
        out = torch.addmm(self.bias, x, self.kernels()).view(-1, SCENARIOS, self.units)
        return out[torch.arange(x.shape[0]), scenario]


class ScenarioTowers(nn.Module):
    def __init__(self, fan_in, units=32):
        super().__init__()
        self.hidden, self.logit = ScenarioLinear(fan_in, units), ScenarioLinear(units, 1)

    def forward(self, x, scenario):
        return self.logit(torch.relu(self.hidden(x, scenario)), scenario)


class DNN(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(mlp([width, 128, 64]), nn.Linear(64, 1))

    def forward(self, x, scenario):
        return self.net(x)


class SharedBottom(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.bottom, self.towers = mlp([width, 128, 64]), ScenarioTowers(64)

    def forward(self, x, scenario):
        return self.towers(self.bottom(x), scenario)


class Experts(nn.Module):
    """`count` one-layer ReLU experts as one GEMM: `[B, count, units]`."""

    def __init__(self, fan_in, count, units=64):
        super().__init__()
        self.linear, self.count, self.units = nn.Linear(fan_in, count * units), count, units

    def forward(self, x):
        return torch.relu(self.linear(x)).view(-1, self.count, self.units)


def mix(gate_logits, experts):
    """The gated sum of the experts (multiply and sum: ~10 % faster here than `bmm` for PLE)."""
    return (torch.softmax(gate_logits, dim=-1).unsqueeze(-1) * experts).sum(1)


class MMoE(nn.Module):
    def __init__(self, width, experts=4):
        super().__init__()
        self.experts, self.gates, self.towers = Experts(width, experts), ScenarioLinear(width, experts), ScenarioTowers(64)

    def forward(self, x, scenario):
        return self.towers(mix(self.gates(x, scenario), self.experts(x)), scenario)


class CGC(nn.Module):
    """4 shared experts on the shared stream, 1 expert per scenario on the own stream (the example's
    own scenario's gathered), a scenario gate and, except on the last level, a shared gate."""

    def __init__(self, width, last, shared=4, units=64):
        super().__init__()
        self.shared, self.specific = Experts(width, shared, units), Experts(width, SCENARIOS, units)
        self.scenario_gate = ScenarioLinear(width, shared + 1)
        self.shared_gate = None if last else nn.Linear(width, shared + 1)

    def forward(self, own, shared, scenario):
        specific = self.specific(own)[torch.arange(own.shape[0]), scenario].unsqueeze(1)
        experts = torch.cat([specific, self.shared(shared)], dim=1)
        next_own = mix(self.scenario_gate(own, scenario), experts)
        next_shared = next_own if self.shared_gate is None else mix(self.shared_gate(shared), experts)
        return next_own, next_shared


class PLE(nn.Module):
    def __init__(self, width, levels=2):
        super().__init__()
        self.levels = nn.ModuleList([CGC(width if i == 0 else 64, i == levels - 1) for i in range(levels)])
        self.towers = ScenarioTowers(64)

    def forward(self, x, scenario):
        own = shared = x
        for level in self.levels:
            own, shared = level(own, shared, scenario)
        return self.towers(own, scenario)


class StarLinear(ScenarioLinear):
    """STAR's star topology: scenario kernel `W * W_s`, bias `b_s` (ours adds a shared `b` too, which
    changes nothing a per-scenario bias cannot learn: 193 parameters in all)."""

    def __init__(self, fan_in, units):
        super().__init__(fan_in, units)
        nn.init.ones_(self.kernel)
        self.shared_kernel = nn.Parameter(torch.empty(fan_in, units))
        nn.init.xavier_uniform_(self.shared_kernel)

    def kernels(self):
        return self.kernel * self.shared_kernel.repeat(1, SCENARIOS)

    def forward(self, x, scenario):
        """Each scenario's rows through its own kernel only: STAR's layers are wide, so computing every
        scenario for every row costs more than partitioning (PyTorch here, batch 4096: STAR 186-230k
        ex/s partitioned against 150-157k; shared_bottom and PLE's narrow layers are the other way)."""
        kernels = self.kernels().view(x.shape[1], SCENARIOS, self.units)
        biases = self.bias.view(SCENARIOS, self.units)
        out = x.new_empty(x.shape[0], self.units)
        for s in range(SCENARIOS):
            rows = (scenario == s).nonzero(as_tuple=True)[0]
            out.index_copy_(0, rows, torch.addmm(biases[s], x.index_select(0, rows), kernels[:, s]))
        return out


class PartitionedNorm(nn.Module):
    """Batch normalisation with per-scenario batch statistics and shared x per-scenario scale/shift."""

    def __init__(self, width, momentum=0.01, eps=1e-3):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))
        self.scenario_gamma = nn.Parameter(torch.ones(SCENARIOS, width))
        self.scenario_beta = nn.Parameter(torch.zeros(SCENARIOS, width))
        self.register_buffer("moving_mean", torch.zeros(SCENARIOS, width))
        self.register_buffer("moving_var", torch.ones(SCENARIOS, width))
        self.momentum, self.eps = momentum, eps

    def forward(self, x, scenario):
        one_hot = nn.functional.one_hot(scenario, SCENARIOS).to(x.dtype)  # [B, S]
        count = one_hot.sum(0).clamp(min=1).unsqueeze(1)
        mean = one_hot.t() @ x / count
        var = (one_hot.t() @ (x * x) / count - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.moving_mean.lerp_(mean, self.momentum)
            self.moving_var.lerp_(var, self.momentum)
        normalised = (x - mean[scenario]) * torch.rsqrt(var[scenario] + self.eps)
        return normalised * (self.gamma * self.scenario_gamma[scenario]) + self.beta + self.scenario_beta[scenario]


class STAR(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = PartitionedNorm(width)
        self.fcn = nn.ModuleList([StarLinear(width, 128), StarLinear(128, 64)])
        self.logit = StarLinear(64, 1)
        self.auxiliary = nn.Sequential(mlp([width, 32]), nn.Linear(32, 1))

    def forward(self, x, scenario):
        h = self.norm(x, scenario)
        for layer in self.fcn:
            h = torch.relu(layer(h, scenario))
        return self.logit(h, scenario) + self.auxiliary(x)


BACKBONES = {"dnn": DNN, "shared_bottom": SharedBottom, "mmoe": MMoE, "ple": PLE, "star": STAR}


class Ranker(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.tables = nn.ModuleDict({name: nn.Embedding(size, EMBEDDING) for name, size in VOCABULARY.items()})
        self.backbone = BACKBONES[backbone](len(VOCABULARY) * EMBEDDING + 1)

    def forward(self, ids, year):
        x = torch.cat([self.tables[name](ids[name]) for name in VOCABULARY] + [year.unsqueeze(1)], dim=1)
        return self.backbone(x, ids["scenario"]).squeeze(1)


class Trainer:
    def __init__(self, backbone, batch_size):
        generator = torch.Generator().manual_seed(0)
        self.ids = {name: torch.randint(0, size, (POOL_ROWS,), generator=generator) for name, size in VOCABULARY.items()}
        self.year = torch.randn(POOL_ROWS, generator=generator)
        self.labels = torch.randint(0, 2, (POOL_ROWS,), generator=generator).float()
        self.model = Ranker(backbone)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batch_size, self.offset = batch_size, 0

    def step(self):
        rows = slice(self.offset, self.offset + self.batch_size)
        self.offset = (self.offset + self.batch_size) % (POOL_ROWS - self.batch_size)
        logits = self.model({name: column[rows] for name, column in self.ids.items()}, self.year[rows])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, self.labels[rows])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def window(self, seconds):
        started, cpu, steps = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - started < seconds:
            self.step()
            steps += 1
        examples = steps * self.batch_size
        return {"examples_per_s": examples / (time.perf_counter() - started),
                "examples_per_cpu_s": examples / (time.process_time() - cpu)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", required=True, choices=sorted(BACKBONES))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    trainer = Trainer(args.backbone, args.batch_size)
    for _ in range(8):
        trainer.step()
    params = sum(p.numel() for p in trainer.model.parameters())
    print(json.dumps({"ready": True, "params": params, "versions": {"torch": torch.__version__}}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["window"]:
            print(json.dumps(trainer.window(float(command[1]))), flush=True)
        elif command[:1] == ["quit"]:
            return


if __name__ == "__main__":
    main()
