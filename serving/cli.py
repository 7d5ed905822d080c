"""`llm4msr serve` (the local TF-Serving-compatible server) and `llm4msr recommend` (a gRPC client)."""
import contextlib
import pathlib
import signal
import threading

from llm4msr.errors import UserFacingError
from llm4msr.contract import MODEL_NAME
from llm4msr.files import is_file, join, open_file
from llm4msr.serving.layout import DEFAULT_MAX_BATCH, DEFAULT_MODEL_DIR


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve pushed model versions over gRPC (TF Serving API)")
    serve.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="push folder: <version>/saved_model.pb")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server)")
    serve.add_argument("--port", type=int, default=8500)
    serve.add_argument("--model-name", default=MODEL_NAME)
    serve.add_argument("--num-versions", type=int, default=2, help="newest versions kept loaded")
    serve.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most rows in one request")
    serve.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    serve.add_argument("--workers", type=int, default=16, help="model calls running at once (default 16)")
    serve.add_argument("--max-concurrent-requests", type=int, default=64,
                       help="requests in flight at once, waiting ones included; more get RESOURCE_EXHAUSTED "
                            "(default 64)")
    serve.add_argument("--request-timeout", type=float, default=10.0,
                       help="seconds from a request's arrival to its answer, or the client's deadline if shorter; "
                            "later ones get DEADLINE_EXCEEDED (default 10)")
    serve.set_defaults(func=_serve)

    recommend = subparsers.add_parser("recommend", help="top-k items for a user in a scenario, over gRPC")
    recommend.add_argument("--user", help="user id (default: a sample user of the knowledge store)")
    recommend.add_argument("--scenario", default="all", help="scenario id, or all (default): one list per scenario")
    recommend.add_argument("--candidates", help="file of item ids, one per line (default: every item of --data)")
    recommend.add_argument("--data", help="canonical data set: titles (and candidates) from its items.csv")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--server", default="127.0.0.1:8500", help="host:port of TF Serving or `llm4msr serve`")
    recommend.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="push folder: the knowledge store")
    recommend.add_argument("--model-name", default=MODEL_NAME)
    recommend.add_argument("--timeout", type=float, default=10.0, help="deadline per request, seconds")
    recommend.add_argument("--embedded-server", action="store_true",
                           help="start the local server on --model-dir for this call (ignores --server)")
    recommend.set_defaults(func=_recommend)


def _serve(args) -> int:
    import logging

    from llm4msr.serving.server import Limits, ModelRegistry, make_server

    try:
        limits = Limits(args.max_concurrent_requests, args.request_timeout, args.workers)
    except ValueError as error:
        raise UserFacingError(f"llm4msr serve: {error}") from None
    if args.max_batch < 1 or args.num_versions < 1 or not args.poll_seconds > 0:
        raise UserFacingError("llm4msr serve: --max-batch and --num-versions must be at least 1 and --poll-seconds "
                              "positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not pathlib.Path(args.model_dir).is_dir():
        raise UserFacingError(f"model folder {args.model_dir} does not exist (run the pipeline, or pass --model-dir)")
    registry = ModelRegistry(args.model_dir, args.model_name, args.num_versions, args.max_batch,
                             args.poll_seconds).start()
    try:
        server, port = make_server(registry, args.host, args.port, limits)
    except OSError as error:
        registry.stop()
        raise UserFacingError(f"llm4msr serve: {error}") from None
    versions = sorted(registry.snapshot.servables) or "none yet (waiting for a push)"
    print(f"serving {args.model_name} versions {versions} from {args.model_dir} on {args.host}:{port}", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=5).wait()
    registry.stop()
    return 0


def _recommend(args) -> int:
    import grpc

    from llm4msr.serving.client import ServingClient
    from llm4msr.serving.knowledge_store import PushedKnowledgeStore

    if args.k < 1:
        raise UserFacingError(f"--k must be at least 1, got {args.k}")
    titles = _titles(args.data)
    listed = _candidates(args.candidates, titles)
    store = PushedKnowledgeStore.latest(args.model_dir)
    user = args.user or min(store.users)
    scenarios = sorted(store.scenarios) if args.scenario == "all" else [args.scenario]
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(_embedded(args.model_dir, args.model_name)) if args.embedded_server \
            else args.server
        client = stack.enter_context(ServingClient(target, store, args.model_name, timeout=args.timeout))
        for scenario in scenarios:
            candidates = _unseen_in_scenario(args.data, user, scenario, listed) if args.data else listed
            try:
                top = client.recommend(user, scenario, candidates, args.k)
            except grpc.RpcError as error:
                raise UserFacingError(f"{target}: {error.code().name}: {error.details()}") from None
            print(f"top {len(top)} of {len(candidates)} for user {user} in scenario {scenario} "
                  f"(model version {client.store.version}, {target}):")
            for rank, (item, score) in enumerate(top, 1):
                print(f"{rank:>3}  {score:.4f}  {item:>8}  {titles.get(item, '')}")
    return 0


@contextlib.contextmanager
def _embedded(model_dir, model_name):
    """The local server on a free 127.0.0.1 port for the duration of a `with` block."""
    from llm4msr.serving.server import ModelRegistry, make_server

    registry = ModelRegistry(model_dir, model_name)
    registry.poll()
    server, port = make_server(registry, port=0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _titles(data_dir) -> dict:
    if not data_dir:
        return {}
    import pandas as pd

    path = join(data_dir, "items.csv")
    if not is_file(path):
        raise UserFacingError(f"{path} is missing (--data takes a canonical data set folder)")
    with open_file(path) as handle:
        items = pd.read_csv(handle, dtype={"item_id": str}, usecols=["item_id", "title"], keep_default_na=False)
    return dict(zip(items["item_id"], items["title"]))


def _unseen_in_scenario(data_dir, user: str, scenario: str, candidates: list) -> list:
    """The candidates that occur in `scenario` in the data set (for genre scenarios: the scenario's
    items) and that the user has not interacted with in training."""
    import pandas as pd

    path = join(data_dir, "interactions.csv")
    if not is_file(path):  # items.csv alone: titles, but nothing to filter by
        return candidates
    with open_file(path) as handle:
        frame = pd.read_csv(handle, dtype=str, usecols=["user_id", "item_id", "scenario", "split"])
    in_scenario = set(frame.loc[frame["scenario"] == scenario, "item_id"])
    seen = set(frame.loc[(frame["user_id"] == user) & (frame["split"] == "train"), "item_id"])
    kept = [item for item in candidates if item in in_scenario and item not in seen]
    return kept or candidates


def _candidates(path, titles: dict) -> list:
    if path:
        try:
            lines = pathlib.Path(path).read_text().splitlines()  # "id" or "id,anything"; an item_id header is skipped
        except (OSError, UnicodeDecodeError) as error:
            raise UserFacingError(f"--candidates {path}: cannot read it ({type(error).__name__}: "
                                  f"{getattr(error, 'strerror', None) or error})") from None
        candidates = [line.split(",")[0].strip() for line in lines if line.strip()]
        candidates = [c for c in candidates if c != "item_id"]
    else:
        candidates = list(titles)
    if not candidates:
        raise UserFacingError("no candidates: pass --candidates FILE (item ids, one per line) or --data DIR")
    return candidates
