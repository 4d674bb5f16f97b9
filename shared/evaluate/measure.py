"""Measuring models: batched prediction with its throughput, and time per image (one image per call).

The one home for these loops: `cassava compare`, `cassava convert` (verification, the --target-agreement cost) and
the benchmarks all time and run models through here.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np


def predict_batches(classifier, x: np.ndarray, batch_size: int, desc: str, progress: bool, warmup: bool = True,
                    prepare: Optional[Callable[[np.ndarray], np.ndarray]] = None, leave: bool = True):
    """Probabilities for every image, `batch_size` per call, and images/s over the pass (after one warm-up call when
    `warmup`). `prepare` turns each slice of `x` into model input (e.g. uint8 pixels -> the model's pixel range)."""
    from tqdm import tqdm

    prepare = prepare or (lambda batch: batch)
    if warmup:
        classifier.predict(prepare(x[:batch_size]))  # TF traces, TFLite allocates
    out = []
    bar = tqdm(total=len(x), desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=leave)
    started = time.perf_counter()
    for start in range(0, len(x), batch_size):
        out.append(np.asarray(classifier.predict(prepare(x[start:start + batch_size])), dtype=np.float32))
        bar.update(len(out[-1]))
    elapsed = time.perf_counter() - started
    bar.close()
    return np.concatenate(out), (len(x) / elapsed if elapsed > 0 else None)


def time_per_image(classifier, x: np.ndarray, warmup: int = 2) -> List[float]:
    """Seconds per model call on one image at a time (model call only: `x` is already model input)."""
    for i in range(min(warmup, len(x))):
        classifier.predict(x[i:i + 1])
    times = []
    for i in range(len(x)):
        started = time.perf_counter()
        classifier.predict(x[i:i + 1])
        times.append(time.perf_counter() - started)
    return times


def times_in_turn(classifiers: Dict[str, object], x: np.ndarray, rounds: int = 3, warmup: int = 1) -> Dict[str, list]:
    """Seconds per one-image call for each model, the models timed in turn on each image (load on a shared machine
    then hits all of them alike), after `warmup` calls each (graph tracing, interpreter arenas)."""
    times: Dict[str, list] = {name: [] for name in classifiers}
    for model in classifiers.values():
        for i in range(min(warmup, len(x))):
            model.predict(x[i:i + 1])
    for _ in range(rounds):
        for image in x:
            for name, model in classifiers.items():
                times[name] += time_per_image(model, image[None], warmup=0)
    return times


def median_ms_in_turn(classifiers: Dict[str, object], x: np.ndarray, rounds: int = 3) -> Dict[str, float]:
    """The median of `times_in_turn`, in ms."""
    return {name: round(float(np.median(t)) * 1000, 3) for name, t in times_in_turn(classifiers, x, rounds).items()}
