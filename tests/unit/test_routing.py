"""FailoverRoute in-process, over transports that answer as a script says (the real servers' failover is tested in
tests/test_client.py): one answer per request, the same request id on the fallback, back to the edge when it is."""
from __future__ import annotations

import pytest

from cassava.shared.client.routing import Endpoint, FailoverRoute, SingleRoute
from cassava.shared.protocol.transport import Rejected, Unavailable


class ScriptedTransport:
    """The transport interface (ready, metadata, infer, close) answering from a switch the test flips."""

    grpc = False

    def __init__(self, name: str, up: bool = True):
        self.address, self.up, self.requests, self.closed = f"http://{name}", up, [], False

    def ready(self, timeout: float = 1.0) -> bool:
        return self.up

    def metadata(self):
        if not self.up:
            raise Unavailable(f"{self.address}: cannot connect")
        return f"metadata from {self.address}"

    def infer(self, request):
        if not self.up:
            raise Unavailable(f"{self.address}: cannot connect")
        self.requests.append(request)
        return f"{request} answered by {self.address}"

    def close(self):
        self.closed = True


def _route(edge_up=True, cloud_up=True, probe_interval_s=60.0, **options):
    edge, cloud, said = ScriptedTransport("edge", edge_up), ScriptedTransport("cloud", cloud_up), []
    route = FailoverRoute(Endpoint("edge", edge), Endpoint("cloud", cloud), probe_interval_s=probe_interval_s,
                          say=said.append, **options)
    return route, edge, cloud, said


def test_the_edge_answers_while_it_is_up():
    route, edge, cloud, said = _route()
    assert route.infer("r1") == ("r1 answered by http://edge", "edge")
    assert cloud.requests == [] and said == []


def test_a_failure_sends_that_same_request_to_the_cloud_once_and_says_so():
    route, edge, cloud, said = _route()
    edge.up = False
    assert route.infer("r2") == ("r2 answered by http://cloud", "cloud")
    assert cloud.requests == ["r2"] and not route.preferred_up
    assert len(said) == 1 and "edge unavailable" in said[0]
    route.infer("r3")  # while down, straight to the cloud, said once only
    assert cloud.requests == ["r2", "r3"] and len(said) == 1


def test_the_edge_is_used_again_after_a_probe_finds_it_ready():
    now = [1000.0]
    route, edge, cloud, said = _route(edge_up=False, probe_interval_s=3.0, clock=lambda: now[0])
    assert "not ready" in said[0]
    assert route.infer("a")[1] == "cloud"
    edge.up = True
    now[0] += 2.9  # not yet time to probe: the edge is not asked, even though it is back
    assert route.infer("b")[1] == "cloud" and not route.preferred_up and edge.requests == []
    now[0] += 0.1
    assert route.infer("c")[1] == "edge" and route.preferred_up and edge.requests == ["c"]
    assert "is back" in said[-1]


def test_both_down_is_one_error_naming_both_tiers():
    route, edge, cloud, _ = _route()
    edge.up = cloud.up = False
    with pytest.raises(Unavailable, match="edge: .*then cloud: "):
        route.infer("r")


def test_a_rejected_request_is_not_sent_to_the_other_tier():
    route, edge, cloud, _ = _route()

    def reject(request):
        raise Rejected("HTTP 400: bad input", 400)

    edge.infer = reject
    with pytest.raises(Rejected):
        route.infer("bad")
    assert cloud.requests == [] and route.preferred_up  # a 4xx says nothing about the edge's health


def test_metadata_comes_from_whichever_tier_answers_and_close_closes_both():
    route, edge, cloud, _ = _route()
    edge.up = False
    assert route.metadata() == "metadata from http://cloud"
    route.close()
    assert edge.closed and cloud.closed


def test_a_single_route_names_its_tier():
    transport = ScriptedTransport("cloud")
    assert SingleRoute(Endpoint("cloud", transport)).infer("x") == ("x answered by http://cloud", "cloud")
