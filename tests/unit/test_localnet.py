"""free_port: the ports it hands out are free, never handed out twice, and, when
the test runner's workers each take a slot, never another slot's."""

from __future__ import annotations

import socket

import pytest

from tools import localnet

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("slot", [0, 1, 2])
def test_each_slot_hands_out_free_ports_of_its_own_share(
    slot: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # above the ephemeral range: the ports of no test runner's worker
    monkeypatch.setattr(localnet, "SLOT_PORTS", range(61000, 61900))
    monkeypatch.setattr(localnet, "PORT_SLOT", (slot, 3))
    monkeypatch.setattr(localnet, "_HANDED_OUT", set())
    share = len(localnet.SLOT_PORTS) // 3
    mine = range(
        localnet.SLOT_PORTS.start + slot * share, localnet.SLOT_PORTS.start + (slot + 1) * share
    )
    ports = [localnet.free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    assert all(port in mine for port in ports), ports
    # free when handed out: a server can listen on each
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every port of the slot's share but one is taken: that one comes back, then
    none is left."""
    monkeypatch.setattr(localnet, "SLOT_PORTS", range(61000, 61010))
    monkeypatch.setattr(localnet, "PORT_SLOT", (1, 2))  # 61005..61009
    monkeypatch.setattr(localnet, "_HANDED_OUT", set())
    listening = []
    try:
        for port in (61005, 61006, 61008, 61009):
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            listening.append(sock)
        assert localnet.free_port() == 61007
        with pytest.raises(OSError, match="no free port"):
            localnet.free_port()
    finally:
        for sock in listening:
            sock.close()
