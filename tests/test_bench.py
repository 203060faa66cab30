"""Every benchmark scenario at a small size: it runs, verifies itself and reports sane figures.

These are not performance tests (the figures depend on the machine); they
check that each scenario measures what it claims: nothing lost, everything
exactly once, the counters it reads from the servers present. Each runs the
real servers as subprocesses on port 0, like ``python -m chat_sync.bench``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chat_sync import bench
from chat_sync.bench import command, idle, measure, soak, udp

README = Path(__file__).resolve().parent.parent / "README.md"


def run(capsys: pytest.CaptureFixture[str], *argv: str, json_first: bool = True
        ) -> dict[str, Any]:
    """``chat-sync bench --json ARGV`` (or ``ARGV --json``): exit code 0; returns its figures."""
    code = bench.main(["--json", *argv] if json_first else [*argv, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out                   # --json: the JSON line and nothing else
    figures: dict[str, Any] = json.loads(out[0])
    assert code == 0, figures
    return figures


@pytest.mark.timeout(60)
def test_fanout_against_the_server_and_its_baselines(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    before = os.sched_getaffinity(0)
    figures = run(capsys, "fanout", "--clients", "5", "--messages", "20",
                  "--baseline", "raw", "asyncio", "--rounds", "2")
    assert os.sched_getaffinity(0) == before        # the generator's pinning is undone
    assert figures["deliveries"] == 5 * 5 * 20 and figures["rounds"] == 2
    assert figures["losses"] == 0 and figures["order_errors"] == 0
    assert figures["raw_losses"] == 0 and figures["asyncio_losses"] == 0
    if len(before) >= 2:
        assert "server on CPU" in figures["pinning"]
    for design in ("raw", "asyncio"):
        for ratio in (f"cpu_per_delivery_to_{design}", f"throughput_to_{design}"):
            spread = figures[ratio]
            assert 0 < spread["min"] <= spread["median"] <= spread["max"], (ratio, spread)
    cpu = figures["server_cpu_us_per_delivery"]
    assert cpu["min"] > 0                       # nanoseconds, not 10 ms ticks rounded to 0
    # Pinned to one CPU, the server cannot use more than all of it (it said 2.56).
    assert 0 < figures["server_cpu_share"]["max"] <= (1.05 if len(before) >= 2 else 2.1)
    latency = figures["latency_ms_p50"]["median"]
    assert 0 < latency <= figures["latency_ms_p99"]["median"]


@pytest.mark.timeout(60)
def test_littles_law_predicts_the_mean_round_trip(capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    """With the window full nearly all the run, in flight / rate is the mean echo time."""
    figures = run(capsys, "fanout", "--clients", "5", "--messages", "300", "--window", "2",
                  "--rounds", "1", "--no-log")
    echo, littles = figures["echo_ms_mean"]["median"], figures["littles_law_ms"]["median"]
    assert 0.75 < echo / littles < 1.25, figures


@pytest.mark.timeout(60)
def test_latency_below_saturation(capsys: pytest.CaptureFixture[str]) -> None:
    figures = run(capsys, "latency", "--clients", "6", "--senders", "3", "--seconds", "0.4",
                  "--levels", "0.25", "0.5", "--no-log")
    assert figures["losses"] == 0 and figures["order_errors"] == 0
    assert figures["saturation_deliveries_per_s"] > 0
    for level in ("0.25", "0.5"):
        assert 0 < figures[f"at_{level}_latency_ms_p50"] <= figures[f"at_{level}_latency_ms_p99"]


@pytest.mark.timeout(90)
def test_curves_are_measured_and_drawn(capsys: pytest.CaptureFixture[str], tmp_path: Path
                                       ) -> None:
    image = tmp_path / "curves.png"
    figures = run(capsys, "curves", "--room-sizes", "2", "10", "--deliveries", "1000",
                  "--clients-steps", "50", "100", "--join-room-size", "25",
                  "--designs", "chat_sync", "raw", "--plot", str(image))
    assert figures["losses"] == 0 and figures["order_errors"] == 0
    assert [p["room_size"] for p in figures["rooms"]["chat_sync"]] == [2, 10]
    assert all(p["cpu_us"] > 0 and p["deliveries_per_s"] > 0
               for points in figures["rooms"].values() for p in points)
    assert [p["clients"] for p in figures["memory"]["chat_sync"]] == [50, 100]
    assert all(p["kib_per_client_joined"] > 0 for p in figures["memory"]["chat_sync"])
    assert "kib_per_client_joined" not in figures["memory"]["raw"][0]     # no rooms
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(30)
def test_the_core_install_does_not_import_matplotlib() -> None:
    code = "import sys, chat_sync.bench; assert 'matplotlib' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=20).returncode == 0


@pytest.mark.timeout(30)
@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed (.ci/run installs it)")
def test_cluster_on_a_bus_loses_nothing_against_one_server(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    pytest.importorskip("redis")
    figures = run(capsys, "cluster", "--clients", "6", "--messages", "20", "--rounds", "1",
                  "--rate", "50", "--seconds", "0.4")
    # Every member got every message, each sender's in order, seq rising across servers.
    assert figures["losses"] == 0 and figures["order_errors"] == 0
    for design in ("alone", "bus1", "bus2"):
        assert figures[f"{design}_server_cpu_us_per_delivery"]["min"] > 0
        assert 0 < figures[f"{design}_latency_ms_p50"]["median"] \
            <= figures[f"{design}_latency_ms_p99"]["median"]
    for design in ("bus1", "bus2"):
        assert figures[f"{design}_redis_cpu_us_per_delivery"]["min"] > 0   # it was used
        assert figures[f"{design}_throughput_to_alone"]["median"] > 0


@pytest.mark.timeout(60)
def test_connections_held_and_one_message_to_a_room(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    figures = run(capsys, "connections", "--clients", "200", "--room-size", "50")
    assert figures["rooms"] == 4 and figures["room_size"] == 50
    assert figures["rss_kib_after"] > 0 and figures["one_message_to_room_ms"] > 0
    assert figures["server_cpu_ms_per_message_to_room"] > 0     # it did the work, measured


@pytest.mark.timeout(120)
def test_connections_in_rounds_against_asyncio_gives_medians_and_ratios(
        capsys: pytest.CaptureFixture[str]) -> None:
    figures = run(capsys, "connections", "--clients", "100", "--room-size", "50",
                  "--baseline", "asyncio", "raw", "--rounds", "2")
    for key in ("connect_and_join_s", "kib_per_client", "server_cpu_ms_per_message_to_room"):
        for name in (key, f"asyncio_{key}", f"{key}_to_asyncio"):
            spread = figures[name]
            assert spread["min"] <= spread["median"] <= spread["max"], name
            assert spread["min"] > 0, name
    # The relay holds one room's worth of clients and joins nothing: one figure, the floor.
    for name in ("raw_server_cpu_ms_per_message_to_room",
                 "server_cpu_ms_per_message_to_room_to_raw"):
        assert figures[name]["min"] > 0, name
    assert "raw_connect_and_join_s" not in figures and "raw_kib_per_client" not in figures


@pytest.mark.timeout(60)
def test_udp_through_a_lossy_relay_is_exactly_once(capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    figures = run(capsys, "udp", "--clients", "2", "--messages", "10", "--loss", "0.2",
                  "--base-delay", "0.03", "--max-delay", "0.3", "--max-retries", "12")
    assert figures["passed"] is True
    assert figures["delivered_exactly_once"] == figures["expected"] == 2 * 2 * 10
    assert figures["duplicates"] == 0 and figures["order_errors"] == 0
    assert figures["ideal_retransmissions"] == pytest.approx(1 / 0.8 ** 2 - 1, abs=1e-4)
    assert figures["server_datagrams"] > 0      # read from the server's stats line
    assert figures["client_ratio_to_ideal"] is not None
    assert figures["server_ratio_to_ideal"] is not None
    assert figures["measured_loss_up"] > 0 and figures["measured_loss_down"] > 0


@pytest.mark.timeout(30)
def test_idle_servers_and_client_do_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    figures = run(capsys, "idle", "--seconds", "1", json_first=False)
    assert figures["passed"] is True
    assert figures["udp_client_timer_wakeups"] == figures["udp_client_reader_wakeups"] == 0
    assert figures["udp_server_cpu_s"] < idle.IDLE_CPU_S
    assert figures["tcp_server_cpu_s"] < idle.IDLE_CPU_S


@pytest.mark.timeout(60)
def test_soak_well_behaved_clients_get_everything(capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    figures = run(capsys, "soak", "--seconds", "5")
    assert figures["passed"] is True and figures["still_serving"] is True
    assert figures["wb_delivered"] == figures["wb_expected"] == 3 * figures["wb_sent"] > 0
    assert figures["wb_problems"] == 0 and figures["server_tracebacks"] == 0
    assert figures["connections_made"] > 3      # the attackers came and went
    assert figures["rss_kib_start"] > 0 and figures["rss_kib_max"] >= figures["rss_kib_end"]
    assert sum(figures["disconnect_reasons"].values()) > 0     # read from the server's log


@pytest.mark.timeout(10)
def test_the_udp_servers_stats_line_is_found_in_its_log() -> None:
    lines = ["2026-01-01 10:00:00,000 INFO chat_sync.udp_server listening on 127.0.0.1:1 (udp)",
             '2026-01-01 10:00:01,000 INFO chat_sync.udp_server stats {"sent": 9, '
             '"retransmitted": 2, "acked": 9, "duplicates_dropped": 0, "given_up": 0, '
             '"dropped": 1}',
             "2026-01-01 10:00:01,001 INFO chat_sync.udp_server stopped"]
    assert udp.udp_server_stats(lines)["retransmitted"] == 2
    assert udp.udp_server_stats(lines[:1]) == {}


@pytest.mark.timeout(10)
def test_error_codes_are_counted_digits_and_all() -> None:
    line = b'{"type":"error","code":"bad_utf8","text":"invalid UTF-8 at byte 26"}'
    assert soak.ERROR_CODE.findall(line) == [b"bad_utf8"]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.timeout(90)
def test_the_readmes_profiling_recipe_runs_as_pasted(tmp_path: Path) -> None:
    """The cProfile block of the Performance section, at a free port and a small size.

    The server starts in the background and the bench right after it, before
    the server listens: the bench must wait for it, and the profile must be
    written before pstats reads it.
    """
    recipe = next(block for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                  if "cProfile" in block)
    port = free_port()
    script = (recipe.replace("7430", str(port))
              .replace("--clients 50 --messages 200", "--clients 5 --messages 20"))
    assert str(port) in script and "--clients 5 " in script
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=80)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert '"losses": 0' in result.stdout and "ncalls" in result.stdout
    assert (tmp_path / "fanout.prof").stat().st_size > 0


@pytest.mark.timeout(30)
def test_no_server_at_the_address_is_said_in_one_line(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    port = free_port()
    code = bench.main(["fanout", "--server", f"127.0.0.1:{port}", "--wait-s", "0.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"chat-sync bench fanout: no server at 127.0.0.1:{port}")
    assert not any("Traceback" in line for line in err)


@pytest.mark.timeout(30)
def test_too_few_open_files_says_which_ulimit(capsys: pytest.CaptureFixture[str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    clients = hard + 100
    code = bench.main(["connections", "--clients", str(clients)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not any("Traceback" in line for line in err)
    assert f"ulimit -n {clients + 64}" in err[-1] and f"hard limit is {hard}" in err[-1]
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)   # nothing changed


@pytest.mark.timeout(30)
def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        pytest.skip("the soft limit is already the hard limit")
    try:
        assert measure.raise_file_limit(soft + 1) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scenario", sorted(command.SCENARIOS))
def test_each_scenarios_help_gives_a_line_and_default_per_option(scenario: str) -> None:
    result = subprocess.run([sys.executable, "-m", "chat_sync.bench", scenario, "--help"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    options = argparse.ArgumentParser(add_help=False)
    command.SCENARIOS[scenario].add_arguments(options)
    for action in options._actions:
        flag = action.option_strings[-1]
        line = next(l for l in result.stdout.splitlines() if l.strip().startswith(flag))
        described = result.stdout.split(line, 1)[1].split("\n  -", 1)[0]
        assert action.help, f"{scenario} {flag} has no help"
        if action.default not in (None, False, []):
            assert f"(default: {action.default})" in " ".join((line + described).split()), \
                f"{scenario} {flag}: no default shown"
