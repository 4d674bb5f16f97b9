"""MLServer runtime for the TFLite model (MLServer ships none): a pool of LiteRT interpreters, no TensorFlow.
With `escalate_to` in `parameters.extra`, hard images are settled by the cloud tier (escalate.py)."""
import asyncio
import os

from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse, Parameters

from cassava.shared.protocol import ANSWERED_BY
from cassava.shared.server import settlements
from cassava.shared.server.runtime import ImageClassifierRuntime

from .escalate import (
    SETTLEMENT_IDS,
    Escalation,
    EscalationSettings,
    answered_by_metadata,
    answered_by_output,
    original_photos,
    wait_budget,
)
from .interpreter import load_tflite_classifier


class EdgeRuntime(ImageClassifierRuntime):
    tier = "edge"
    escalation = None

    def load_classifier(self, uri: str, extra: dict):
        # Interpreter settings sit in model-settings `parameters.extra`; each batch in flight holds one interpreter.
        return load_tflite_classifier(
            uri, **self.spec_overrides(extra),
            num_threads=int(extra.get("num_threads") or 1),
            pool_size=int(extra.get("pool_size") or os.cpu_count() or 1),
            input_tensor=extra.get("input_tensor"), output_tensor=extra.get("output_tensor"),
        )

    async def _load(self) -> bool:
        ready = await super()._load()
        settings = EscalationSettings.from_extra(self._extra(), self.classifier.spec)
        if settings is not None:
            self.escalation = Escalation(settings, self.classifier.spec, self.name)
            await asyncio.to_thread(self.escalation.start)
            settlements.register(self.name, self.escalation.settlement)  # GET .../settlements/{id}
            self.outputs = self.declared_outputs(self.classifier.spec)
        return ready

    def declared_outputs(self, spec) -> list:
        outputs = super().declared_outputs(spec)
        return [*outputs, answered_by_metadata()] if self.escalation is not None else outputs

    async def swapped(self, spec) -> None:
        """A new store version: its own threshold (unless --escalate-below fixed one) and a cloud check."""
        if self.escalation is not None:
            settings = EscalationSettings.from_extra(self._extra(), spec)
            await asyncio.to_thread(self.escalation.rebind, settings, spec)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self.escalation is None:
            return await super().predict(payload)
        with self._serving as serving:  # one version answers the whole request (see the shared runtime)
            request_input = self.validate(payload, serving)
            wait_s = wait_budget(payload.parameters, self.escalation.settings.timeout_s)
            x = await self.decode(request_input, serving)
            probabilities, distances = await self.classify(x, serving)
            # a photo the gate turned away is answered at once: never escalated nor audited (no bytes spent on it)
            probabilities, answered_by, ids = await self.escalation.settle(
                x, probabilities, lambda: original_photos(request_input), wait_s,
                rejected=self.policy.rejected(len(x), distances))
            response = self.encode(probabilities, payload, serving,
                                   more={ANSWERED_BY: answered_by_output(answered_by)}, distances=distances)
            # Per image, comma-separated ("" where the edge answered alone): gRPC parameters are scalars
            current = response.parameters.model_dump(exclude_none=True) if response.parameters else {}
            response.parameters = Parameters(**current, **{SETTLEMENT_IDS: ",".join(ids)})
            return response

    async def metadata(self) -> MetadataModelResponse:
        metadata = await super().metadata()
        if self.escalation is not None:  # strings, as the shared runtime's parameters (gRPC parameters are scalars)
            settings = self.escalation.settings
            metadata.parameters = Parameters(**metadata.parameters.model_dump(exclude_none=True),
                                             escalate_to=settings.url, escalate_below=f"{settings.below:g}",
                                             audit_rate=f"{settings.audit_rate:g}")
        return metadata

    async def unload(self) -> bool:
        if self.escalation is not None:
            settlements.unregister(self.name)
            self.escalation.close()
        return await super().unload()
