"""A MobileNetV3 with CropNet's interface, trained briefly on the stand-in's synthetic leaves, for the conversion
tests (tests/test_mobilenet.py; not part of the product).

CropNet is a MobileNetV3. Its hard-swish activations and squeeze-excite blocks (global pooling, multiply) are where
int8 conversions go wrong, and the stand-in's plain CNN has neither. This model has both: keras.applications'
MobileNetV3Small, weights=None (no download), 224x224x3 floats in [0, 1] -> 6 softmax probabilities. Trained for a
few epochs only (a minute or two on 2 cores), cached in $CASSAVA_CACHE, exported with `model.export()` like the
stand-in. Its numbers are "stand-in model, synthetic data", never cassava accuracy.
"""
from __future__ import annotations

import time
from pathlib import Path

from cassava.cloud.standin import SIZE, load_split
from cassava.shared.cache import built_once, cache_dir, standin_dir
from cassava.shared.labels import CROPNET_CLASSES
from cassava.shared.spec import STANDIN_NOTE, ModelSpec
from cassava.shared.synthetic import ensure_dataset

VERSION = "mobilenetv3-v1"  # bump when the architecture or the training changes
EPOCHS = 6
# keras.applications' MobileNetV3 keeps BatchNorm statistics with momentum 0.999: after a few dozen steps they
# would still be near their initial values, and the exported (inference-mode) model would answer noise.
BN_MOMENTUM = 0.9


def model_dir() -> Path:
    return cache_dir() / VERSION / "saved_model"


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    # include_preprocessing=False drops keras' own Rescaling, which expects 0-255; the network is designed for
    # [-1, 1], so map CropNet's [0, 1] there explicitly.
    x = layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), weights=None, include_top=False, include_preprocessing=False, pooling="avg",
        minimalistic=False)  # not minimalistic: keeps hard-swish and squeeze-excite, what this model is for
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    x = backbone(x)
    outputs = layers.Dense(len(CROPNET_CLASSES), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cassava_mobilenetv3")


def train(out_dir: Path) -> dict:
    from cassava.shared.native import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    x_train, y_train = load_split("train")
    x_val, y_val = load_split("validation")
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.time()
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, shuffle=True, verbose=2)
    _, val_accuracy = model.evaluate(x_val, y_val, verbose=0)
    model.export(str(out_dir), format="tf_saved_model", verbose=False)
    return {"val_accuracy": float(val_accuracy), "train_seconds": round(time.time() - started, 1)}


def ensure_mobilenet() -> Path:
    """The MobileNetV3 SavedModel dir, trained on first use and cached after (with cassava-model.json beside it)."""
    return built_once(model_dir(), VERSION, build_mobilenet,
                      f"Training a MobileNetV3-Small on synthetic leaves ({STANDIN_NOTE}) in {model_dir()} ...",
                      lambda folder: f"MobileNetV3 ready: {(folder / 'TRAINING.txt').read_text().strip()}")


def build_mobilenet(target: Path) -> None:
    ensure_dataset(standin_dir() / "data")
    stats = train(target)
    ModelSpec(input_size=SIZE, input_scale=1.0, class_names=CROPNET_CLASSES, standin=True,
              description="MobileNetV3-Small with CropNet's interface").save(target)
    (target / "TRAINING.txt").write_text(
        f"{STANDIN_NOTE}: synthetic-leaf validation accuracy {stats['val_accuracy']:.3f} "
        f"(not cassava accuracy), {EPOCHS} epochs in {stats['train_seconds']} s\n")
