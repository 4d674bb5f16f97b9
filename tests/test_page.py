"""The phone page (`GET /`, shared/server/page.py) in a real browser against real `cassava serve edge` processes:
Debian's chromium driven by selenium, headless, in a 390x844 phone viewport (tests/browser.py).

Without chromium these tests skip, saying why; on CI (CI=true) they fail instead, so CI never passes without them.
`PAGE_SCREENSHOT=docs/page.png` also writes the screenshot there (the README's).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from browser import emulate, missing, phone_browser, requested_urls
from helpers import REAL_MODEL, REAL_PHOTOS, LoopbackServer, converted, real_args, require_shared

pytestmark = pytest.mark.slow

NAMES = {"cbb": "Cassava Bacterial Blight", "cbsd": "Cassava Brown Streak Disease", "cgm": "Cassava Green Mite",
         "cmd": "Cassava Mosaic Disease", "healthy": "Healthy", "unknown": "Unknown"}


@pytest.fixture(scope="session")
def chromium():
    why = missing()
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)


def serve_edge(model: Path, workdir: Path, *flags):
    """`cassava serve edge --model MODEL` as a real process on free loopback ports, ready (stop() ends it)."""
    return LoopbackServer.serve(workdir, "edge", model, *flags).start(180)


@pytest.fixture(scope="module")
def real_edge(tmp_path_factory, conversions, chromium):
    """The real third-party model's int8 copy behind `cassava serve edge`."""
    require_shared(REAL_MODEL, REAL_PHOTOS)
    server = serve_edge(converted(conversions, "real-int8", *real_args("int8")), tmp_path_factory.mktemp("real-edge"))
    yield server
    server.stop()


@pytest.fixture
def browser(chromium, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with phone_browser(downloads=downloads) as driver:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.downloads = downloads
        yield driver


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def shown(driver, element_id: str) -> bool:
    return driver.find_element("id", element_id).is_displayed()


def wait(condition, timeout: float = 60, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait(lambda: text(driver, "status") == "Ready." or shown(driver, "problem"), 60, "the page's first model check")


def pick(driver, path: Path) -> str:
    """Choose `path` in the page's file input; -> the first result line, or the message when it failed."""
    before = driver.execute_script("return Number(document.body.dataset.finished || 0)")
    driver.find_element("id", "photo").send_keys(str(path))
    wait(lambda: driver.execute_script("return Number(document.body.dataset.finished || 0)") > before, 60,
         f"an answer for {path.name}")
    return text(driver, "problem") if shown(driver, "problem") else text(driver, "top1")


def api_top1(url: str, photo: Path) -> str:
    """The server's answer for the original file, posted as `photos` by the project's client."""
    from cassava.shared.protocol.transport import HttpTransport
    from cassava.shared.protocol.v2 import build_request, decode_response

    transport = HttpTransport(url, retries=0)
    try:
        return decode_response(transport.infer(build_request("photo", photos=[photo.read_bytes()])))[2][0]
    finally:
        transport.close()


def real_photos(per_class: int = 2) -> list:
    return [photo for folder in sorted(p for p in REAL_PHOTOS.iterdir() if p.is_dir())
            for photo in sorted(folder.iterdir())[:per_class]]


# ---------------------------------------------------------------------------------------------- real photos


def test_real_photos_first_line_is_the_apis_top1_and_history_exports(browser, real_edge, tmp_path):
    open_page(browser, real_edge.url)
    assert "edge tier" in text(browser, "model") and not shown(browser, "standin")
    photos = real_photos()
    for photo in photos:
        first_line = pick(browser, photo)
        expected = NAMES[api_top1(real_edge.url, photo)]
        assert re.fullmatch(rf"{expected} \d+(\.\d)?%", first_line), (photo.name, first_line, expected)
        details = text(browser, "details")
        assert details.startswith("Sent ") and "256×256 PNG" in details and " ms by the edge model" in details
        assert len(browser.find_elements("css selector", "#top3 li")) == 3

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PAGE_SCREENSHOT"):  # the README's copy, in 256 colours: a third of the bytes
        Image.open(shot).convert("RGB").quantize(256).save(os.environ["PAGE_SCREENSHOT"], optimize=True)

    items = browser.find_elements("css selector", "#history li")
    assert len(items) == len(photos) and items[0].text.split(": ", 1)[1].startswith(first_line)
    browser.find_element("id", "export").click()
    exported = browser.downloads / "cassava-history.csv"
    wait(exported.is_file, 30, "the CSV download")
    rows = list(csv.DictReader(io.StringIO(exported.read_text())))
    assert [row["file"] for row in rows] == [p.name for p in photos]
    assert all(row["answered_by"] == "edge" and float(row["probability"]) > 0 for row in rows)


def test_the_page_sends_the_pixels_the_server_would_make_from_the_original(browser, real_edge):
    """The page's own scaling (its `prepare`, run in chromium) against the shared preprocessing in Python."""
    from cassava.shared.preprocess import preprocess

    open_page(browser, real_edge.url)
    script = """
    const [b64, done] = arguments;
    const blob = new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: "image/jpeg" });
    window.cassavaPage.prepare(blob, 256).then((p) => done(p.base64), (e) => done("failed: " + e.message));
    """
    for photo in real_photos(1):
        sent = browser.execute_async_script(script, base64.b64encode(photo.read_bytes()).decode())
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(sent))).convert("RGB"))
        assert np.array_equal(pixels, preprocess(photo.read_bytes(), 256)), photo.name


def test_bad_files_are_said_then_a_photo_still_works_and_history_keeps_50(browser, real_edge, tmp_path):
    open_page(browser, real_edge.url)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    assert pick(browser, notes) == '"notes.txt" is not an image. Choose a photo (JPEG, PNG or WebP).'
    disguised = tmp_path / "leaf.jpg"  # an image's name, text inside: the browser cannot decode it
    disguised.write_text("still not a photo\n")
    assert pick(browser, disguised).startswith('"leaf.jpg" is not an image')
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(51 * 1024 * 1024)
    assert pick(browser, huge).startswith("This photo is too large: 51.0 MB")

    # a full history (50 older results): the photo's answer goes first and the oldest goes
    old = [{"time": "2026-01-01T00:00:00Z", "file": f"old-{i}.jpg", "class": "cmd", "name": NAMES["cmd"],
            "probability": "0.5000", "answered_by": "edge", "ms": 1, "bytes_sent": 1} for i in range(50)]
    browser.execute_script("localStorage.setItem('cassava-history', arguments[0])", json.dumps(old))
    photo = real_photos(1)[0]
    assert re.fullmatch(rf"{NAMES[api_top1(real_edge.url, photo)]} \d+(\.\d)?%", pick(browser, photo))
    assert not shown(browser, "problem")
    items = browser.find_elements("css selector", "#history li")
    assert len(items) == 50 and items[0].text.endswith(f"({photo.name})") and items[-1].text.endswith("(old-1.jpg)")


def test_csp_allows_only_its_own_origin_and_the_page_asks_no_other(browser, real_edge):
    response = httpx.get(real_edge.url + "/", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy
    assert "'sha256-" in policy.split("script-src")[1].split(";")[0]

    requested_urls(browser)  # drain what the browser did before the page (its own start-up pages)
    open_page(browser, real_edge.url)
    assert pick(browser, real_photos(1)[0]).endswith("%")  # the inline script ran: its hash is right
    urls = [u for u in requested_urls(browser) if u.split(":", 1)[0] in ("http", "https", "ws", "wss")]
    assert urls and all(u.startswith(real_edge.url + "/") for u in urls), urls
    assert real_edge.url + "/v2/models/cassava/infer" in urls
    refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not refused, refused


def test_usable_at_360px_labelled_controls_big_targets_no_horizontal_scroll(browser, real_edge):
    emulate(browser, 360, 740)
    open_page(browser, real_edge.url)
    for photo in real_photos(1)[:2]:
        pick(browser, photo)
    assert shown(browser, "result")
    layout = browser.execute_script("""
      const controls = [...document.querySelectorAll("input, button")];
      return {
        width: innerWidth, scroll: document.documentElement.scrollWidth,
        unlabelled: controls.filter((c) => c.tagName === "INPUT" ? !c.labels.length : !c.textContent.trim())
                            .map((c) => c.id),
        small: controls.map((c) => [c.id, c.getBoundingClientRect()])
                       .filter(([, r]) => r.width < 44 || r.height < 44).map(([id]) => id),
      };""")
    assert layout["width"] == 360 and layout["scroll"] <= 360, layout
    assert not layout["unlabelled"] and not layout["small"], layout


# ---------------------------------------------------------------------------------------------- the stand-in


def test_standin_note_then_the_server_stopped_is_unreachable(browser, standin_int8, tmp_path):
    server = serve_edge(standin_int8, tmp_path)
    try:
        open_page(browser, server.url)
        assert shown(browser, "standin") and "stand-in model" in text(browser, "standin")
    finally:
        server.stop()
    leaf = tmp_path / "leaf.png"
    Image.new("RGB", (320, 240), (40, 140, 40)).save(leaf)
    message = pick(browser, leaf)
    assert message.startswith("Cannot reach the server at 127.0.0.1:"), message


def test_model_not_ready_is_said(browser, standin_int8, tmp_path):
    """MLServer up, the model not loaded (load_models_at_startup off): the page says the model is not ready."""
    from cassava.shared.server.process import wait_ready
    from cassava.shared.server.serve import write_run_dir

    shipped = write_run_dir(tmp_path / "shipped", "edge", str(standin_int8), "127.0.0.1", (1, 2, 3))
    server = LoopbackServer.mlserver(tmp_path / "server", json.loads((shipped / "model-settings.json").read_text()),
                             {"load_models_at_startup": False, "metrics_dir": str(tmp_path / ".metrics")})
    server.launch()
    try:
        assert wait_ready(server.url + "/v2/health/live", server.process, 120), server.log()[-2000:]
        browser.get(server.url + "/")
        wait(lambda: shown(browser, "problem"), 60, "the not-ready message")
        assert text(browser, "problem").startswith("The model is not ready yet (the server answered ")
    finally:
        server.stop()


def test_no_page_leaves_the_api_only(standin_int8, tmp_path):
    server = serve_edge(standin_int8, tmp_path, "--no-page")
    try:
        assert httpx.get(server.url + "/", timeout=10).status_code == 404
        assert httpx.get(server.url + "/v2/models/cassava/ready", timeout=10).status_code == 200
    finally:
        server.stop()


def test_a_hard_photo_is_answered_at_once_then_updated_when_the_cloud_settles_it(browser, standin_int8, standin_model,
                                                                                 tmp_path):
    """An edge escalating every photo (--escalate-below 1) to a real cloud through an emulated link: the page shows
    the edge's answer at once with "checking with the cloud…", says when the link is down, and shows the cloud's
    answer (and marks the history entry) once it is settled."""
    from cassava.linkemu import LinkEmulator

    photo = sorted((standin_model.parent / "data" / "validation" / "cmd").glob("*.jpg"))[0]
    cloud = LoopbackServer.serve(tmp_path / "cloud", "cloud", "standin").start(300)
    link = LinkEmulator(cloud.http_port).start()
    edge = serve_edge(standin_int8, tmp_path / "edge", "--escalate-to", link.url, "--escalate-below", 1,
                      "--audit-rate", 0, "--outbox", tmp_path / "outbox")
    try:
        open_page(browser, edge.url)
        link.blackhole(True)
        link.reset()  # the uplink's connection to the cloud is lost; its next send fails, the probes time out
        first = pick(browser, photo)
        assert first and not shown(browser, "problem")
        assert "checking with the cloud" in text(browser, "settling") or "link to the cloud is down" in \
            text(browser, "settling")
        assert "[checking with the cloud]" in text(browser, "history")
        wait(lambda: "link to the cloud is down" in text(browser, "settling"), 60, "the link said to be down")
        link.blackhole(False)
        wait(lambda: browser.execute_script("return Number(document.body.dataset.settled || 0)") == 1, 90,
             "the settlement shown")
        assert text(browser, "settling").startswith("Checked by the cloud")
        assert text(browser, "top1").startswith(NAMES[api_top1(cloud.url, photo)])
        assert "[checked by the cloud]" in text(browser, "history")
    finally:
        edge.stop()
        link.stop()
        cloud.stop()
