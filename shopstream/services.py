"""Local Kafka and Redis for development, the demo and the integration tests.

`up` starts a real Apache Kafka broker (KRaft, one node acting as broker and controller) from
the official Maven Central jars with the machine's Java 17, and a real `redis-server`, both on
loopback and detached from the caller, so they outlive the command that started them. `down`
stops only what `up` started, `status` reports both. No Docker is involved.

Ports: Kafka clients use the port of KAFKA_BOOTSTRAP_SERVERS (default 9092); the KRaft
controller listens on that port + 1 (9093), so that port must be free as well. Redis uses the
port of REDIS_URL (default 6379). Only loopback hosts are accepted (`localhost`, 127.x.x.x).

Files under `settings.services_dir` (default `.shopstream/services`):
    kafka/server.properties, log4j.properties   rendered on every start
    kafka/data/                                 KRaft metadata and topic data (kept by `down`)
    kafka/server.log                            broker log, WARN and above
    kafka/console.log                           JVM stdout/stderr (start-up failures land here)
    kafka/kafka.pid, redis/redis.pid            what `down` stops
    redis/redis.log                             Redis log (Redis keeps no data on disk)

The Kafka jars are resolved once per version into `settings.cache_dir / kafka-VERSION / lib`.
"""

from __future__ import annotations

import base64
import fcntl
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from redis.backoff import NoBackoff
from redis.retry import Retry

from shopstream.masking import mask_url
from shopstream.settings import ALL_TOPICS, Settings

log = logging.getLogger(__name__)

KAFKA_GROUP_ID = "org.apache.kafka"
KAFKA_ARTIFACT_ID = "kafka_2.13"
# Kafka logs through SLF4J; without a binding on the class path it logs nothing at all.
SLF4J_BINDING = ("org.slf4j", "slf4j-reload4j", "1.7.36")

MIN_JAVA_MAJOR = 17
CONTROLLER_PORT_OFFSET = 1
KAFKA_MIN_HEAP = "128m"

INSTALL_HINTS = {
    "java": "install Java 17: apt-get install openjdk-17-jre-headless",
    "mvn": "install Maven: apt-get install maven",
    "redis-server": "install Redis: apt-get install redis-server",
    "prometheus": "install Prometheus: apt-get install prometheus",
    "prometheus-alertmanager": "install Alertmanager: apt-get install prometheus-alertmanager",
}

# A loopback service that is up answers well within these.
PROBE_TIMEOUT_S = 1.0
KAFKA_PROBE_TIMEOUT_S = 3.0
POLL_INTERVAL_S = 0.25
# A SIGKILLed process is gone within milliseconds; this only bounds a stuck kernel.
KILL_WAIT_S = 5.0
STORAGE_FORMAT_TIMEOUT_S = 120.0
# Resolving ~46 MB of jars takes about a minute on a good line; a stuck proxy should not hang us.
MAVEN_TIMEOUT_S = 900.0
ADMIN_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30

RESOLVED_MARKER = "resolved"
LOCK_FILE = ".lock"


class ServiceError(RuntimeError):
    """A local service cannot be fetched, started or stopped; the message says how to fix it."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool  # a process started by `up` (per its pid file) is alive
    answering: bool  # something answers the service's protocol at `address`
    pid: int | None
    detail: str


# -- files ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaFiles:
    directory: Path

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def server_properties(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.directory / "log4j.properties"

    @property
    def server_log(self) -> Path:
        return self.directory / "server.log"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"


@dataclass(frozen=True)
class RedisFiles:
    directory: Path

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "redis.pid"


def services_root(settings: Settings) -> Path:
    # Absolute, because Kafka and Redis run with their own working directories.
    return settings.services_dir.expanduser().resolve()


def kafka_files(settings: Settings) -> KafkaFiles:
    return KafkaFiles(services_root(settings) / "kafka")


def redis_files(settings: Settings) -> RedisFiles:
    return RedisFiles(services_root(settings) / "redis")


# -- executables ---------------------------------------------------------------------------------


def find_executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"`{name}` was not found on PATH; {INSTALL_HINTS[name]}")
    return path


def find_java() -> str:
    java = find_executable("java")
    major = java_major_version(java)
    if major < MIN_JAVA_MAJOR:
        raise ServiceError(
            f"{java} is Java {major}, Kafka here needs Java {MIN_JAVA_MAJOR} or newer; "
            f"{INSTALL_HINTS['java']} and make it the default (update-alternatives --config java)"
        )
    return java


def java_major_version(java: str) -> int:
    # `java -version` writes to stderr, by long tradition.
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    return parse_java_major(result.stderr + result.stdout)


def parse_java_major(version_output: str) -> int:
    """17 from 'openjdk version "17.0.15"', 8 from the old style 'java version "1.8.0_382"'."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        raise ServiceError(f"cannot read the Java version from `java -version`: {version_output!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


# -- fetching Kafka ------------------------------------------------------------------------------


def kafka_home(settings: Settings) -> Path:
    return settings.cache_dir.expanduser().resolve() / f"kafka-{settings.kafka_version}"


def render_pom(kafka_version: str) -> str:
    """A POM whose only purpose is to let Maven resolve the broker and its runtime jars."""
    dependencies = [(KAFKA_GROUP_ID, KAFKA_ARTIFACT_ID, kafka_version), SLF4J_BINDING]
    rendered = "\n".join(
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>"
        for group, artifact, version in dependencies
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>shopstream</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>{kafka_version}</version>
  <packaging>pom</packaging>
  <dependencies>
{rendered}
  </dependencies>
</project>
"""


def fetch_kafka(settings: Settings) -> Path:
    """Resolve the Kafka broker jars from Maven Central once; return the directory holding them."""
    home = kafka_home(settings)
    lib_dir = home / "lib"
    if (home / RESOLVED_MARKER).exists():
        return lib_dir
    find_java()  # Maven itself needs Java; say so in Java's terms rather than Maven's
    mvn = find_executable("mvn")
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / LOCK_FILE):
        if (home / RESOLVED_MARKER).exists():  # another process resolved it while we waited
            return lib_dir
        shutil.rmtree(lib_dir, ignore_errors=True)  # leftovers of an interrupted attempt
        pom = home / "pom.xml"
        pom.write_text(render_pom(settings.kafka_version))
        log.info("resolving Kafka %s from Maven Central into %s", settings.kafka_version, lib_dir)
        _run_maven(mvn, pom, lib_dir, settings.kafka_version)
        broker_jar = lib_dir / f"{KAFKA_ARTIFACT_ID}-{settings.kafka_version}.jar"
        if not broker_jar.exists():
            raise ServiceError(
                f"Maven finished but {broker_jar} is missing; delete {home} and retry"
            )
        (home / RESOLVED_MARKER).write_text(
            f"{KAFKA_GROUP_ID}:{KAFKA_ARTIFACT_ID}:{settings.kafka_version}\n"
        )
    return lib_dir


def _run_maven(mvn: str, pom: Path, lib_dir: Path, kafka_version: str) -> None:
    command = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={lib_dir}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, cwd=pom.parent
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(
            f"Maven did not finish resolving Kafka within {MAVEN_TIMEOUT_S:.0f} s; "
            "check access to Maven Central (proxy settings go in ~/.m2/settings.xml)"
        ) from None
    if result.returncode != 0:
        raise ServiceError(
            f"Maven could not resolve {KAFKA_GROUP_ID}:{KAFKA_ARTIFACT_ID}:{kafka_version}; check "
            "access to Maven Central (proxy settings go in ~/.m2/settings.xml) and "
            f"SHOPSTREAM_KAFKA_VERSION. Maven said:\n{_tail(result.stdout + result.stderr)}"
        )


# -- rendering the services' configuration -----------------------------------------------------


def loopback_ip(host: str, setting: str) -> str:
    """The IPv4 address to listen on for `host`, which must name this machine's loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.version == 4 and address.is_loopback:
        return host
    raise ServiceError(
        f"{setting} points at {host!r}; `shopstream services` only starts services on this "
        "machine's loopback (localhost or 127.x.x.x). Point it there, or run the services at "
        f"{host!r} yourself."
    )


def controller_port(settings: Settings) -> int:
    return settings.kafka_host_port[1] + CONTROLLER_PORT_OFFSET


def server_properties(settings: Settings, files: KafkaFiles) -> dict[str, str]:
    host, port = settings.kafka_host_port
    ip = loopback_ip(host, "KAFKA_BOOTSTRAP_SERVERS")
    controller = f"{ip}:{controller_port(settings)}"
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{controller}",
        "listeners": f"PLAINTEXT://{ip}:{port},CONTROLLER://{controller}",
        # The IP rather than "localhost": clients then skip a failed attempt on ::1 first.
        "advertised.listeners": f"PLAINTEXT://{ip}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(files.data_dir),
        # One broker: every replicated thing has exactly one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Topics are created explicitly with the contract's partition count; a typo in a topic
        # name should fail, not silently create a new topic.
        "auto.create.topics.enable": "false",
        "num.partitions": str(settings.topic_partitions),
        # Tests and demos start consumers constantly; do not make each wait 3 s for a rebalance.
        "group.initial.rebalance.delay.ms": "0",
        # Light on a shared 2-core machine: few threads, a small cleaner buffer (128 MiB by
        # default, taken from our modest heap), few internal partitions (50 each by default).
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        # Development data: keep a day, in segments small enough for retention to free disk.
        "log.retention.hours": "24",
        "log.segment.bytes": str(128 * 1024 * 1024),
    }


def render_properties(properties: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def render_log4j_properties(server_log: Path) -> str:
    # A size-capped file: a broker left running for weeks must not fill the disk with warnings.
    return f"""log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={server_log}
log4j.appender.file.MaxFileSize=10MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


def kafka_command(java: str, lib_dir: Path, settings: Settings, files: KafkaFiles) -> list[str]:
    return [
        java,
        f"-Xmx{settings.kafka_heap}",
        f"-Xms{KAFKA_MIN_HEAP}",
        # What Kafka's own start script uses; short pauses keep test latencies steady.
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{files.log4j_properties}",
        "-cp",
        f"{lib_dir}/*",
        "kafka.Kafka",
        str(files.server_properties),
    ]


def storage_format_command(
    java: str, lib_dir: Path, files: KafkaFiles, cluster_id: str
) -> list[str]:
    return [
        java,
        f"-Dlog4j.configuration=file:{files.log4j_properties}",
        "-cp",
        f"{lib_dir}/*",
        "kafka.tools.StorageTool",
        "format",
        # With "=": a separate argument starting with "-" would be taken for an option.
        f"--cluster-id={cluster_id}",
        "-c",
        str(files.server_properties),
    ]


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID as 22 characters of URL-safe base64."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka's own generator skips these too: ids starting with "-" trip up command lines.
        if not cluster_id.startswith("-"):
            return cluster_id


def redis_command(redis_server: str, settings: Settings, files: RedisFiles) -> list[str]:
    host, port = settings.redis_host_port
    return [
        redis_server,
        "--port", str(port),
        "--bind", loopback_ip(host, "REDIS_URL"),
        "--dir", str(files.directory),
        # Scratch data for development: nothing is written to disk.
        "--save", "",
        "--appendonly", "no",
        # No --pidfile: our own pid file also records the start time, see `owned_pid`.
        "--daemonize", "no",
    ]  # fmt: skip


# -- probing -------------------------------------------------------------------------------------


def accepts_connections(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def redis_answers(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    host, port = settings.redis_host_port
    if settings.redis_url.startswith("redis") and not accepts_connections(host, port, timeout_s):
        return False  # fail fast instead of waiting out a connect timeout
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),  # a probe: one attempt, no redis-py retry back-off
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def kafka_answers(settings: Settings, timeout_s: float = KAFKA_PROBE_TIMEOUT_S) -> bool:
    host, port = settings.kafka_host_port
    if not accepts_connections(host, port, min(timeout_s, PROBE_TIMEOUT_S)):
        return False  # fail fast, and spare librdkafka's connection-refused noise
    try:
        metadata = _admin_client(settings).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _admin_client(settings: Settings) -> AdminClient:
    # librdkafka logs connection trouble to stderr; route it to logging instead, the caller
    # gets the failure as an exception anyway.
    return AdminClient({**settings.kafka_config(), "logger": log})


# -- processes -----------------------------------------------------------------------------------


def process_command_line(pid: int) -> str | None:
    """The process's command line, or None if there is no such live process.

    Zombies count as gone: their command line is empty.
    """
    proc = Path("/proc") / str(pid) / "cmdline"
    if Path("/proc/self").exists():
        try:
            raw = proc.read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True
    )
    return result.stdout.strip() or None


def process_start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot), or None where /proc cannot tell.

    Together with the pid this names one process for good: a reused pid starts later.
    """
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may itself contain spaces;
    # the start time is field 22 of the whole line, so index 19 after the name.
    return stat.rpartition(")")[2].split()[19]


def write_pid_file(pid_file: Path, pid: int) -> None:
    pid_file.write_text(f"{pid} {process_start_time(pid) or ''}\n")


def read_pid_file(pid_file: Path) -> tuple[int, str | None] | None:
    """(pid, start time) as written by `write_pid_file`, or None without a readable file."""
    try:
        fields = pid_file.read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def owned_pid(pid_file: Path, command_marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and is the one we started.

    A pid file can outlive its process and the pid be reused by anything; the start time and
    command line checks are what keep `down` from signalling a stranger.
    """
    recorded = read_pid_file(pid_file)
    if recorded is None:
        return None
    pid, start_time = recorded
    command_line = process_command_line(pid)
    if command_line is None or command_marker not in command_line:
        return None
    if start_time is not None and process_start_time(pid) != start_time:
        return None
    return pid


def spawn_detached(command: list[str], log_file: Path, cwd: Path) -> int:
    """Start `command` in the background, detached from us for good; return its pid.

    A throwaway `sh` backgrounds the command and exits, so the service is re-parented to init:
    it survives the CLI that started it, ignores the terminal's Ctrl-C, and never lingers as a
    zombie child of a process (a test session, say) that both starts and stops it.
    """
    # The log is truncated: its tail is what `up` shows when this start fails.
    launcher = 'log="$1"; shift; "$@" >"$log" 2>&1 </dev/null & echo $!'
    result = subprocess.run(
        ["sh", "-c", launcher, "sh", str(log_file), *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    return int(result.stdout.strip())


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Serialise processes working on the same directory (two `up`s, parallel test runs)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _tail_of_files(paths: tuple[Path, ...]) -> str:
    sections = []
    for path in paths:
        if path.exists() and path.stat().st_size > 0:
            sections.append(
                f"--- last lines of {path} ---\n{_tail(path.read_text(errors='replace'))}"
            )
    return "\n".join(sections) or "(the logs are empty)"


# -- the two services ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Service:
    name: str
    host: str
    port: int
    pid_file: Path
    logs: tuple[Path, ...]  # shown when the service fails to start
    command_marker: str  # a substring of the command line of the process we start
    answers: Callable[[], bool]
    start: Callable[[], None]  # launch it and write the pid file; `up` then waits for it

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return owned_pid(self.pid_file, self.command_marker)


def _kafka_service(settings: Settings) -> _Service:
    host, port = settings.kafka_host_port
    files = kafka_files(settings)
    return _Service(
        name="kafka",
        host=host,
        port=port,
        pid_file=files.pid_file,
        logs=(files.console_log, files.server_log),
        # The properties path is unique to this services_dir, so it names our broker exactly.
        command_marker=str(files.server_properties),
        answers=lambda: kafka_answers(settings),
        start=lambda: _start_kafka(settings, files),
    )


def _redis_service(settings: Settings) -> _Service:
    host, port = settings.redis_host_port
    files = redis_files(settings)
    return _Service(
        name="redis",
        host=host,
        port=port,
        pid_file=files.pid_file,
        logs=(files.log,),
        # Redis rewrites its command line to "redis-server ADDRESS", dropping our arguments;
        # the start time in the pid file is what tells our Redis from another.
        command_marker="redis-server",
        answers=lambda: redis_answers(settings),
        start=lambda: _start_redis(settings, files),
    )


def _services(settings: Settings) -> tuple[_Service, _Service]:
    return _kafka_service(settings), _redis_service(settings)


def _start_kafka(settings: Settings, files: KafkaFiles) -> None:
    _require_free_port(
        settings.kafka_host_port[0], controller_port(settings), "the Kafka controller"
    )
    java = find_java()
    lib_dir = fetch_kafka(settings)
    files.data_dir.mkdir(parents=True, exist_ok=True)
    files.server_properties.write_text(render_properties(server_properties(settings, files)))
    files.log4j_properties.write_text(render_log4j_properties(files.server_log))
    if not (files.data_dir / "meta.properties").exists():
        _format_storage(java, lib_dir, files)
    pid = spawn_detached(
        kafka_command(java, lib_dir, settings, files), files.console_log, files.directory
    )
    write_pid_file(files.pid_file, pid)
    log.info("started Kafka (pid %d) on %s:%d", pid, *settings.kafka_host_port)


def _format_storage(java: str, lib_dir: Path, files: KafkaFiles) -> None:
    """Prepare an empty KRaft log dir; done once, later starts reuse the data."""
    command = storage_format_command(java, lib_dir, files, new_cluster_id())
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=STORAGE_FORMAT_TIMEOUT_S
    )
    if result.returncode != 0:
        raise ServiceError(
            f"formatting the Kafka log dir {files.data_dir} failed; if it holds data from an "
            f"older setup, `shopstream services down --wipe` clears it. StorageTool said:\n"
            f"{_tail(result.stdout + result.stderr)}"
        )


def _start_redis(settings: Settings, files: RedisFiles) -> None:
    redis_server = find_executable("redis-server")
    files.directory.mkdir(parents=True, exist_ok=True)
    pid = spawn_detached(redis_command(redis_server, settings, files), files.log, files.directory)
    write_pid_file(files.pid_file, pid)
    log.info("started Redis (pid %d) on %s:%d", pid, *settings.redis_host_port)


def _require_free_port(host: str, port: int, what: str) -> None:
    if accepts_connections(host, port):
        raise ServiceError(
            f"port {port} on {host}, needed by {what}, is in use by another program; stop it "
            "or point the setting at a free port (`ss -ltnp` shows who holds it)"
        )


def _check_can_run_locally(settings: Settings) -> None:
    loopback_ip(settings.kafka_host_port[0], "KAFKA_BOOTSTRAP_SERVERS")
    loopback_ip(settings.redis_host_port[0], "REDIS_URL")
    if not settings.redis_url.startswith("redis://"):
        raise ServiceError(
            f"REDIS_URL is {mask_url(settings.redis_url)!r}; the local Redis speaks plain TCP: "
            "use redis://HOST:PORT/DB"
        )
    if settings.kafka_security:
        raise ServiceError(
            "the local Kafka broker speaks PLAINTEXT, but KAFKA_SECURITY_*/KAFKA_SASL_*/"
            f"KAFKA_SSL_* settings are set ({', '.join(sorted(settings.kafka_security))}); "
            "unset them for local use"
        )


# -- public API ----------------------------------------------------------------------------------


def up(settings: Settings, timeout_s: float = 120) -> None:
    """Start Kafka and Redis unless something answers at their addresses; then create topics.

    Idempotent. `timeout_s` bounds the wait for the services to answer once launched; fetching
    the Kafka jars the first time (about a minute) comes before it.
    """
    _check_can_run_locally(settings)
    with exclusive_lock(services_root(settings) / LOCK_FILE):
        launched = [service for service in _services(settings) if _ensure_launched(service)]
        deadline = time.monotonic() + timeout_s
        for service in launched:
            _wait_until_answering(service, deadline, timeout_s)
    create_topics(settings)


def _ensure_launched(service: _Service) -> bool:
    """Launch the service if needed; True if `up` must wait for it to answer."""
    if service.answers():
        return False
    if service.pid is not None:
        return True  # ours and still starting
    _require_free_port(service.host, service.port, service.name)
    service.pid_file.unlink(missing_ok=True)  # stale: its process is gone
    service.start()
    return True


def _exited(service: _Service, looks: int = 5, pause_s: float = 0.1) -> bool:
    """Whether the service's process is gone. One look can be wrong: while a process execs its
    program, /proc shows it with an empty command line for a moment, as it shows a zombie."""
    for _ in range(looks):
        if service.pid is not None:
            return False
        time.sleep(pause_s)
    return True


def _wait_until_answering(service: _Service, deadline: float, timeout_s: float) -> None:
    while not service.answers():
        if _exited(service):
            raise ServiceError(
                f"{service.name} exited while starting on {service.address}.\n"
                f"{_tail_of_files(service.logs)}"
            )
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{service.name} (pid {service.pid}) did not answer on {service.address} within "
                f"{timeout_s:.0f} s; it is left running for inspection (`shopstream services "
                f"down` stops it).\n{_tail_of_files(service.logs)}"
            )
        time.sleep(POLL_INTERVAL_S)


def create_topics(settings: Settings) -> None:
    """Create every contract topic with `settings.topic_partitions` partitions. Idempotent.

    A topic that exists with fewer partitions gets more; one with more is left alone (Kafka
    cannot remove partitions). The replication factor is the broker's default, 1 on the local
    broker, so the same call also suits a real cluster.
    """
    admin = _admin_client(settings)
    wanted = [settings.topic(name) for name in ALL_TOPICS]
    partitions = settings.topic_partitions
    existing = _partition_counts(admin, settings)
    missing = [NewTopic(name, num_partitions=partitions) for name in wanted if name not in existing]
    too_few = [
        NewPartitions(name, partitions)
        for name in wanted
        if name in existing and existing[name] < partitions
    ]
    if not missing and not too_few:
        return
    timeouts = {"operation_timeout": ADMIN_TIMEOUT_S, "request_timeout": ADMIN_TIMEOUT_S}
    failures: dict[str, str] = {}
    if missing:
        # Another process may have created a topic a moment ago; that is the outcome we want.
        failures |= _failed(
            admin.create_topics(missing, **timeouts), tolerated=KafkaError.TOPIC_ALREADY_EXISTS
        )
    if too_few:
        failures |= _failed(admin.create_partitions(too_few, **timeouts), tolerated=None)
    if failures:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(failures.items()))
        raise ServiceError(f"cannot create topics on {settings.kafka_bootstrap_servers}: {reasons}")
    _wait_until_visible(admin, settings, wanted)
    for topic in missing:
        log.info("created topic %s with %d partitions", topic.topic, partitions)
    for request in too_few:
        log.info(
            "raised topic %s from %d to %d partitions",
            request.topic, existing[request.topic], partitions,
        )  # fmt: skip


def delete_topics(settings: Settings) -> None:
    """Delete every contract topic under the settings' prefix and wait until they are gone.

    For throwaway namespaces (the demo, benchmarks); a missing topic is fine.
    """
    admin = _admin_client(settings)
    wanted = [settings.topic(name) for name in ALL_TOPICS]
    present = [name for name in wanted if name in _partition_counts(admin, settings)]
    if not present:
        return
    timeouts = {"operation_timeout": ADMIN_TIMEOUT_S, "request_timeout": ADMIN_TIMEOUT_S}
    failures = _failed(
        admin.delete_topics(present, **timeouts), tolerated=KafkaError.UNKNOWN_TOPIC_OR_PART
    )
    if failures:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(failures.items()))
        raise ServiceError(f"cannot delete topics on {settings.kafka_bootstrap_servers}: {reasons}")
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while any(name in _partition_counts(admin, settings) for name in present):
        if time.monotonic() > deadline:
            raise ServiceError(f"topics {', '.join(present)} still listed {ADMIN_TIMEOUT_S:.0f} s after deletion")
        time.sleep(POLL_INTERVAL_S)


def _partition_counts(admin: AdminClient, settings: Settings) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as error:
        raise ServiceError(
            f"cannot list topics on {settings.kafka_bootstrap_servers}: {error}; is Kafka "
            "running there (`shopstream services status`)?"
        ) from None
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _wait_until_visible(admin: AdminClient, settings: Settings, topics: list[str]) -> None:
    """Wait until the broker's metadata shows every topic with all its partitions.

    Admin requests complete once the controller has committed the change; the broker's
    metadata follows a moment later, and a consumer starting in that moment would miss the
    new partitions.
    """
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    while True:
        counts = _partition_counts(admin, settings)
        lagging = [name for name in topics if counts.get(name, 0) < settings.topic_partitions]
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise ServiceError(
                f"topics {', '.join(lagging)} were created but the broker's metadata does not "
                f"show their {settings.topic_partitions} partitions after {ADMIN_TIMEOUT_S:.0f} s"
            )
        time.sleep(POLL_INTERVAL_S)


def _failed(futures: Mapping[str, object], tolerated: int | None) -> dict[str, str]:
    failures = {}
    for name, future in futures.items():
        try:
            future.result(timeout=ADMIN_TIMEOUT_S + PROBE_TIMEOUT_S)
        except KafkaException as error:
            kafka_error = error.args[0]
            if tolerated is None or kafka_error.code() != tolerated:
                failures[name] = kafka_error.str()
        except TimeoutError:
            failures[name] = f"no answer within {ADMIN_TIMEOUT_S:.0f} s"
    return failures


def down(settings: Settings, timeout_s: float = 30, wipe: bool = False) -> None:
    """Stop what `up` started: SIGTERM, then SIGKILL after `timeout_s`. Idempotent.

    Only processes named by our pid files and still running our command are signalled, so a
    Kafka or Redis that `up` found already running is left alone. Data is kept for the next
    `up` unless `wipe` is set.
    """
    with exclusive_lock(services_root(settings) / LOCK_FILE):
        services = _services(settings)
        stopping = {service.name: service.pid for service in services}
        for pid in stopping.values():
            if pid is not None:
                _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for service in services:
            _stop(service, stopping[service.name], deadline)
        if wipe:
            _wipe(settings)


def _stop(service: _Service, pid: int | None, deadline: float) -> None:
    if pid is not None and not _wait_until_gone(service, deadline):
        log.warning("%s (pid %d) ignored SIGTERM; killing it", service.name, pid)
        _signal(pid, signal.SIGKILL)
        if not _wait_until_gone(service, time.monotonic() + KILL_WAIT_S):
            raise ServiceError(f"{service.name} (pid {pid}) survived SIGKILL; check `ps -p {pid}`")
    service.pid_file.unlink(missing_ok=True)


def _wait_until_gone(service: _Service, deadline: float) -> bool:
    while service.pid is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def _signal(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):  # it exited on its own in the meantime
        os.kill(pid, signum)


def _wipe(settings: Settings) -> None:
    # Only the directories we create: services_dir itself may be user-chosen and hold more.
    for directory in (kafka_files(settings).directory, redis_files(settings).directory):
        shutil.rmtree(directory, ignore_errors=True)


def restart_kafka(settings: Settings, timeout_s: float = 120) -> None:
    """Stop the local broker (SIGTERM, as `down` does) and start it again on the same data.

    For outage tests and drills: clients see the broker go away and come back on the same
    address. Only a broker `up` started is restarted."""
    with exclusive_lock(services_root(settings) / LOCK_FILE):
        service = _kafka_service(settings)
        pid = service.pid
        if pid is None:
            raise ServiceError(f"no Kafka started by shopstream runs on {service.address}")
        _signal(pid, signal.SIGTERM)
        _stop(service, pid, time.monotonic() + timeout_s)
        service.start()
        _wait_until_answering(service, time.monotonic() + timeout_s, timeout_s)


def redis_pid(settings: Settings) -> int | None:
    """The pid of the local Redis `up` started (e.g. to pause it with SIGSTOP in a drill)."""
    return _redis_service(settings).pid


def status(settings: Settings) -> dict[str, ServiceStatus]:
    return {service.name: _status_of(service) for service in _services(settings)}


def _status_of(service: _Service) -> ServiceStatus:
    pid = service.pid
    answering = service.answers()
    if pid is not None and answering:
        detail = f"started by shopstream; logs: {service.logs[-1]}"
    elif pid is not None:
        detail = f"started by shopstream, not answering yet; logs: {service.logs[-1]}"
    elif answering:
        detail = "answering, but not started by shopstream (`services down` leaves it alone)"
    elif accepts_connections(service.host, service.port):
        detail = "port in use by a program that does not answer as " + service.name
    else:
        detail = "not running"
    return ServiceStatus(service.name, service.address, pid is not None, answering, pid, detail)


def format_status(statuses: Mapping[str, ServiceStatus]) -> str:
    """One aligned line per service, for `shopstream services status`."""
    rows = [
        (
            entry.name,
            entry.address,
            "up" if entry.answering else ("starting" if entry.running else "down"),
            f"pid {entry.pid}" if entry.pid is not None else "-",
            entry.detail,
        )
        for entry in statuses.values()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
        for row in rows
    )


# -- Prometheus and Alertmanager (issue 20) ------------------------------------------------------
#
# The Debian packages' binaries, started by the same launcher as Kafka and Redis (detached,
# pid file with start time, stopped only if still ours), each in a directory of its own:
# config file, data and log there. Used by the integration tests and benchmarks; a production
# Prometheus or Alertmanager is the operator's own.


@dataclass(frozen=True)
class MonitoringService:
    """A Prometheus or Alertmanager started by `start_prometheus` / `start_alertmanager`."""

    name: str  # "prometheus" | "alertmanager"
    directory: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.directory / f"{self.name}.yml"

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return owned_pid(self.pid_file, str(self.config_file))


def http_ready(host: str, port: int, path: str = "/-/ready", timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Prometheus and Alertmanager answer 200 on /-/ready once they serve."""
    import http.client

    if not accepts_connections(host, port, timeout_s):
        return False
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


ALERTMANAGER_NULL_CONFIG = """route:
  receiver: "null"
  group_by: [alertname]
receivers:
  - name: "null"
"""


def alertmanager_command(binary: str, service: MonitoringService) -> list[str]:
    return [
        binary,
        f"--config.file={service.config_file}",
        f"--storage.path={service.directory / 'data'}",
        f"--web.listen-address={service.host}:{service.port}",
        # No HA gossip: it would listen on 9094 whatever the web port.
        "--cluster.listen-address=",
        "--log.level=warn",
    ]


def prometheus_command(binary: str, service: MonitoringService) -> list[str]:
    return [
        binary,
        f"--config.file={service.config_file}",
        f"--storage.tsdb.path={service.directory / 'data'}",
        f"--web.listen-address={service.host}:{service.port}",
        "--log.level=warn",
    ]


def _monitoring(service: MonitoringService, command: Callable[[str, MonitoringService], list[str]],
                binary_name: str) -> _Service:
    def start() -> None:
        binary = find_executable(binary_name)
        (service.directory / "data").mkdir(parents=True, exist_ok=True)
        pid = spawn_detached(command(binary, service), service.log, service.directory)
        write_pid_file(service.pid_file, pid)
        log.info("started %s (pid %d) on %s:%d", service.name, pid, service.host, service.port)

    return _Service(
        name=service.name,
        host=service.host,
        port=service.port,
        pid_file=service.pid_file,
        logs=(service.log,),
        command_marker=str(service.config_file),
        answers=lambda: http_ready(service.host, service.port),
        start=start,
    )


def _start_monitoring(service: MonitoringService, config_text: str, timeout_s: float,
                      command: Callable[[str, MonitoringService], list[str]], binary_name: str) -> MonitoringService:
    loopback_ip(service.host, service.name)
    service.directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(service.directory / LOCK_FILE):
        service.config_file.write_text(config_text)
        launcher = _monitoring(service, command, binary_name)
        if _ensure_launched(launcher):
            _wait_until_answering(launcher, time.monotonic() + timeout_s, timeout_s)
    return service


def start_alertmanager(directory: Path, port: int, config_text: str = ALERTMANAGER_NULL_CONFIG,
                       timeout_s: float = 60) -> MonitoringService:
    """Start Debian's `prometheus-alertmanager` on loopback `port`; returns once it is ready.
    Data stays in `directory`, so a stop and start keeps the alerts it holds (silences, too)."""
    service = MonitoringService("alertmanager", directory.resolve(), port)
    return _start_monitoring(service, config_text, timeout_s, alertmanager_command, "prometheus-alertmanager")


def start_prometheus(directory: Path, port: int, config_text: str, timeout_s: float = 60) -> MonitoringService:
    """Start Debian's `prometheus` on loopback `port` with `config_text` as prometheus.yml."""
    service = MonitoringService("prometheus", directory.resolve(), port)
    return _start_monitoring(service, config_text, timeout_s, prometheus_command, "prometheus")


def stop_monitoring(service: MonitoringService, timeout_s: float = 30) -> None:
    """SIGTERM (then SIGKILL) the service if it is still the one we started. Idempotent."""
    with exclusive_lock(service.directory / LOCK_FILE):
        launcher = _monitoring(service, alertmanager_command, service.name)
        pid = launcher.pid
        if pid is not None:
            _signal(pid, signal.SIGTERM)
        _stop(launcher, pid, time.monotonic() + timeout_s)
