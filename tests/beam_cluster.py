"""A Beam cluster for tests: Beam's Python job service and an external SDK worker pool, each its own
process on a free 127.0.0.1 port. A pipeline run with the yielded options goes through
`PortableRunner`: submitted over the Job API, its code staged as artifacts, executed by SDK
workers in another process over the Fn API (what a Flink or Spark job server does)."""
import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator, List


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, log: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening on {port}:\n"
                               + open(log).read()[-2000:])
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s (see {log})")


def _stop(process: subprocess.Popen) -> None:
    """Ends the process group it leads (the pool's SDK workers included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(10)


def completed_jobs(log_dir) -> int:
    """Jobs the cluster's job service ran to the end (its log's own lines)."""
    with open(os.path.join(log_dir, "job_service.log")) as log:
        return sum("with state DONE" in line for line in log)


@contextlib.contextmanager
def portable_cluster(log_dir) -> Iterator[List[str]]:
    """Yields the Beam options of a job service and worker pool it started; stops both after."""
    os.makedirs(log_dir, exist_ok=True)
    # the pool starts its workers as `python -c ...` from PATH: this interpreter's, with the project
    environment = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    job_port, pool_port = _free_port(), _free_port()
    services = [("job_service", ["apache_beam.runners.portability.local_job_service_main", "--port", str(job_port),
                                 "--staging_dir", os.path.join(log_dir, "staging")], job_port),
                ("worker_pool", ["apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
                 pool_port)]
    processes = []
    try:
        for name, module_args, port in services:
            log = os.path.join(log_dir, f"{name}.log")
            with open(log, "w") as output:
                processes.append(subprocess.Popen([sys.executable, "-m", *module_args], stdout=output,
                                                  stderr=subprocess.STDOUT, env=environment, cwd=log_dir,
                                                  start_new_session=True))
            _wait_listening(port, processes[-1], log)
        yield ["--runner=PortableRunner", f"--job_endpoint=127.0.0.1:{job_port}", "--environment_type=EXTERNAL",
               f"--environment_config=127.0.0.1:{pool_port}", "--job_server_timeout=120"]
    finally:
        for process in reversed(processes):
            _stop(process)
