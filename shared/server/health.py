"""`grpc.health.v1.Health` on the gRPC port (Kubernetes' gRPC probes, grpc_health_probe), from MLServer's data plane.

It is grpc_health's own asyncio HealthServicer (Check and Watch), its statuses kept from the data plane:
  "live"                               SERVING while the process answers
  "" and "inference.GRPCInferenceService"   SERVING once every model is ready (OIP's server ready)
  a model's name                       that model's readiness; a name the server does not know is NOT_FOUND (Check)
                                       or SERVICE_UNKNOWN (Watch), as the health protocol says
A Check reads the status afresh; Watch streams are brought up to date every POLL_S seconds.
"""
from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio

HEALTH_LIVE = "live"  # the Health service name that asks "is the process serving?"
SERVER_SERVICES = ("", "inference.GRPCInferenceService")
POLL_S = 1.0

log = logging.getLogger("cassava.health")


class DataPlaneHealth(aio.HealthServicer):
    def __init__(self, data_plane):
        super().__init__()
        self._data_plane = data_plane
        self._poller = None

    def start_polling(self) -> None:
        """Keep Watch streams current (called where an event loop runs: the gRPC server's start)."""
        try:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        except RuntimeError:
            self._poller = None  # no loop: Check still answers afresh

    async def Check(self, request, context):
        await self._refresh(request.service)
        return await super().Check(request, context)

    async def Watch(self, request, context):
        await self._refresh(request.service)
        return await super().Watch(request, context)

    async def _refresh(self, service: str) -> None:
        from mlserver.errors import MLServerError

        if service == HEALTH_LIVE:
            ok = await self._data_plane.live()
        elif service in SERVER_SERVICES:
            ok = await self._data_plane.ready()
        else:
            try:
                ok = await self._data_plane.model_ready(service)
            except MLServerError:  # not a model this server knows
                self._server_status.pop(service, None)
                return
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if self._server_status.get(service) != status:
            await self.set(service, status)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for service in {*SERVER_SERVICES, HEALTH_LIVE, *self._server_status, *self._server_watchers}:
                try:
                    await self._refresh(service)
                except Exception as exc:  # a probe's answer must never take the poller down
                    log.debug("health status of %r not refreshed: %s", service, exc)
