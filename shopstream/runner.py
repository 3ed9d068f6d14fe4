"""Run dataflows as supervised processes, always with Bytewax recovery on.

Each flow runs as `python -m bytewax.run flows.<name>:flow` with its own
recovery store, so a restart resumes from the last snapshot instead of replaying
the input topics from the beginning. With `--processes N` a flow runs as an N
process Bytewax cluster on loopback.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shopstream.settings import ALL_TOPICS, ConfigError, Settings
from state.flow_metrics import api_env

# Flow name -> Bytewax import string. Every flow module exposes `flow`.
FLOWS: dict[str, str] = {
    "intake": "flows.intake:flow",
    "stock": "flows.stock:flow",
    "funnel": "flows.funnel:flow",
    "alerts": "flows.alerts:flow",
    "coupons": "flows.coupons:flow",
    "fraud": "flows.fraud:flow",
    "churn": "flows.churn:flow",
}

# How long a stopping flow may take to exit before it is killed.
STOP_GRACE_S = 10.0


def resolve_flows(names: list[str] | None) -> list[str]:
    if not names:
        return list(FLOWS)
    unknown = [name for name in names if name not in FLOWS]
    if unknown:
        raise ConfigError(f"unknown flow(s) {', '.join(unknown)}; choose from: {', '.join(FLOWS)}")
    return names


def recovery_dir(settings: Settings, flow_name: str) -> Path:
    return settings.recovery_dir / flow_name


def prepare_recovery(settings: Settings, flow_name: str) -> Path:
    """Create the flow's recovery partitions once; later runs resume from them."""
    db_dir = recovery_dir(settings, flow_name)
    if not any(db_dir.glob("part-*.sqlite3")):
        db_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "bytewax.recovery", str(db_dir), str(settings.total_workers)],
            check=True,
            capture_output=True,
        )
    return db_dir


def flow_command(
    settings: Settings, flow_name: str, process_id: int = 0, addresses: list[str] | None = None
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "bytewax.run",
        FLOWS[flow_name],
        "-w",
        str(settings.workers_per_process),
        "-r",
        str(recovery_dir(settings, flow_name)),
        "-s",
        str(settings.snapshot_interval_s),
        "-b",
        str(settings.backup_interval_s),
    ]
    if addresses and len(addresses) > 1:
        command += ["-i", str(process_id), "-a", ";".join(addresses)]
    return command


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def preflight(settings: Settings) -> None:
    """Fail at start, with the fix, when Kafka, Redis or the topics are not there."""
    from confluent_kafka.admin import AdminClient

    from state.redis_store import connect

    try:
        metadata = AdminClient(settings.kafka_config()).list_topics(timeout=5)
    except Exception as err:  # librdkafka raises KafkaException with a transport reason
        raise ConfigError(
            f"Kafka at {settings.kafka_bootstrap_servers} is not reachable ({err}); "
            "start it with `shopstream services up` or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None
    missing = [
        settings.topic(name)
        for name in ALL_TOPICS
        if settings.topic(name) not in metadata.topics
    ]
    if missing:
        raise ConfigError(
            f"topics missing on {settings.kafka_bootstrap_servers}: {', '.join(missing)}; "
            "create them with `shopstream services topics`"
        )
    try:
        connect(settings).ping()
    except Exception as err:  # redis-py raises ConnectionError/AuthenticationError/...
        raise ConfigError(
            f"Redis at {settings.redis_url} is not reachable ({err}); "
            "start it with `shopstream services up` or set REDIS_URL"
        ) from None


@dataclass
class FlowProcess:
    flow_name: str
    process_id: int
    popen: subprocess.Popen
    log_file: IO[bytes] | None = None


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _stop_when_parent_dies() -> None:
    """Runs in the child before exec: the kernel sends it SIGTERM if its starter dies,
    so a killed runner, demo or test never leaves flows running unsupervised."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_flow(
    settings: Settings,
    flow_name: str,
    log_dir: Path | None = None,
    api_ports: list[int] | None = None,
) -> list[FlowProcess]:
    """Start one flow as `settings.processes` cooperating processes.

    With `api_ports` (one per process), each process serves its Prometheus metrics,
    consumer lag included, on its port.
    """
    prepare_recovery(settings, flow_name)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(settings.processes)]
    env = {**os.environ, **settings.to_env()}
    started: list[FlowProcess] = []
    try:
        for process_id in range(settings.processes):
            log_file = None
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                log_file = open(log_dir / f"{flow_name}-{process_id}.log", "ab")
            process_env = env if api_ports is None else {**env, **api_env(api_ports[process_id])}
            popen = subprocess.Popen(
                flow_command(settings, flow_name, process_id, addresses),
                env=process_env,
                stdout=log_file,
                stderr=subprocess.STDOUT if log_file else None,
                # Own session: a Ctrl-C in the terminal reaches the runner, which stops
                # the flows itself, instead of interrupting them mid-batch.
                start_new_session=True,
                preexec_fn=_stop_when_parent_dies,
            )
            started.append(FlowProcess(flow_name, process_id, popen, log_file))
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(processes: list[FlowProcess], grace_s: float = STOP_GRACE_S) -> None:
    # SIGTERM ends a flow at once. That is safe by design: state resumes from the
    # last snapshot and every output is idempotent, exactly as after a crash.
    for proc in processes:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in processes:
        try:
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
        if proc.log_file is not None:
            proc.log_file.close()


def api_ports(settings: Settings) -> dict[str, list[int]]:
    """Dataflow API port of every flow process when SHOPSTREAM_FLOW_API_PORT_BASE is set:
    flow i, process p serves on base + i * processes + p. The alerts flow reads lag there."""
    if settings.flow_api_port_base <= 0:
        return {}
    return {
        name: [settings.flow_api_port_base + index * settings.processes + p for p in range(settings.processes)]
        for index, name in enumerate(FLOWS)
    }


def start_flows(settings: Settings, flow_names: list[str], log_dir: Path | None = None) -> list[FlowProcess]:
    """Start several flows; if one cannot start, the ones already started are stopped."""
    ports = api_ports(settings)
    processes: list[FlowProcess] = []
    try:
        for name in flow_names:
            processes += start_flow(settings, name, log_dir, api_ports=ports.get(name))
    except BaseException:
        stop_all(processes)
        raise
    return processes


def run_flows(settings: Settings, names: list[str] | None, log_dir: Path | None = None) -> int:
    """Run flows until interrupted or until one fails; returns an exit code."""
    flow_names = resolve_flows(names)
    preflight(settings)
    processes = start_flows(settings, flow_names, log_dir)
    print(
        f"running {', '.join(flow_names)} ({settings.processes} process(es) x "
        f"{settings.workers_per_process} worker(s) each); recovery in {settings.recovery_dir}",
        flush=True,
    )
    stopping = False

    def _request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    # SIGTERM, or SIGHUP when the terminal goes away: stop the flows, then exit.
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while not stopping:
            for proc in processes:
                code = proc.popen.poll()
                if code is not None:
                    print(
                        f"flow {proc.flow_name} (process {proc.process_id}) exited with {code}; "
                        "stopping the others",
                        file=sys.stderr,
                    )
                    return code or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_all(processes)
    return 0
