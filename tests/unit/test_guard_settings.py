"""The guard's settings and per-client share (shared/server/guard.py) and compat.py's version gate, in process: the
parts the real-server tests in tests/test_guard.py cannot reach one by one."""
from __future__ import annotations

import asyncio

import pytest

from cassava.shared.errors import CassavaError
from cassava.shared.server import compat
from cassava.shared.server.guard import ClientShare, GuardSettings, ModelControl, peer_host


def test_settings_come_from_settings_json_and_the_environment_overrides_them():
    settings = GuardSettings.from_args({"requests_per_client": 1, "queued_per_client": 3},
                                       environ={"CASSAVA_QUEUED_PER_CLIENT": "0", "CASSAVA_EXEMPT_CLIENTS": "10.0.0.1"})
    assert (settings.requests_per_client, settings.queued_per_client) == (1, 0)
    assert settings.exempt_clients == ("10.0.0.1",) and settings.model_control == "closed"
    with pytest.raises(CassavaError, match="unknown requests_per_phone"):
        GuardSettings.from_args({"requests_per_phone": 1}, environ={})
    with pytest.raises(CassavaError, match="not a number"):
        GuardSettings.from_args({}, environ={"CASSAVA_HEADER_TIMEOUT_S": "soon"})
    with pytest.raises(CassavaError, match="must be above 0"):
        GuardSettings.from_args({"max_connections": 0}, environ={})


def test_model_control_modes(tmp_path):
    assert not ModelControl.parse("closed").allows("127.0.0.1", None)
    loopback = ModelControl.parse("loopback")
    assert loopback.allows("127.0.0.1", None) and loopback.allows("::1", None) and not loopback.allows("10.1.2.3", None)
    (tmp_path / "token").write_text("0123456789abcdef-token\n")
    token = ModelControl.parse(f"token:{tmp_path / 'token'}")
    assert token.allows("10.1.2.3", "Bearer 0123456789abcdef-token")
    assert not token.allows("127.0.0.1", None) and not token.allows("10.1.2.3", "Bearer 0123456789abcdef-tokeX")
    with pytest.raises(CassavaError, match="use closed, loopback or token:FILE"):
        ModelControl.parse("open")


def test_a_clients_extra_requests_wait_their_turn_and_beyond_the_queue_are_refused():
    share = ClientShare(limit=1, queued=2, exempt=("127.0.0.1",))
    order = []

    async def request(client, name, gate):
        async def work():
            order.append(f"start {name}")
            await gate.wait()
            order.append(f"end {name}")
        await share.run(client, work)

    async def scenario():
        gate = asyncio.Event()
        assert [share.admit("10.0.0.5") for _ in range(4)] == [True, True, True, False]  # 1 working + 2 waiting
        tasks = [asyncio.create_task(request("10.0.0.5", n, gate)) for n in "abc"]
        assert share.admit("10.0.0.6") and share.admit("127.0.0.1")  # other clients, and the exempt, unaffected
        other = asyncio.create_task(request("10.0.0.6", "other", asyncio.Event()))
        await asyncio.sleep(0.01)
        assert order == ["start a", "start other"]  # one of 10.0.0.5's at a time; 10.0.0.6 not behind them
        gate.set()
        await asyncio.gather(*tasks)
        other.cancel()
        await asyncio.gather(other, return_exceptions=True)
        assert order[2:] == ["end a", "start b", "end b", "start c", "end c"]
        assert share._turns == {}  # nothing left behind, cancelled or not

    asyncio.run(scenario())


def test_peer_addresses():
    assert peer_host("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert peer_host("ipv6:[::1]:51234") == "::1"


def test_another_mlserver_version_is_one_clear_error(monkeypatch):
    import mlserver

    monkeypatch.setattr(mlserver, "__version__", "1.8.0")
    with pytest.raises(CassavaError, match=r"cassava needs mlserver==1\.7\.1 .* this is mlserver 1\.8\.0"):
        compat.apply()
