"""Classifying many images: preprocess, one request per chunk, `concurrency` chunks in flight; every image gets a
record (a bad image or a failed request becomes a record with an `error`, never a gap)."""
from __future__ import annotations

import sys
import time
from typing import List

import numpy as np

from ..console import say
from ..data import Sample
from ..errors import BadImage
from ..policy import UNKNOWN
from ..preprocess import preprocess


def _failed_record(sample: Sample, error: str, unanswered: bool) -> dict:
    """`unanswered`: the request failed (server or network), as opposed to an unreadable image."""
    return {"file": sample.name, "label": sample.label, "prediction": None, "probability": None,
            "tier": None, "answered_by": None, "latency_ms": None, "error": error, "unanswered": unanswered}


def classify_chunk(backend, chunk: List[Sample], size: int):
    """One request's worth: [(thumbnail or None, record)] in chunk order; every sample gets a record."""
    from ..protocol.transport import TransportError

    errors, good, pixels, unanswered = {}, [], [], set()
    for sample in chunk:
        try:
            pixels.append(preprocess(sample.source, size))
            good.append(sample)
        except BadImage as exc:
            errors[id(sample)] = str(exc)
            say(f"skipped {sample.name}: {exc}")
    results = {}
    if good:
        batch = np.stack(pixels)
        started = time.perf_counter()
        try:
            answer = backend.classify(batch, good)
        except (TransportError, BadImage) as exc:  # a 4xx keeps the server's message; 5xx/unreachable after retries
            say(f"{len(good)} image(s) failed: {exc}")
            errors.update((id(s), str(exc)) for s in good)
            unanswered = {id(s) for s in good}
        else:
            latency_ms = (time.perf_counter() - started) * 1000.0 / len(good)
            names = answer.class_names
            answered_by = answer.answered_by or [None] * len(good)
            settlement_ids = answer.settlement_ids or [""] * len(good)
            for sample, image, best, probs, tier, by, settlement_id in zip(
                    good, batch, answer.class_ids, answer.probabilities, answer.tiers, answered_by, settlement_ids):
                # a class id past the model's classes is the server's `unknown` (shared/policy.py: the leaf gate)
                prediction = names[best] if best < len(names) else UNKNOWN
                results[id(sample)] = (image, {
                    "file": sample.name, "label": sample.label, "prediction": prediction,
                    "probability": round(float(probs[best] if best < len(names) else probs.max()), 6), "tier": tier,
                    "answered_by": by,
                    "latency_ms": round(latency_ms, 3),
                    "probabilities": {c: round(float(p), 6) for c, p in zip(names, probs)},
                    **({"settlement_id": settlement_id} if settlement_id else {}),
                })
    return [results.get(id(s)) or (None, _failed_record(s, errors.get(id(s), "not classified"), id(s) in unanswered))
            for s in chunk]


def classify_samples(backend, samples: List[Sample], batch_size: int, progress: bool = True, concurrency: int = 1):
    """Preprocess, classify and label every sample, `concurrency` requests at a time. Returns (records, thumbnails)
    in sample order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    size = backend.spec.input_size
    batch_size = max(1, batch_size)
    chunks = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    threads = max(1, min(concurrency, len(chunks), getattr(backend, "threads", None) or concurrency))
    results = [None] * len(chunks)
    bar = tqdm(total=len(samples), unit="img", disable=not progress, file=sys.stderr, desc="classifying")
    try:
        if threads == 1:
            for index, chunk in enumerate(chunks):
                results[index] = classify_chunk(backend, chunk, size)
                bar.update(len(chunk))
        else:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="classify")
            try:
                futures = {pool.submit(classify_chunk, backend, chunk, size): i for i, chunk in enumerate(chunks)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(len(chunks[futures[future]]))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: drop what has not started
    finally:
        bar.close()
    pairs = [pair for chunk_results in results for pair in chunk_results]
    return [record for _, record in pairs], [image for image, _ in pairs]
