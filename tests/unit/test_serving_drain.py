"""A swapped-out model version is closed only after every request that took it is answered, including one that took
it and is still decoding (not yet in the micro-batcher): `Serving` counts its users from arrival to answer."""
import asyncio

from cassava.shared.server.runtime import Serving


def test_drain_waits_for_a_request_that_has_not_reached_the_batcher_yet():
    async def scenario():
        serving = Serving(classifier=None, batcher=None, version="1")
        decoded = asyncio.Event()
        order = []

        async def request():
            with serving:
                await decoded.wait()  # still decoding: nothing handed to the batcher yet
                order.append("answered")

        task = asyncio.create_task(request())
        await asyncio.sleep(0)  # the request has arrived
        drain = asyncio.create_task(serving.drain(timeout=5))
        await asyncio.sleep(0.05)
        assert not drain.done()  # the old version must not close under the request
        decoded.set()
        assert await drain is True
        order.append("drained")
        await task
        return order

    assert asyncio.run(scenario()) == ["answered", "drained"]


def test_drain_gives_up_after_its_timeout():
    async def scenario():
        serving = Serving(classifier=None, batcher=None, version="1")
        serving.__enter__()  # a request that never finishes
        return await serving.drain(timeout=0.05)

    assert asyncio.run(scenario()) is False
