"""The pixel budget's own logic, in process: limits and their messages, the gate, header-only checks, and the
large-image resize giving exactly the pixels of the whole-image path."""
from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from cassava.shared.budget import PixelGate, PixelLimits, TooManyPixels, check_image, check_request
from cassava.shared.errors import BadImage, CassavaError
from cassava.shared.preprocess import ROWS_ABOVE, image_size, preprocess, resize_bilinear
from cassava.shared.protocol.images import BadPayload, ImagePayloadCodec


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_an_image_over_the_limit_names_its_size_and_the_limit():
    assert check_image((100, 50), 5000, "x") == 5000
    with pytest.raises(TooManyPixels, match=r"x: 100x51 = 5,100 pixels is above the limit of 5,000 pixels per image"):
        check_image((100, 51), 5000, "x")
    assert TooManyPixels.status == 413 and issubclass(TooManyPixels, BadImage)  # clients treat it as a bad image


def test_a_request_over_the_limit_names_the_total_the_limit_and_the_largest():
    limits = PixelLimits(image=100, request=250, decoding=100)
    assert check_request([(10, 10), (10, 10)], limits, "photos") == 200
    with pytest.raises(TooManyPixels, match=r"3 images declare 300 pixels in all, above the limit of 250 pixels per "
                                            r"request \(the largest is 10x10\)"):
        check_request([(10, 10)] * 3, limits, "photos")
    with pytest.raises(TooManyPixels, match=r"input 'photos'\[1\]: 11x10"):  # the image at fault, by index
        check_request([(10, 10), (11, 10)], limits, "photos")


def test_limits_come_from_settings_and_must_fit_together():
    assert PixelLimits.from_extra({}) == PixelLimits()
    assert PixelLimits.from_extra({"max_image_pixels": "10", "max_decoding_pixels": 20}).image == 10
    with pytest.raises(CassavaError, match="must be at least max_image_pixels"):
        PixelLimits(image=100, decoding=99)
    with pytest.raises(CassavaError, match="at least 1"):
        PixelLimits(request=0)
    # the defaults let every phone photo through (a 64 MP sensor: 9248x6936) and fit a 1 GB Pi's decode budget
    assert 9248 * 6936 <= PixelLimits().image <= PixelLimits().decoding


def test_the_gate_never_holds_more_pixels_than_its_capacity_and_lets_small_ones_past_a_waiting_large_one():
    async def scenario():
        gate, order, peak = PixelGate(100), [], [0]

        async def job(name, pixels, seconds):
            async with gate.hold(pixels):
                peak[0] = max(peak[0], gate.in_use)
                order.append(name)
                await asyncio.sleep(seconds)

        first = asyncio.create_task(job("first 60", 60, 0.2))
        await asyncio.sleep(0.01)
        large = asyncio.create_task(job("large 90", 90, 0.01))  # waits for the first to finish
        await asyncio.sleep(0.01)
        small = asyncio.create_task(job("small 30", 30, 0.01))  # fits beside the first: goes ahead of the large
        oversize = asyncio.create_task(job("over 500", 500, 0.01))  # clipped to the capacity: waits, never hangs
        await asyncio.wait_for(asyncio.gather(first, large, small, oversize), 5)
        return order, peak[0], gate.in_use

    order, peak, left = asyncio.run(scenario())
    assert order.index("small 30") < order.index("large 90") and set(order) == {"first 60", "large 90", "small 30",
                                                                                   "over 500"}
    assert peak <= 100 and left == 0


def test_headers_alone_decide_before_any_decoding():
    started = time.perf_counter()
    with pytest.raises(BadPayload, match=r"input 'photos'\[1\]: image bytes: 60000x60000") as caught:
        ImagePayloadCodec.decode_costs([_png_header(10, 10), _png_header(60000, 60000)], 224)
    assert caught.value.status == 413 and time.perf_counter() - started < 1
    with pytest.raises(BadPayload, match="pixels per request") as caught:
        ImagePayloadCodec.decode_costs([_png_header(8000, 8000)] * 5, 224)
    assert caught.value.status == 413
    with pytest.raises(BadPayload, match="not an image") as caught:
        ImagePayloadCodec.decode_costs([b"%PDF-1.4"], 224)
    assert caught.value.status == 400


def test_a_drafted_jpeg_costs_what_it_decodes_to():
    photo = _encoded(Image.new("RGB", (4000, 3000), (20, 90, 40)), "JPEG")
    assert image_size(photo) == (4000, 3000, 12_000_000)
    width, height, decoded = image_size(photo, draft_size=224)
    assert (width, height) == (4000, 3000) and decoded == 1000 * 750  # 1/4 scale: still at least 2x the input
    assert ImagePayloadCodec.decode_costs([photo], 224, draft=True) == [750_000]
    png = _encoded(Image.new("RGB", (4000, 3000)), "PNG")
    assert image_size(png, draft_size=224)[2] == 12_000_000  # only JPEGs draft


@pytest.mark.parametrize("mode", ["RGB", "P", "L", "RGBA", "I;16"])
def test_large_images_resize_from_their_rows_to_exactly_the_whole_image_pixels(mode):
    """Above ROWS_ABOVE the resize takes only the rows it reads out of Pillow: the same uint8 pixels."""
    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 256, (1500, 3000, 3), dtype=np.uint8))
    image = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    assert 1500 * 3000 > ROWS_ABOVE
    photo = _encoded(image, "PNG")
    whole = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    for size in (224, 256):
        expected = np.clip(np.rint(resize_bilinear(whole, size)), 0, 255).astype(np.uint8)
        assert np.array_equal(preprocess(photo, size), expected)


def test_serve_flags_become_settings(tmp_path):
    from cassava.shared.server.serve import ServeOptions, decoding_settings, write_run_dir

    extra = decoding_settings(ServeOptions(tier="edge", max_image_pixels=1000, max_decoding_pixels=2000,
                                           jpeg_draft=True))
    assert extra == {"max_image_pixels": 1000, "max_decoding_pixels": 2000, "jpeg_draft": True}
    run_dir = write_run_dir(tmp_path / "run", "edge", str(tmp_path / "m.tflite"), "127.0.0.1", (1, 2, 3),
                            extra=extra)
    import json

    written = json.loads((run_dir / "model-settings.json").read_text())["parameters"]["extra"]
    assert written["max_image_pixels"] == 1000 and written["jpeg_draft"] is True
    assert written["max_request_pixels"] == PixelLimits().request  # shipped
    with pytest.raises(CassavaError, match="must be at least max_image_pixels"):
        decoding_settings(ServeOptions(tier="edge", max_decoding_pixels=10))
