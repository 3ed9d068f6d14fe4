"""Run dataflows as supervised processes, always with Bytewax recovery on.

Each flow runs as `python -m bytewax.run flows.<name>:flow` with its own
recovery store, so a restart resumes from the last snapshot instead of replaying
the input topics from the beginning. With `--processes N` a flow runs as an N
process Bytewax cluster on loopback.

Each flow is supervised on its own (issue 15): a flow that exits is restarted with
exponential backoff while the others keep running, within a restart budget
(`SHOPSTREAM_RESTART_LIMIT` restarts in `SHOPSTREAM_RESTART_WINDOW_S`). A flow over
budget is *down*: logged, reported as an `engine.flow_down` alert candidate, and
tried again only when the budget allows. `shopstream status` reads the runner's
status file (`<recovery dir>/runner-status.json`).
"""

from __future__ import annotations

import collections
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Callable

from shopstream.settings import ALERT_PRODUCERS, ALL_TOPICS, ConfigError, Settings
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
    "traffic": "flows.traffic:flow",
    "pricing": "flows.pricing:flow",
    "order_success": "flows.order_success:flow",
}

# How long a stopping flow may take to exit before it is killed.
STOP_GRACE_S = 10.0

STATUS_FILE = "runner-status.json"
FLOW_DOWN_RULE = "engine.flow_down"
# Lines of a flow's stderr kept to name its last error.
ERROR_TAIL_LINES = 50
STATUS_REFRESH_S = 5.0

log = logging.getLogger(__name__)


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
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=ERROR_TAIL_LINES))
    forwarder: threading.Thread | None = None

    def last_error(self) -> str | None:
        """The exception line of the last traceback the process printed, else its last line."""
        if self.forwarder is not None:
            self.forwarder.join(timeout=2)  # the pipe closes when the process is gone
        lines = [line.strip() for line in self.stderr_tail if line.strip()]
        for line in reversed(lines):
            if _EXCEPTION_LINE.match(line):
                return line[:500]
        return lines[-1][:500] if lines else None


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)?(Error|Exception|Interrupt|Exit)\b")


def _forward_stderr(proc: FlowProcess, source: IO[bytes]) -> None:
    """Copy a flow's stderr to where it went before (the log file or our stderr), keeping
    its last lines for `shopstream status`."""
    sink = proc.log_file if proc.log_file is not None else sys.stderr.buffer
    for raw in iter(source.readline, b""):
        proc.stderr_tail.append(raw.decode("utf-8", "replace"))
        try:
            sink.write(raw)
            sink.flush()
        except (ValueError, OSError):  # the log file was closed while the flow was stopping
            pass
    source.close()


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
                stderr=subprocess.PIPE,  # forwarded by a thread, which keeps the last error
                # Own session: a Ctrl-C in the terminal reaches the runner, which stops
                # the flows itself, instead of interrupting them mid-batch.
                start_new_session=True,
                preexec_fn=_stop_when_parent_dies,
            )
            proc = FlowProcess(flow_name, process_id, popen, log_file)
            proc.forwarder = threading.Thread(
                target=_forward_stderr, args=(proc, popen.stderr), name=f"stderr-{flow_name}-{process_id}", daemon=True
            )
            proc.forwarder.start()
            started.append(proc)
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
        if proc.forwarder is not None:
            proc.forwarder.join(timeout=2)
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


SD_FILE = "flows.json"


def sd_targets(settings: Settings, ports: dict[str, list[int]], flow_names: list[str]) -> list[dict]:
    """Prometheus file-based service discovery: one target group per flow process."""
    return [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"job": "shopstream", "flow": name, "process": str(p)}}
        for name in flow_names
        for p, port in enumerate(ports.get(name, []))
    ]


def write_sd_file(settings: Settings, ports: dict[str, list[int]], flow_names: list[str]) -> Path | None:
    """Write `<SHOPSTREAM_METRICS_SD_DIR>/flows.json` (atomically) for Prometheus'
    `file_sd_configs`; None when metrics ports are off."""
    if not ports:
        return None
    path = settings.metrics_sd_dir / SD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(sd_targets(settings, ports, flow_names), indent=1))
    temporary.replace(path)
    return path


def check_ports_free(ports: dict[str, list[int]]) -> None:
    """A flow whose metrics port is taken would fail to start: say so before starting any."""
    taken = []
    for name, flow_ports in ports.items():
        for port in flow_ports:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken.append(f"{port} ({name})")
    if taken:
        raise ConfigError(
            f"metrics port(s) in use: {', '.join(taken)}; set SHOPSTREAM_FLOW_API_PORT_BASE to a free "
            "range (flow i, process p serves on base + i * processes + p) or 0 to serve no metrics"
        )


def with_alert_producers(settings: Settings, flow_names: list[str]) -> Settings:
    """The alert router waits for the producer flows that run with it, unless
    SHOPSTREAM_ALERT_PRODUCERS says otherwise (README: alerts)."""
    if settings.alert_producers or "alerts" not in flow_names:
        return settings
    return replace(settings, alert_producers=",".join(p for p in ALERT_PRODUCERS if p in flow_names))


def start_flows(settings: Settings, flow_names: list[str], log_dir: Path | None = None) -> list[FlowProcess]:
    """Start several flows; if one cannot start, the ones already started are stopped."""
    settings = with_alert_producers(settings, flow_names)
    ports = api_ports(settings)
    processes: list[FlowProcess] = []
    try:
        for name in flow_names:
            processes += start_flow(settings, name, log_dir, api_ports=ports.get(name))
    except BaseException:
        stop_all(processes)
        raise
    return processes


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts, and a budget: at most `limit` restarts in `window_s`."""

    limit: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "RestartPolicy":
        return cls(settings.restart_limit, settings.restart_window_s, settings.restart_backoff_s,
                   settings.restart_backoff_max_s)


class FlowSupervision:
    """One flow's restart state: pure bookkeeping on a clock the caller passes in.

    States: `running`; `restarting` (exited, waiting out its backoff); `down` (exited more
    than `limit` times within `window_s`: waiting until the oldest of those exits leaves
    the window); `stopped` (the runner stopped it). A flow that has run for `backoff_max_s`
    is healthy again: its backoff starts over, and a `down` report is cleared.
    """

    def __init__(self, name: str, policy: RestartPolicy):
        self.name = name
        self.policy = policy
        self.state = "starting"
        self.restarts = 0
        self.exits: collections.deque[float] = collections.deque()
        self.last_exit_code: int | None = None
        self.last_error: str | None = None
        self.last_exit_at: float | None = None
        self.started_at: float | None = None
        self.next_start_at: float | None = None
        self.reported_down = False  # an engine.flow_down alert is firing for this flow
        self._backoff = policy.backoff_s

    def started(self, now: float) -> None:
        if self.state in ("restarting", "down"):
            self.restarts += 1
        self.state = "running"
        self.started_at = now
        self.next_start_at = None

    def exited(self, now: float, code: int | None, error: str | None) -> None:
        """Record an exit and decide when to start again; returns nothing, sets state."""
        if self.started_at is not None and now - self.started_at >= self.policy.backoff_max_s:
            self._backoff = self.policy.backoff_s  # it had been healthy: start the backoff over
        self.last_exit_code, self.last_error, self.last_exit_at = code, error, now
        self.exits.append(now)
        self._forget_old_exits(now)
        delay = self._backoff
        self._backoff = min(max(self._backoff * 2, self.policy.backoff_s), self.policy.backoff_max_s)
        if len(self.exits) > self.policy.limit:
            self.state = "down"
            # Over budget: the next restart waits until it fits in the window again.
            self.next_start_at = max(now + delay, self.exits[-self.policy.limit - 1] + self.policy.window_s)
        else:
            self.state = "restarting"
            self.next_start_at = now + delay

    def _forget_old_exits(self, now: float) -> None:
        while self.exits and self.exits[0] <= now - self.policy.window_s:
            self.exits.popleft()

    def due(self, now: float) -> bool:
        return self.state in ("restarting", "down") and self.next_start_at is not None and now >= self.next_start_at

    def healthy(self, now: float) -> bool:
        return self.state == "running" and self.started_at is not None and now - self.started_at >= self.policy.backoff_max_s

    def to_dict(self, wall_now: float, mono_now: float, pids: list[int]) -> dict:
        def wall(at: float | None) -> int | None:  # monotonic time -> epoch ms, for people
            return None if at is None else int((wall_now - (mono_now - at)) * 1000)

        self._forget_old_exits(mono_now)
        return {
            "state": self.state,
            "pids": pids,
            "restarts": self.restarts,
            "exits_in_window": len(self.exits),
            "last_exit_code": self.last_exit_code,
            "last_error": self.last_error,
            "last_exit_ts": wall(self.last_exit_at),
            "running_since_ts": wall(self.started_at) if self.state == "running" else None,
            "next_start_ts": wall(self.next_start_at),
        }


def status_path(settings: Settings) -> Path:
    return settings.recovery_dir / STATUS_FILE


def write_status(path: Path, status: dict) -> None:
    """Replace the status file atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status, indent=1))
    temporary.replace(path)


def read_status(settings: Settings) -> dict | None:
    try:
        return json.loads(status_path(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_status(status: dict | None, now_ms: int | None = None) -> tuple[str, int]:
    """The text of `shopstream status` and its exit code (0: a live runner with every flow running)."""
    if status is None:
        return "no runner status yet: start the flows with `shopstream run`", 1
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    live = status.get("running", False) and _pid_alive(status.get("runner_pid", -1))
    age_s = (now_ms - status.get("updated_ts", now_ms)) / 1000
    head = (f"runner pid {status.get('runner_pid')}: " +
            ("running" if live else "not running") + f" (status written {age_s:.0f} s ago)")
    rows = [("flow", "state", "restarts", "pids", "last error")]
    for name, flow in status.get("flows", {}).items():
        state = flow["state"] if live else ("stopped" if flow["state"] != "down" else "down")
        if flow["state"] in ("restarting", "down") and flow.get("next_start_ts") and live:
            state += f" (next try in {max(0, (flow['next_start_ts'] - now_ms) / 1000):.0f} s)"
        error = flow.get("last_error") or "-"
        if flow.get("last_exit_code") is not None:
            error = f"exit {flow['last_exit_code']}: {error}"
        rows.append((name, state, str(flow.get("restarts", 0)), ",".join(map(str, flow.get("pids", []))) or "-", error))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [head] + ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    healthy = live and all(flow["state"] == "running" for flow in status.get("flows", {}).values())
    return "\n".join(lines), 0 if healthy else 1


class _FlowDownReporter:
    """Produces `engine.flow_down` alert candidates; never blocks the runner (Kafka may be down too)."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._producer = None

    def report(self, flow: FlowSupervision, active: bool) -> None:
        from operators.alerts import AlertCandidate
        from state.alert_candidates import candidate_message

        if active:
            summary = (f"flow {flow.name} is crash-looping: {len(flow.exits)} exits in "
                       f"{flow.policy.window_s:.0f} s; last error: {flow.last_error or 'exit ' + str(flow.last_exit_code)}")
        else:
            summary = f"flow {flow.name} is running again"
        candidate = AlertCandidate(
            ts=int(time.time() * 1000), rule=FLOW_DOWN_RULE, key=flow.name, active=active, severity="critical",
            summary=summary[:500], value=float(len(flow.exits)), threshold=float(flow.policy.limit),
            runbook="shopstream status; the flow's log (shopstream run --log-dir); README: Supervision",
        )
        message = candidate_message(candidate)
        try:
            if self._producer is None:
                from confluent_kafka import Producer

                from state.kafka import producer_config

                self._producer = Producer(producer_config(self._settings))
            self._producer.produce(self._settings.topic(message.topic), message.value, message.key,
                                   on_delivery=self._on_delivery)
            self._producer.poll(0)
        except Exception as err:  # noqa: BLE001 - reporting must never take the runner down
            log.error("could not report flow %s down on Kafka: %s", flow.name, err)

    @staticmethod
    def _on_delivery(err, msg) -> None:
        if err is not None:
            log.error("an engine.flow_down alert candidate was not delivered: %s", err)

    def poll(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)


def run_flows(settings: Settings, names: list[str] | None, log_dir: Path | None = None,
              should_stop: Callable[[], bool] | None = None) -> int:
    """Run and supervise flows until interrupted; returns an exit code (0 on a requested stop)."""
    flow_names = resolve_flows(names)
    settings = with_alert_producers(settings, flow_names)
    preflight(settings)
    policy = RestartPolicy.from_settings(settings)
    ports = api_ports(settings)
    check_ports_free({name: ports[name] for name in flow_names if name in ports})
    supervision = {name: FlowSupervision(name, policy) for name in flow_names}
    running: dict[str, list[FlowProcess]] = {}
    reporter = _FlowDownReporter(settings)
    status_file = status_path(settings)
    stopping = False

    def _request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    def save_status(final: bool = False) -> None:
        mono, wall = time.monotonic(), time.time()
        write_status(status_file, {
            "runner_pid": os.getpid(),
            "running": not final,
            "updated_ts": int(wall * 1000),
            "flows": {
                name: flow.to_dict(wall, mono, [p.popen.pid for p in running.get(name, [])])
                for name, flow in supervision.items()
            },
        })

    def start(name: str) -> None:
        running[name] = start_flow(settings, name, log_dir, api_ports=ports.get(name))
        supervision[name].started(time.monotonic())

    # SIGTERM, or SIGHUP when the terminal goes away: stop the flows, then exit.
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for name in flow_names:
            start(name)
        print(
            f"running {', '.join(flow_names)} ({settings.processes} process(es) x "
            f"{settings.workers_per_process} worker(s) each); recovery in {settings.recovery_dir}; "
            f"`shopstream status` shows them",
            flush=True,
        )
        sd_file = write_sd_file(settings, ports, flow_names)
        if sd_file is not None:
            print(f"metrics: http://127.0.0.1:PORT/metrics per flow process, listed for Prometheus in {sd_file}",
                  flush=True)
        save_status()
        last_saved = time.monotonic()
        while not stopping and not (should_stop is not None and should_stop()):
            changed = _supervise_once(supervision, running, settings, start, reporter)
            reporter.poll()
            if changed or time.monotonic() - last_saved >= STATUS_REFRESH_S:
                save_status()
                last_saved = time.monotonic()
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_all([proc for procs in running.values() for proc in procs])
        running.clear()
        for flow in supervision.values():
            if flow.state == "running":
                flow.state = "stopped"
        save_status(final=True)
        reporter.close()
    return 0


def _supervise_once(supervision: dict[str, FlowSupervision], running: dict[str, list[FlowProcess]],
                    settings: Settings, start: Callable[[str], None], reporter: _FlowDownReporter) -> bool:
    """One look at every flow: note exits, restart the ones due, report crash loops. True if anything changed."""
    changed = False
    now = time.monotonic()
    for name, flow in supervision.items():
        processes = running.get(name)
        if processes:
            exited = [proc for proc in processes if proc.popen.poll() is not None]
            if exited:
                # A Bytewax cluster cannot go on without one of its processes: restart it whole.
                stop_all(processes)
                del running[name]
                first = exited[0]
                code = first.popen.returncode
                killed = code is not None and code < 0
                error = f"killed by {signal.Signals(-code).name}" if killed else first.last_error()
                flow.exited(now, code, error)
                changed = True
                if flow.state == "down":
                    log.error("flow %s is down: %d exits in %.0f s (budget %d); last error: %s; next try in %.0f s",
                              name, len(flow.exits), flow.policy.window_s, flow.policy.limit, error,
                              flow.next_start_at - now)
                    print(f"flow {name} is down (crash loop): {error}", file=sys.stderr, flush=True)
                    if not flow.reported_down:
                        reporter.report(flow, active=True)
                        flow.reported_down = True
                else:
                    log.warning("flow %s exited with %s (%s); restarting in %.0f s", name, code, error,
                                flow.next_start_at - now)
                    print(f"flow {name} (process {first.process_id}) exited with {code}; restarting it "
                          f"in {flow.next_start_at - now:.0f} s, the other flows keep running", file=sys.stderr, flush=True)
            elif flow.reported_down and flow.healthy(now):
                log.warning("flow %s is running again", name)
                reporter.report(flow, active=False)
                flow.reported_down = False
                changed = True
        elif flow.due(now):
            try:
                start(name)
            except Exception as err:  # noqa: BLE001 - a failed start counts as an exit
                flow.exited(time.monotonic(), None, f"could not start: {err}")
            changed = True
    return changed
