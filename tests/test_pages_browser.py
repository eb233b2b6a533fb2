"""The pages in a real browser: Debian's headless Chromium, driven by Selenium, loads each page from
a local HTTP server (127.0.0.1). Every <video> must reach `loadeddata` with a picture, every <img>
must load, and the console must stay free of errors; playing, pausing, seeking or slowing the
source on a run's page does the same to the edit. One browser serves the whole module.

Needs the `chromium` and `chromium-driver` packages (`make install` adds them where root can
apt-get) and selenium (the test extra); skipped without them."""

from __future__ import annotations

import functools
import http.server
import io
import threading
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from clips import make_clip
from test_cli_errors import dmedit

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ODD_NAME = "<b>&\"'"
LOADED = """
const done = arguments[arguments.length - 1];
const settle = (element, events) => new Promise(
  (ok) => events.forEach((name) => element.addEventListener(name, ok, {once: true})));
const videos = Array.from(document.querySelectorAll("video"));
const images = Array.from(document.images);
Promise.all([
  ...videos.map((video) => video.readyState >= 2 ? null : settle(video, ["loadeddata", "error"])),
  ...images.map((image) => image.complete ? null : settle(image, ["load", "error"])),
]).then(() => done({
  videos: videos.map((video) => [video.getAttribute("src"), video.readyState, video.videoWidth,
                                 video.error && video.error.code]),
  images: images.map((image) => [image.getAttribute("src").slice(0, 40), image.complete, image.naturalWidth]),
}));
"""
SYNCED = """
const done = arguments[arguments.length - 1];
const [source, edited] = [document.querySelector(arguments[0]), document.querySelector(arguments[1])];
const next = (name) => new Promise((ok) => edited.addEventListener(name, ok, {once: true}));
const seen = {};
setTimeout(() => done({...seen, stuck: true}), 20000);
(async () => {
  source.playbackRate = 0.25;
  await new Promise((ok) => setTimeout(ok, 100));
  seen.rate = edited.playbackRate;
  const playing = next("playing");
  await source.play();
  await playing;
  seen.playing = !edited.paused;
  const paused = next("pause");
  source.pause();
  await paused;
  seen.paused = edited.paused;
  const seeked = next("seeked");
  source.currentTime = 0.25;
  await seeked;
  seen.time = edited.currentTime;
  done(seen);
})().catch((error) => done({error: String(error)}));
"""


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """The folder's files, with byte ranges as any web server serves them (a video seeks only
    where its server answers ranges), and no request lines on the test's stderr."""

    def send_head(self) -> Any:
        path = Path(self.translate_path(self.path))
        asked = self.headers.get("Range", "")
        if not asked.startswith("bytes=") or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, _, last = asked.removeprefix("bytes=").split(",")[0].partition("-")
        start = int(first) if first else max(0, size - int(last))
        end = min(int(last) if first and last else size - 1, size - 1)
        with open(path, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [f"{path} (Debian package {package})" for path, package in ((CHROMIUM, "chromium"),
                                                                           (CHROMEDRIVER, "chromium-driver"))
               if not path.exists()]
    if missing:
        pytest.skip("no browser here: missing " + ", ".join(missing) + "; `make install` adds them as root")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(a folder, its URL on 127.0.0.1 at a free port)."""
    root = tmp_path_factory.mktemp("served")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def open_page(driver: Any, url: str) -> dict[str, list]:
    """Load the page; assert every video has a picture, every image loaded, and no console errors."""
    driver.get_log("browser")  # what earlier pages logged
    driver.get(url)
    state = driver.execute_async_script(LOADED)
    assert all(ready >= 2 and width > 0 and error is None
                                   for _, ready, width, error in state["videos"]), state["videos"]
    assert all(complete and width > 0 for _, complete, width in state["images"]), state["images"]
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    return state


def test_a_run_page_plays_source_and_edit_together(browser: Any, served: tuple[Path, str]) -> None:
    root, url = served
    clip = make_clip(root / "clip.mp4", width=96, height=64, frames=16)
    result = dmedit("run", str(clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
                    "--steps", "1", "--frames", "12", "--compare", "--eval", "--eval-scorers", "tiny",
                    "-o", str(root / "edit.mp4"))
    assert result.returncode == 0, result.stderr
    state = open_page(browser, f"{url}/edit.html")
    assert {src for src, *_ in state["videos"]} == {"edit.mp4", "edit.source.mp4", "edit.compare.mp4"}
    assert len(state["images"]) >= 3, "loss figure, eval curves and the first mask"
    seen = browser.execute_async_script(SYNCED, 'video[src="edit.source.mp4"]', 'video[src="edit.mp4"]')
    assert not seen.get("stuck") and not seen.get("error"), f"the edit did not follow the source: {seen}"
    assert seen["rate"] == 0.25 and seen["playing"] and seen["paused"], seen
    assert seen["time"] == pytest.approx(0.25, abs=0.06), seen
    assert "text_align" in browser.find_element("tag name", "main").text, "the model metrics in the table"


def test_a_batch_page_with_a_failed_job_and_an_odd_name(browser: Any, served: tuple[Path, str]) -> None:
    root, url = served
    shots = root / "shots"
    shots.mkdir()
    for name in ("a", ODD_NAME):
        make_clip(shots / f"{name}.mp4", frames=8)
    (shots / "broken.mp4").write_text("this is not a video\n")
    result = dmedit("batch", str(shots), "--src", "a square", "--tgt", "a circle", "--model", "tiny", "--steps", "1",
                    "--frames", "4", "-o", str(root / "batch"))
    assert result.returncode == 6, result.stderr
    state = open_page(browser, f"{url}/batch/index.html")
    assert len(state["images"]) == 2, "a poster for each edit, none for the failed job"
    cards = browser.find_elements("css selector", "article")
    assert [card.find_element("tag name", "h3").text for card in cards] == [f"1. {ODD_NAME}", "2. a", "3. broken"]
    assert browser.find_elements("css selector", "article b") == [], "the name is text, not a <b> element"
    assert "failed (exit 3)" in cards[2].text and "broken.mp4: not a readable video file" in cards[2].text
    cards[0].find_element("link text", "page").click()
    assert browser.current_url == f"{url}/batch/{quote(ODD_NAME)}.html"
    open_page(browser, browser.current_url)
    assert browser.find_element("tag name", "h1").text.startswith(f"{ODD_NAME}.mp4: a square")


def test_an_ablation_page_shows_the_four_runs_and_the_table(browser: Any, served: tuple[Path, str]) -> None:
    root, url = served
    clip = make_clip(root / "ablate.mp4", width=96, height=64, frames=8)
    result = dmedit("ablate", str(clip), "--src", "a red square", "--tgt", "a green square", "--model", "tiny",
                    "--steps", "1", "--frames", "4", "--scorers", "none", "--out-dir", str(root / "ablation"))
    assert result.returncode == 0, result.stderr
    state = open_page(browser, f"{url}/ablation/index.html")
    assert [src for src, *_ in state["videos"]] == ["full.source.mp4", "full.mp4", "no-mask.mp4", "no-s-ssm.mp4",
                                                   "no-t-ssm.mp4", "mask.mask.mp4"]
    rows = [row.text.split()[0:2] for row in browser.find_elements("css selector", "tbody tr")]
    assert [" ".join(row) for row in rows] == ["full method", "w/o mask", "w/o S-SSM", "w/o T-SSM"]
    assert state["images"][0][0].startswith("ablation.png")
