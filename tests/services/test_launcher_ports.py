"""`free_ports`: the local cluster's and the tests' ports lie outside the kernel's ephemeral range, so no
client's outgoing connection can take one as its source port (and, connecting before the service listens,
end up talking to itself)."""

from __future__ import annotations

import socket

import pytest

from services import launcher
from services.launcher import ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = free_ports(13)
    assert len(set(ports)) == 13
    assert all(launcher.LOWEST_PORT <= p < low or high < p < 65536 for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        # An ephemeral range that leaves exactly the taken port and one other below it.
        range_file = tmp_path / "ip_local_port_range"
        range_file.write_text(f"{port + 1}\t65535\n")
        monkeypatch.setattr(launcher, "EPHEMERAL_RANGE_FILE", range_file)
        monkeypatch.setattr(launcher, "LOWEST_PORT", port - 1)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port - 1))
            except OSError:
                pytest.skip(f"port {port - 1} is in use on this machine")
        assert free_ports(1) == [port - 1]
        with pytest.raises(RuntimeError, match="no 2 free ports"):
            free_ports(2)


def test_the_range_falls_back_to_linux_defaults_without_the_proc_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(launcher, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ephemeral_range() == (32768, 60999)
