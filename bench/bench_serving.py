"""Serving benchmark: requests of 1 user x N candidates through gRPC (`llm4msr serve` in its own
process, the client here) at several concurrencies, next to the same batches run in-process on
the SavedModel; then a version swap under load, counting failed requests.

    .venv/bin/python bench/bench_serving.py                      # the serving_fixtures model, dim 384
    .venv/bin/python bench/bench_serving.py --model-dir runs/serving/llm4msr --requests 1000

Aims: gRPC p99 at concurrency 1 within 2x the in-process p99; zero errors during the swap.
The CPU is shared: the report starts and ends with `uptime`, and the rows marked ⇄ alternate the
in-process and the gRPC call on every request so that both see the same background load.
"""
import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # serving_fixtures: the test model

import grpc  # noqa: E402
import tensorflow as tf  # noqa: E402

from llm4msr.serving.client import ServingClient, raw_request  # noqa: E402
from llm4msr.contract import RAW_SIGNATURE  # noqa: E402
from llm4msr.serving.layout import version_dirs  # noqa: E402
from llm4msr.serving.knowledge_store import PushedKnowledgeStore  # noqa: E402


def workload(store, items, candidates: int, count: int, seed: int = 0):
    """`count` (user, scenario, item ids) triples: random known users, scenarios and candidate sets."""
    rng = np.random.default_rng(seed)
    users, scenarios = sorted(store.users), sorted(store.scenarios)
    return [(users[rng.integers(len(users))], scenarios[rng.integers(len(scenarios))],
             list(rng.choice(items, candidates, replace=False))) for _ in range(count)]


def measure(call, requests, concurrency: int) -> dict:
    """Latency percentiles (ms) and throughput of `call(request)` at a fixed number of in-flight calls."""
    latencies, errors = [], []

    def timed(request):
        started = time.perf_counter()
        try:
            call(request)
        except grpc.RpcError as error:
            errors.append(error)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, requests))
    elapsed = time.perf_counter() - started
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99, "rps": len(requests) / elapsed, "errors": len(errors)}


def in_process_call(model_path, store, requests):
    """The signature function on the same batches, arrays built beforehand: the model's own cost."""
    function = tf.saved_model.load(str(model_path)).signatures[RAW_SIGNATURE]
    batches = {}
    for user, scenario, items in requests:
        proto = raw_request(user, scenario, items, store.user_vector(user), store.scenario_vector(scenario))
        batches[id(items)] = {name: tf.make_ndarray(t) for name, t in proto.inputs.items()}
    return lambda request: function(**batches[id(request[2])])["probability"].numpy()


def paired(first, second, requests) -> tuple:
    """Concurrency 1, the two calls alternating on every request, so that both see the same load
    from whatever else runs on the machine: (stats of first, stats of second)."""
    timings = ([], [])
    for request in requests:
        for call, latencies in zip((first, second), timings):
            started = time.perf_counter()
            call(request)
            latencies.append(time.perf_counter() - started)
    return tuple({**dict(zip(("p50", "p95", "p99"), np.percentile(np.array(t) * 1000, [50, 95, 99]))),
                  "rps": len(t) / sum(t), "errors": 0} for t in timings)


def start_server(model_dir, port: int, workers: int) -> subprocess.Popen:
    command = [sys.executable, "-c", "import sys; from llm4msr.cli import main; sys.exit(main())", "serve",
               "--model-dir", str(model_dir), "--port", str(port), "--workers", str(workers), "--poll-seconds", "0.5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return process


def publish(model_dir, kind: str) -> int:
    """A new version, published atomically (staged, then renamed) as a Pusher should: a copy of the
    newest one, or (`broken`) a copy whose variables are truncated, which must never be served."""
    model_dir = pathlib.Path(model_dir)
    newest = max(version_dirs(model_dir))
    staging = model_dir / f".bench-{newest + 1}"
    shutil.copytree(model_dir / str(newest), staging)
    if kind == "broken":
        for data in (staging / "variables").glob("variables.data-*"):
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    staging.rename(model_dir / str(newest + 1))
    return newest + 1


def traffic_with_pushes(model_dir, client, requests, concurrency: int, seconds: float, pushes) -> dict:
    """`concurrency` threads send requests for `seconds` while `pushes` [(at seconds, "copy" or
    "broken")] publish new versions; every failed request is counted (a good request must never fail)."""
    served, errors, latencies = set(), [], []
    stop = threading.Event()

    def traffic(offset):
        for index in range(offset, 10 ** 9, concurrency):
            if stop.is_set():
                return
            started = time.perf_counter()
            try:
                user, scenario, items = requests[index % len(requests)]
                proto = raw_request(user, scenario, items, client.store.user_vector(user),
                                    client.store.scenario_vector(scenario))
                served.add(client.predict(proto).model_spec.version.value)
            except grpc.RpcError as error:
                errors.append(error)
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    published = {}
    for at, kind in pushes:
        time.sleep(max(0.0, at - (time.perf_counter() - started)))
        published[publish(model_dir, kind)] = kind
    time.sleep(max(0.0, seconds - (time.perf_counter() - started)))
    stop.set()
    for thread in threads:
        thread.join()
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    status = _settled_status(client, list(published))
    return {"p50": p50, "p95": p95, "p99": p99, "rps": len(latencies) / (time.perf_counter() - started),
            "errors": len(errors), "versions": sorted(served), "requests": len(latencies),
            "published": {v: f"{kind}: {status.get(v, 'not listed')}" for v, kind in published.items()},
            "first_errors": sorted({f"{e.code().name}: {e.details()[:80]}" for e in errors[:20]})}


def _settled_status(client, versions, seconds: float = 60.0) -> dict:
    """version -> state once none of `versions` is still LOADING (a broken one ends as END)."""
    deadline = time.perf_counter() + seconds
    while True:
        status = {v["version"]: v["state"] for v in client.status()}
        if time.perf_counter() > deadline or all(status.get(v) != "LOADING" for v in versions):
            return status
        time.sleep(0.2)


def fixture_model(folder: pathlib.Path, dim: int) -> pathlib.Path:
    from serving_fixtures import push_model

    model_dir = folder / "llm4msr"
    model_dir.mkdir(parents=True)
    push_model(model_dir, 1, dim=dim)
    return model_dir


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def row(name, concurrency, r) -> str:
    return (f"| {name:<10} | {concurrency:>4} | {r['p50']:7.2f} | {r['p95']:7.2f} | {r['p99']:7.2f} "
            f"| {r['rps']:8.1f} | {r['errors']:>6} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a push folder (default: build the test model in a temp folder)")
    parser.add_argument("--dim", type=int, default=384, help="knowledge width of the test model")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--requests", type=int, default=500, help="requests per measurement")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--workers", type=int, default=16, help="server model workers")
    parser.add_argument("--load-clients", type=int, default=16, help="clients of the load test")
    parser.add_argument("--load-seconds", type=float, default=30.0,
                        help="load test length (a good version pushed at 1/3, a broken one at 2/3; 0: skip)")
    parser.add_argument("--load-only", action="store_true", help="skip the latency rows")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench_serving."))
    try:
        source = pathlib.Path(args.model_dir) if args.model_dir else fixture_model(scratch / "fixture", args.dim)
        model_dir = scratch / "served"
        shutil.copytree(source, model_dir)  # the swap adds a version: never touch the caller's folder
        store = PushedKnowledgeStore.latest(model_dir)
        items = _items(store, model_dir)
        requests = workload(store, items, args.candidates, args.requests)
        warm = requests[:20]

        print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        print(f"model {model_dir} version {store.version}, knowledge dim {store.dim}, "
              f"{args.candidates} candidates per request, {args.requests} requests per row\n")
        build = measure(lambda r: raw_request(r[0], r[1], r[2], store.user_vector(r[0]),
                                              store.scenario_vector(r[1])).SerializeToString(), requests, 1)
        print(f"(client-side request building, knowledge lookup to wire bytes: p50 {build['p50']:.2f} ms, "
              f"p99 {build['p99']:.2f} ms; included in the gRPC rows, not in the in-process ones)\n")
        call = in_process_call(model_dir / str(store.version), store, requests)
        print("| path       | conc |  p50 ms |  p95 ms |  p99 ms |    req/s | errors |")
        print("|------------|------|---------|---------|---------|----------|--------|")
        measure(call, warm, 1)
        for concurrency in levels:
            print(row("in-process", concurrency, measure(call, requests, concurrency)), flush=True)

        port = free_port()
        server = start_server(model_dir, port, args.workers)
        try:
            with ServingClient(f"127.0.0.1:{port}", store, timeout=30) as client:
                grpc_call = lambda r: client.score(*r)  # noqa: E731
                measure(grpc_call, warm, 4)
                if not args.load_only:
                    for concurrency in levels:
                        print(row("gRPC", concurrency, measure(grpc_call, requests, concurrency)), flush=True)
                    alone, remote = paired(call, grpc_call, requests)
                    print(row("in-proc ⇄", 1, alone))
                    print(row("gRPC ⇄", 1, remote) + f" p99 ratio {remote['p99'] / alone['p99']:.2f} (aim <= 2)")
                    swap = traffic_with_pushes(model_dir, client, requests, 4, 5.0, [(0.5, "copy")])
                    print(row("gRPC+swap", 4, swap) + f" {swap['requests']} requests, versions served: "
                          f"{swap['versions']}", flush=True)
                if args.load_seconds > 0:
                    seconds = args.load_seconds
                    load = traffic_with_pushes(model_dir, client, requests, args.load_clients, seconds,
                                               [(seconds / 3, "copy"), (2 * seconds / 3, "broken")])
                    print(row("load test", args.load_clients, load) + f" {load['requests']} requests in {seconds:g} s, "
                          f"versions served: {load['versions']}, pushed: {load['published']}")
                    for error in load["first_errors"]:
                        print(f"  failed: {error}")
        finally:
            server.terminate()
            server.wait(30)
        print(f"\nuptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _items(store, model_dir) -> list:
    """Candidate item ids: the model's item vocabulary (Transform asset), else the fixture's items."""
    vocabulary = model_dir / str(store.version) / "assets" / "item_id"
    if vocabulary.is_file():
        return [line for line in vocabulary.read_text().splitlines() if line]
    from serving_fixtures import ITEMS

    return list(ITEMS)


if __name__ == "__main__":
    main()
