"""Every benchmark scenario at a small size: it runs, verifies itself and reports sane figures.

These are not performance tests (the figures depend on the machine); they
check that each scenario measures what it claims: nothing lost, everything
exactly once, the counters it reads from the servers present. Each runs the
real servers as subprocesses on port 0, like ``python -m chat_sync.bench``.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from chat_sync import bench
from chat_sync.bench import idle, soak, udp


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """``chat-sync bench --json ARGV``: its exit code must be 0; returns its figures."""
    code = bench.main(["--json", *argv])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out                   # --json: the JSON line and nothing else
    figures: dict[str, Any] = json.loads(out[0])
    assert code == 0, figures
    return figures


@pytest.mark.timeout(60)
def test_fanout_against_the_server_and_the_raw_relay(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    figures = run(capsys, "fanout", "--clients", "5", "--messages", "20", "--baseline", "raw")
    assert figures["deliveries"] == 5 * 5 * 20
    assert figures["losses"] == 0 and figures["order_errors"] == 0
    assert figures["raw_losses"] == 0 and figures["ratio_to_raw"] > 0
    assert figures["cpu_ratio_to_raw"] >= 0     # CPU comes in 10 ms ticks: 0 at this size
    assert figures["generator_cpu_share"] > 0
    assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p99"]


@pytest.mark.timeout(60)
def test_connections_held_and_one_message_to_a_room(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    figures = run(capsys, "connections", "--clients", "200", "--room-size", "50")
    assert figures["rooms"] == 4 and figures["room_size"] == 50
    assert figures["rss_kib_after"] > 0 and figures["one_message_to_room_ms"] > 0


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
    figures = run(capsys, "idle", "--seconds", "1")
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
