"""The one preprocessing path: decoding, the tutorial-equivalent resize, and what it is refused."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cassava.shared.errors import BadImage
from cassava.shared.preprocess import MAX_IMAGE_PIXELS, decode_image, preprocess, resize_bilinear, to_model_input


def _jpeg(array, quality=90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: a decompression bomb if decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def test_resize_matches_tf_image_resize_within_one_level(real_photos):
    import tensorflow as tf
    for path in sorted(real_photos.glob("*/*.jpg"))[:8]:
        rgb = decode_image(path)
        ours = preprocess(path, 224).astype(np.float32) / 255.0
        # the tutorial: float in [0, 1] first, then tf.image.resize (bilinear, half-pixel centres, no antialias)
        theirs = tf.image.resize(tf.image.convert_image_dtype(rgb, tf.float32), (224, 224)).numpy()
        assert np.abs(ours - theirs).max() <= 1.0 / 255.0 + 1e-6, path.name
        np.testing.assert_allclose(resize_bilinear(rgb, 224), tf.image.resize(rgb, (224, 224)).numpy(), atol=0.02)


def test_upscaling_and_odd_sizes_match_tf():
    import tensorflow as tf
    rng = np.random.default_rng(0)
    for shape in [(13, 7, 3), (100, 300, 3), (224, 224, 3), (301, 99, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_allclose(resize_bilinear(image, 64), tf.image.resize(image, (64, 64)).numpy(), atol=1e-3)


def test_decodes_png_grey_and_rgba_to_rgb():
    grey = np.full((30, 40), 200, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).convert("RGBA").save(buffer, format="PNG")
    rgb = decode_image(buffer.getvalue())
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8 and int(rgb[0, 0, 0]) == 200
    assert decode_image(grey).shape == (30, 40, 3)


def test_same_size_input_is_kept_exactly():
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(preprocess(pixels, 224), pixels)


def test_model_input_ranges():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)
    np.testing.assert_allclose(to_model_input(pixels, 1.0).ravel(), [0.0, 128 / 255, 1.0])
    np.testing.assert_allclose(to_model_input(pixels, 255.0).ravel(), [0.0, 128.0, 255.0])


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
    (_jpeg(np.zeros((64, 64, 3), np.uint8))[:300], "corrupt"),
])
def test_bad_bytes_are_refused_with_a_reason(data, message):
    with pytest.raises(BadImage, match=message):
        preprocess(data, 224)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_header_only(20000, 20000)
    assert len(bomb) < 200
    assert 20000 * 20000 > MAX_IMAGE_PIXELS
    with pytest.raises(BadImage, match="pixel"):
        preprocess(bomb, 224)


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImage, match="cannot read"):
        preprocess(tmp_path / "nope.jpg", 224)
