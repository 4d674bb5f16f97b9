"""Build the offline stand-in: a small Keras CNN with CropNet's exact interface, trained on synthetic leaves.

224x224x3 floats in [0, 1] -> 6 softmax probabilities (cbb cbsd cgm cmd healthy unknown), deterministic, cached.
It exists because TF Hub and TFDS are unreachable offline; its numbers are never cassava accuracy.
Exported with `model.export()` (Keras 3): a Keras 3 model saved with `tf.saved_model.save` converts to a TFLite
model that silently returns garbage.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from cassava.shared.cache import build_lock, standin_dir, standin_model_dir
from cassava.shared.data import folder_samples
from cassava.shared.labels import CROPNET_CLASSES
from cassava.shared.preprocess import preprocess, to_model_input
from cassava.shared.spec import STANDIN_NOTE, ModelSpec
from cassava.shared.synthetic import ensure_dataset

log = logging.getLogger(__name__)
SIZE = 224
EPOCHS = 40


def load_split(split: str):
    samples = folder_samples(standin_dir() / "data" / split)
    pixels = np.stack([preprocess(s.source, SIZE) for s in samples])
    labels = np.array([CROPNET_CLASSES.index(s.label) for s in samples])
    return to_model_input(pixels, 1.0), labels


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.AveragePooling2D(4)(inputs)  # 56x56: the symptoms are coarse, and 2 cores must train it quickly
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(len(CROPNET_CLASSES), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cassava_standin")


def train(out_dir: Path) -> dict:
    from cassava.shared.native import import_tensorflow

    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    x_train, y_train = load_split("train")
    x_val, y_val = load_split("validation")
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.time()
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, shuffle=True, verbose=2)
    _, val_accuracy = model.evaluate(x_val, y_val, verbose=0)
    model.export(str(out_dir), format="tf_saved_model", verbose=False)
    return {"val_accuracy": float(val_accuracy), "train_seconds": round(time.time() - started, 1)}


def ensure_standin() -> Path:
    """The stand-in SavedModel dir, trained on first use (about a minute on 2 cores) and cached after."""
    target = standin_model_dir()
    if (target / "cassava-model.json").is_file():
        return target
    with build_lock("standin"):
        if (target / "cassava-model.json").is_file():
            return target
        print(f"Building the offline stand-in model ({STANDIN_NOTE}) in {target} ...", flush=True)
        ensure_dataset(standin_dir() / "data")
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        stats = train(staging)
        spec = ModelSpec(
            input_size=SIZE, input_scale=1.0, class_names=CROPNET_CLASSES,
            description="stand-in CNN with CropNet's interface", standin=True,
        )
        spec.save(staging)
        (staging / "TRAINING.txt").write_text(
            f"{STANDIN_NOTE}: synthetic-leaf validation accuracy {stats['val_accuracy']:.3f} "
            f"(not cassava accuracy), trained in {stats['train_seconds']} s\n"
        )
        staging.rename(target)
        print(f"Stand-in ready: synthetic validation accuracy {stats['val_accuracy']:.3f} ({STANDIN_NOTE})", flush=True)
    return target
