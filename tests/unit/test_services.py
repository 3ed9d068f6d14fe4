"""The local services launcher's pure parts: rendered configuration, discovery errors, status."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopstream import services
from shopstream.services import ServiceError, ServiceStatus
from shopstream.settings import Settings
from tests.integration.ports import free_port


def make_settings(
    tmp_path: Path,
    kafka: str = "127.0.0.1:29092",
    redis_url: str = "redis://127.0.0.1:29379/0",
    **overrides,
) -> Settings:
    return Settings.from_env(
        {},
        kafka_bootstrap_servers=kafka,
        redis_url=redis_url,
        services_dir=tmp_path / "services",
        cache_dir=tmp_path / "cache",
        **overrides,
    )


def parse_properties(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def fake_java(bin_dir: Path, version: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2022-01-18' >&2\n")
    java.chmod(0o755)


# -- Kafka configuration -------------------------------------------------------------------------


def test_server_properties_listen_on_the_client_port_with_the_controller_on_the_next(tmp_path):
    settings = make_settings(tmp_path, kafka="127.0.0.1:29092")
    files = services.kafka_files(settings)

    properties = parse_properties(
        services.render_properties(services.server_properties(settings, files))
    )

    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert properties["process.roles"] == "broker,controller"
    assert properties["node.id"] == "1"
    assert properties["log.dirs"] == str((tmp_path / "services" / "kafka" / "data").resolve())


def test_server_properties_suit_a_single_node_without_auto_created_topics(tmp_path):
    settings = make_settings(tmp_path, partitions=6)

    properties = services.server_properties(settings, services.kafka_files(settings))

    assert properties["offsets.topic.replication.factor"] == "1"
    assert properties["transaction.state.log.replication.factor"] == "1"
    assert properties["transaction.state.log.min.isr"] == "1"
    assert properties["group.initial.rebalance.delay.ms"] == "0"
    assert properties["auto.create.topics.enable"] == "false"
    assert properties["num.partitions"] == "6"


def test_localhost_listens_on_the_ipv4_loopback(tmp_path):
    settings = make_settings(tmp_path, kafka="localhost:9092")

    properties = services.server_properties(settings, services.kafka_files(settings))

    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"


@pytest.mark.parametrize("host", ["kafka", "10.0.0.5", "0.0.0.0"])
def test_a_host_other_than_loopback_is_refused(tmp_path, host):
    settings = make_settings(tmp_path, kafka=f"{host}:9092")

    with pytest.raises(ServiceError, match="loopback"):
        services.server_properties(settings, services.kafka_files(settings))


def test_log4j_writes_warnings_and_worse_to_the_server_log(tmp_path):
    server_log = tmp_path / "server.log"

    properties = parse_properties(services.render_log4j_properties(server_log))

    assert properties["log4j.rootLogger"] == "WARN, file"
    assert properties["log4j.appender.file.File"] == str(server_log)


def test_kafka_runs_with_the_configured_heap_log4j_and_cached_jars(tmp_path):
    settings = make_settings(tmp_path, kafka_heap="384m")
    files = services.kafka_files(settings)
    lib_dir = tmp_path / "lib"

    command = services.kafka_command("java", lib_dir, settings, files)

    assert "-Xmx384m" in command
    assert f"-Dlog4j.configuration=file:{files.log4j_properties}" in command
    assert command[command.index("-cp") + 1] == f"{lib_dir}/*"
    assert command[-2:] == ["kafka.Kafka", str(files.server_properties)]


def test_storage_format_passes_the_cluster_id_glued_to_its_option(tmp_path):
    settings = make_settings(tmp_path)
    cluster_id = "-starts-with-a-dash-xx"

    command = services.storage_format_command(
        "java", tmp_path, services.kafka_files(settings), cluster_id
    )

    assert f"--cluster-id={cluster_id}" in command
    assert cluster_id not in command  # never as a separate argument


def test_cluster_ids_are_kafka_uuids_that_never_start_with_a_dash():
    cluster_ids = [services.new_cluster_id() for _ in range(500)]

    assert all(len(cluster_id) == 22 for cluster_id in cluster_ids)
    assert not any(cluster_id.startswith("-") for cluster_id in cluster_ids)
    assert len(set(cluster_ids)) == len(cluster_ids)


def test_the_pom_asks_for_the_broker_and_a_logging_binding():
    pom = services.render_pom("3.9.1")

    assert "<artifactId>kafka_2.13</artifactId><version>3.9.1</version>" in pom
    assert "<artifactId>slf4j-reload4j</artifactId>" in pom


# -- Redis configuration -------------------------------------------------------------------------


def test_redis_binds_loopback_on_the_url_port_and_keeps_nothing_on_disk(tmp_path):
    settings = make_settings(tmp_path)
    files = services.redis_files(settings)

    command = services.redis_command("redis-server", settings, files)

    def option(name: str) -> str:
        return command[command.index(name) + 1]

    assert option("--port") == "29379"
    assert option("--bind") == "127.0.0.1"
    assert option("--dir") == str(files.directory)
    assert option("--save") == ""
    assert option("--appendonly") == "no"
    assert option("--daemonize") == "no"


# -- discovery -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_382"', 8),
    ],
)
def test_java_major_version_is_read_from_both_version_styles(output, major):
    assert services.parse_java_major(output) == major


def test_missing_java_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ServiceError, match="apt-get install openjdk-17-jre-headless"):
        services.find_java()


def test_java_older_than_17_is_refused_with_the_install_hint(tmp_path, monkeypatch):
    fake_java(tmp_path / "bin", "11.0.2")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    with pytest.raises(ServiceError, match="Java 11.*apt-get install openjdk-17-jre-headless"):
        services.find_java()


def test_missing_maven_says_how_to_install_it(tmp_path, monkeypatch):
    fake_java(tmp_path / "bin", "17.0.2")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    with pytest.raises(ServiceError, match="apt-get install maven"):
        services.fetch_kafka(make_settings(tmp_path))


def test_missing_redis_server_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ServiceError, match="apt-get install redis-server"):
        services.find_executable("redis-server")


def test_resolved_kafka_jars_are_reused_without_maven(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    home = services.kafka_home(settings)
    home.mkdir(parents=True)
    (home / services.RESOLVED_MARKER).write_text("resolved\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # neither java nor mvn

    assert services.fetch_kafka(settings) == home / "lib"


# -- up refuses what it cannot run locally -------------------------------------------------------


def test_up_refuses_kafka_security_settings_the_local_broker_cannot_honour(tmp_path):
    settings = make_settings(tmp_path, kafka_security={"security.protocol": "SASL_SSL"})

    with pytest.raises(ServiceError, match="PLAINTEXT.*security.protocol"):
        services.up(settings)


def test_up_refuses_a_redis_url_it_cannot_serve(tmp_path):
    settings = Settings.from_env({}, redis_url="rediss://localhost:6380/0", services_dir=tmp_path)

    with pytest.raises(ServiceError, match="redis://"):
        services.up(settings)


# -- status and down with nothing of ours running ------------------------------------------------


def nothing_running_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        kafka=f"127.0.0.1:{free_port(span=2)}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )


def test_status_of_nothing_started_reports_not_running(tmp_path):
    statuses = services.status(nothing_running_settings(tmp_path))

    assert set(statuses) == {"kafka", "redis"}
    for entry in statuses.values():
        assert (entry.running, entry.answering, entry.pid) == (False, False, None)
        assert entry.detail == "not running"


def test_a_pid_file_names_the_process_it_was_written_for(tmp_path):
    pid_file = tmp_path / "service.pid"
    own_command = services.process_command_line(os.getpid())

    services.write_pid_file(pid_file, os.getpid())

    assert services.owned_pid(pid_file, own_command) == os.getpid()
    assert services.owned_pid(pid_file, "kafka.Kafka") is None  # a different command


def test_a_reused_pid_is_not_mistaken_for_ours(tmp_path):
    pid_file = tmp_path / "service.pid"
    own_command = services.process_command_line(os.getpid())
    pid_file.write_text(f"{os.getpid()} 1\n")  # same pid, but a process that started at boot

    assert services.owned_pid(pid_file, own_command) is None


def test_down_never_signals_a_process_it_did_not_start(tmp_path):
    settings = nothing_running_settings(tmp_path)
    pid_file = services.kafka_files(settings).pid_file
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()}\n")  # a stale pid file naming this test process

    services.down(settings, timeout_s=1)

    assert not pid_file.exists()  # the stale file is cleaned up, and we are still alive


def test_down_with_wipe_removes_only_the_service_directories(tmp_path):
    settings = nothing_running_settings(tmp_path)
    root = services.services_root(settings)
    services.kafka_files(settings).data_dir.mkdir(parents=True)
    (root / "keep.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "keep.txt").write_text("not ours")

    services.down(settings, wipe=True)

    assert not (root / "kafka").exists()
    assert (root / "keep.txt").exists()


def test_format_status_prints_one_aligned_line_per_service():
    statuses = {
        "kafka": ServiceStatus(
            "kafka", "127.0.0.1:9092", True, True, 4242, "started by shopstream"
        ),
        "redis": ServiceStatus("redis", "127.0.0.1:6379", False, False, None, "not running"),
    }

    lines = services.format_status(statuses).splitlines()

    assert lines[0].split()[:4] == ["kafka", "127.0.0.1:9092", "up", "pid"]
    assert lines[1].split()[:4] == ["redis", "127.0.0.1:6379", "down", "-"]
    assert lines[0].index("started") == lines[1].index("not running")


def _starting_service(tmp_path, answers):
    return services._Service(name="alertmanager", host="127.0.0.1", port=1, pid_file=tmp_path / "am.pid",
                             logs=(tmp_path / "am.log",), command_marker="am.yml", answers=answers,
                             start=lambda: None)


def test_a_service_seen_mid_exec_is_not_taken_for_exited(tmp_path, monkeypatch):
    """While the launched process execs its program, /proc shows an empty command line for a
    moment, so one look finds no process of ours: the wait must look again, not fail the start."""
    looks = iter([None, 4242, 4242, 4242])
    monkeypatch.setattr(services, "owned_pid", lambda pid_file, marker: next(looks, 4242))
    answers = iter([False, False, True])
    services._wait_until_answering(_starting_service(tmp_path, lambda: next(answers)), float("inf"), 60)


def test_a_service_that_is_gone_fails_its_start_with_its_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(services, "owned_pid", lambda pid_file, marker: None)
    (tmp_path / "am.log").write_text("level=error msg='listen tcp: address already in use'\n")
    with pytest.raises(ServiceError, match=r"(?s)exited while starting.*address already in use"):
        services._wait_until_answering(_starting_service(tmp_path, lambda: False), float("inf"), 60)
