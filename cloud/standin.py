"""Build the offline stand-in: a small Keras CNN with CropNet's exact interface, trained on synthetic leaves.

224x224x3 floats in [0, 1] -> 6 softmax probabilities (cbb cbsd cgm cmd healthy unknown), deterministic, cached.
It exists because TF Hub and TFDS are unreachable offline; its numbers are never cassava accuracy.
Exported with `model.export()` (Keras 3): a Keras 3 model saved with `tf.saved_model.save` converts to a TFLite
model that silently returns garbage.

The model's first layer averages 4x4 pixels (224 -> 56 px). The "fast" recipe trains the layers after it on
photos pooled once in numpy (exactly what that layer computes) with batch normalisation and a cosine learning
rate, for 4 epochs (benchmarks/bench_standin.py holds the recipe before it, to compare against).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cassava.shared.cache import built_once, standin_dir, standin_model_dir
from cassava.shared.data import folder_samples
from cassava.shared.labels import CROPNET_CLASSES
from cassava.shared.preprocess import preprocess, to_model_input
from cassava.shared.spec import STANDIN_NOTE, ModelSpec
from cassava.shared.synthetic import ensure_dataset

log = logging.getLogger(__name__)
SIZE = 224
POOL = 4  # 224 -> 56 px first: the symptoms are coarse, and 2 cores must train it quickly


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    learning_rate: float
    pooled: bool  # train the layers after the pooling on pre-pooled 56-px arrays (16x less input per step)
    batch_norm: bool  # after each convolution: converges in a few epochs instead of 40
    cosine: bool  # learning rate decays to 0 over the run
    batch_size: int = 32


FAST = Recipe("fast", epochs=4, learning_rate=3e-3, pooled=True, batch_norm=True, cosine=True)


def load_split(split: str):
    """One split of the synthetic photos as model input (float32 [N, 224, 224, 3] in [0, 1]) and class indices."""
    samples = folder_samples(standin_dir() / "data" / split)
    pixels = np.stack([preprocess(s.source, SIZE) for s in samples])
    labels = np.array([CROPNET_CLASSES.index(s.label) for s in samples])
    return to_model_input(pixels, 1.0), labels


def load_pooled_split(split: str):
    """load_split as the model sees it after its first layer: [N, 56, 56, 3], each pixel the mean of a 4x4 block."""
    samples = folder_samples(standin_dir() / "data" / split)
    pooled = np.stack([pool_pixels(to_model_input(preprocess(s.source, SIZE), 1.0)) for s in samples])
    return pooled, np.array([CROPNET_CLASSES.index(s.label) for s in samples])


def pool_pixels(x: np.ndarray, factor: int = POOL) -> np.ndarray:
    """Average factor x factor blocks of [..., H, W, C]: what AveragePooling2D(factor) computes (H, W divisible)."""
    *lead, h, w, c = x.shape
    blocks = x.reshape(*lead, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(-4, -2), dtype=np.float32)


def build_model(recipe: Recipe = FAST):
    """(full, head): the 224-px model that is exported, and the same layers after the pooling, for pooled input."""
    import keras
    from keras import layers

    body = []
    for filters in (16, 32, 64):
        if recipe.batch_norm:
            body += [layers.Conv2D(filters, 3, padding="same", use_bias=False),
                     layers.BatchNormalization(momentum=0.9),  # 0.99: moving means unsettled after 4 epochs
                     layers.ReLU()]
        else:
            body += [layers.Conv2D(filters, 3, padding="same", activation="relu")]
        body.append(layers.MaxPooling2D(2))
    body += [layers.GlobalAveragePooling2D(),
             layers.Dense(len(CROPNET_CLASSES), activation="softmax", name="probabilities")]

    def head_of(x):
        for layer in body:
            x = layer(x)
        return x

    image = keras.Input((SIZE, SIZE, 3), name="image")
    full = keras.Model(image, head_of(layers.AveragePooling2D(POOL)(image)), name="cassava_standin")
    pooled = keras.Input((SIZE // POOL, SIZE // POOL, 3), name="pooled")
    return full, keras.Model(pooled, head_of(pooled), name="cassava_standin_head")  # the two share their layers


def fit_with_progress(model, x, y, epochs: int, batch_size: int, description: str = "training the stand-in"):
    """`model.fit` with one tqdm bar on stderr (steps, accuracy so far) instead of Keras's per-epoch lines."""
    import keras
    from tqdm import tqdm

    steps = -(-len(x) // batch_size)

    class Progress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}, accuracy {(logs or {}).get('accuracy', 0):.3f}")

    with tqdm(total=epochs * steps, desc=description, unit="step", file=sys.stderr, leave=False) as bar:
        return model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0, callbacks=[Progress()])


def train(out_dir: Path, chosen: Recipe = FAST) -> dict:
    """Train with `chosen` (deterministic), export the 224-px model to out_dir; returns the statistics."""
    from cassava.shared.native import import_tensorflow

    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    started = time.time()
    x_train, y_train = load_pooled_split("train") if chosen.pooled else load_split("train")
    full, head = build_model(chosen)
    model = head if chosen.pooled else full
    steps = chosen.epochs * -(-len(x_train) // chosen.batch_size)
    rate = chosen.learning_rate
    if chosen.cosine:
        rate = keras.optimizers.schedules.CosineDecay(rate, steps)
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit_with_progress(model, x_train, y_train, chosen.epochs, chosen.batch_size)
    x_val, y_val = load_pooled_split("validation") if chosen.pooled else load_split("validation")
    _, val_accuracy = model.evaluate(x_val, y_val, verbose=0)  # the head's weights are the exported model's
    full.export(str(out_dir), format="tf_saved_model", verbose=False)
    return {"val_accuracy": float(val_accuracy), "train_seconds": round(time.time() - started, 1),
            "recipe": chosen.name, "epochs": chosen.epochs}


def ensure_standin() -> Path:
    """The stand-in SavedModel dir, trained on first use (well under a minute on 2 cores) and cached after."""
    return built_once(standin_model_dir(), "standin", build_standin,
                      f"Building the offline stand-in model ({STANDIN_NOTE}) in {standin_model_dir()} ...",
                      lambda folder: f"Stand-in ready: {(folder / 'TRAINING.txt').read_text().strip()}")


def build_standin(target: Path, recipe: Recipe = FAST) -> dict:
    """Draw the synthetic photos (once per cache), train, export and describe the stand-in in folder `target`."""
    from concurrent.futures import ThreadPoolExecutor

    from cassava.shared.native import import_tensorflow

    with ThreadPoolExecutor(1) as pool:  # the photos are drawn in child processes: import TensorFlow meanwhile
        drawing = pool.submit(ensure_dataset, standin_dir() / "data")
        import_tensorflow()
        drawing.result()
    stats = train(target, recipe)
    spec = ModelSpec(
        input_size=SIZE, input_scale=1.0, class_names=CROPNET_CLASSES,
        description="stand-in CNN with CropNet's interface", standin=True,
    )
    spec.save(target)
    (target / "TRAINING.txt").write_text(
        f"{STANDIN_NOTE}: synthetic-leaf validation accuracy {stats['val_accuracy']:.3f} (not cassava accuracy), "
        f"recipe {stats['recipe']} ({stats['epochs']} epochs), trained in {stats['train_seconds']} s\n"
    )
    return stats
