"""The demo page in a real browser (Debian's Chromium driven by Playwright): every operation,
non-blank results, plain-words errors, screenshots, and the CORS rule from other origins."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from .system import needs
from .test_deploy import ROOT, free_port, wait_ready

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
STATIC = ROOT / "service" / "static"
SHOTS = Path(os.environ.get("LATENTSERVE_SCREENSHOTS", ROOT / "runs" / "screenshots"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip

pytestmark = needs("chromium")

RANGE_JS = """async (selector) => {
  const shown = document.querySelector(selector);
  if (!shown || !shown.src) return -1;
  // decode a copy of what is shown now: an animated <img> (the interpolation player) may
  // change its src meanwhile, and decode() on the live element then rejects
  const img = new Image();
  img.src = shown.src;
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let lo = 255, hi = 0;
  for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
  return hi - lo;
}"""


def serve_static(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(STATIC)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    if not any((ROOT / "weights").glob("*/model.safetensors")):
        pytest.skip("the shipped weights are not in weights/ yet")
    api, allowed, denied = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(api),
           "LATENTSERVE_CORS_ORIGINS": f"http://127.0.0.1:{allowed}"}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    procs += [serve_static(allowed), serve_static(denied)]
    try:
        wait_ready(f"http://127.0.0.1:{api}/health/ready")
        wait_ready(f"http://127.0.0.1:{allowed}/index.html")
        wait_ready(f"http://127.0.0.1:{denied}/index.html")
        yield {
            "api": f"http://127.0.0.1:{api}",
            "allowed": f"http://127.0.0.1:{allowed}",
            "denied": f"http://127.0.0.1:{denied}",
        }
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(params=[True])
def page(browser, request):
    # Playwright's string predicates need eval, which our CSP forbids: the operations test
    # bypasses the CSP, and test_the_page_runs_under_its_csp checks the page without it.
    context = browser.new_context(
        viewport={"width": 1280, "height": 1100}, bypass_csp=request.param
    )
    p = context.new_page()
    p.problems = []  # type: ignore[attr-defined]
    p.on("console", lambda m: m.type == "error" and p.problems.append(m.text))  # type: ignore[attr-defined]
    p.on("pageerror", lambda e: p.problems.append(str(e)))  # type: ignore[attr-defined]
    yield p
    context.close()


def pick(page, family: str) -> str:
    options = page.eval_on_selector_all(
        "#model option", "os => os.map(o => [o.value, JSON.parse(o.dataset.model).family])"
    )
    name = next(value for value, fam in options if fam == family)
    page.select_option("#model", name)
    return name


def not_blank(page, selector: str) -> None:
    page.wait_for_function(f"document.querySelector('{selector}').src.startsWith('data:image/png')")
    assert page.evaluate(RANGE_JS, selector) > 20, f"{selector} is blank"


def draw(page) -> None:
    box = page.locator("#draw").bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.2
    page.mouse.move(x0, y0)
    page.mouse.down()
    for dx, dy in ((0.4, 0), (0.4, 0.6), (0, 0.6), (0, 0)):
        page.mouse.move(
            box["x"] + box["width"] * (0.3 + dx), box["y"] + box["height"] * (0.2 + dy), steps=5
        )
    page.mouse.up()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_every_operation_in_the_browser(page, servers, tmp_path: Path) -> None:
    page.goto(servers["api"] + "/")
    page.wait_for_selector("#model option", state="attached")
    expect(page.locator("#error")).to_be_hidden()
    shot(page, "01-first-view")

    pick(page, "classifier")  # it cannot generate
    expect(page.locator("#generate-section")).to_be_hidden()
    pick(page, "dae")  # by its fitted mixture (the default) or its GSN chain
    expect(page.locator("#generate-section")).to_be_visible()
    pick(page, "ae")  # generates through the Gaussian mixture fitted to its codes
    expect(page.locator("#generate-section")).to_be_visible()
    expect(page.locator("#latent-section")).to_be_hidden()  # its prior is not N(0, I)
    page.click("#generate")
    not_blank(page, "#grid")
    expect(page.locator("#reconstruct")).to_be_visible()
    draw(page)
    page.click("#reconstruct")
    not_blank(page, "#output")
    not_blank(page, "#original")

    pick(page, "dae")
    page.select_option("#noise-kind", "gaussian")
    page.click("#denoise")
    not_blank(page, "#noisy")
    not_blank(page, "#output")
    shot(page, "02-denoise")

    # the dae's two samplers: its fitted latent density (default) and its GSN chain, watched
    # as the GIF the server draws
    expect(page.locator("#sampler-label")).to_be_visible()
    assert page.eval_on_selector_all("#sampler option", "os => os.map(o => o.value)") == [
        "latent",
        "chain",
    ]
    expect(page.locator("#animate-label")).to_be_hidden()  # only for a chain
    page.select_option("#sampler", "chain")
    expect(page.locator("#chain-steps-label")).to_be_visible()
    page.fill("#chain-steps", "5")
    page.fill("#n", "4")
    page.check("#animate")
    page.evaluate("document.querySelector('#grid').removeAttribute('src')")
    with page.expect_request("**/generate?format=gif") as sent:
        page.click("#generate")
    assert sent.value.post_data_json | {"seed": 0} == {
        "n": 4,
        "seed": 0,
        "temperature": 1,
        "sampler": "chain",
        "steps": 5,
    }
    assert sent.value.headers["accept"] == "image/gif"
    page.wait_for_function(
        "(document.querySelector('#grid').getAttribute('src') || '').startsWith('data:image/gif')"
    )
    page.uncheck("#animate")
    page.select_option("#sampler", "latent")
    expect(page.locator("#chain-steps-label")).to_be_hidden()

    buffer = io.BytesIO()
    img = Image.new("L", (28, 28), 0)
    img.paste(230, (6, 4, 22, 26))
    img.save(buffer, format="PNG")
    (tmp_path / "b.png").write_bytes(buffer.getvalue())
    page.check("#ends-images")
    page.set_input_files("#upload-b", str(tmp_path / "b.png"))
    page.fill("#steps", "8")
    page.click("#interpolate")
    not_blank(page, "#frame")
    expect(page.locator("#frame-slider")).to_have_attribute("max", "7")

    pick(page, "vae")
    page.fill("#seed", "42")
    page.evaluate("document.querySelector('#grid').removeAttribute('src')")  # the AE's grid
    page.click("#generate")
    not_blank(page, "#grid")
    first = page.get_attribute("#grid", "src")
    page.evaluate("document.querySelector('#grid').removeAttribute('src')")
    page.click("#generate")
    expect(page.locator("#grid")).to_have_attribute("src", first)  # same seed, same grid

    not_blank(page, "#latent-image")
    before = page.get_attribute("#latent-image", "src")
    slider = page.locator("#sliders input").first
    slider.fill("2.5")
    page.wait_for_function(f"document.querySelector('#latent-image').src !== {before!r}")

    page.check("#ends-seeds")
    page.fill("#steps", "12")
    page.click("#interpolate")
    # the reply sets the slider's range and the first frame together; until then the last
    # interpolation's frames are on the page (filling the slider then raced the reply)
    expect(page.locator("#frame-slider")).to_have_attribute("max", "11")
    not_blank(page, "#frame")
    frame0 = page.get_attribute("#frame", "src")
    page.locator("#frame-slider").fill("11")
    expect(page.locator("#frame-out")).to_have_text("12/12")
    expect(page.locator("#frame")).not_to_have_attribute("src", frame0)
    shot(page, "03-vae")

    expect(page.locator("#class-label")).to_be_hidden()  # the VAE is not class-conditional
    pick(page, "cvae")
    classes = page.eval_on_selector_all("#class option", "os => os.map(o => o.value)")
    assert classes[0] == "" and "sneaker" in classes and len(classes) == 11
    page.select_option("#class", "sneaker")
    page.fill("#n", "8")
    with page.expect_request("**/generate") as sent:
        page.click("#generate")
    assert sent.value.post_data_json["class"] == "sneaker"
    not_blank(page, "#grid")
    shot(page, "05-class")

    pick(page, "pixelcnn")  # an exact likelihood, an anomaly verdict, pixel-by-pixel samples
    expect(page.locator("#density-section")).to_be_visible()
    expect(page.locator("#latent-section")).to_be_hidden()  # no latent code
    page.click("#clear")
    draw(page)
    page.click("#likelihood")
    expect(page.locator("#density-result")).to_contain_text("exact")
    expect(page.locator("#density-result")).to_contain_text("8-bit discrete")
    page.click("#anomaly")
    expect(page.locator("#density-result")).to_contain_text("percentile")
    expect(page.locator("#density-result")).to_contain_text("input complexity")
    page.fill("#n", "4")
    page.evaluate("document.querySelector('#grid').removeAttribute('src')")
    page.click("#generate")
    not_blank(page, "#grid")
    shot(page, "06-density")

    page.fill("#n", "1000")
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("n: at most 256, got 1000")
    expect(page.locator("#busy")).to_be_hidden()  # waits: the error may show a moment before
    shot(page, "04-error")
    assert [p for p in page.problems if "422" not in p] == [], (
        page.problems
    )  # only the error we caused


def test_cross_origin_rule(page, servers) -> None:
    page.goto(f"{servers['allowed']}/index.html?api={servers['api']}")
    page.wait_for_selector("#model option", state="attached")
    expect(page.locator("#error")).to_be_hidden()
    page.goto(f"{servers['denied']}/index.html?api={servers['api']}")
    expect(page.locator("#error")).to_contain_text("origin is not allowed (CORS)")
    expect(page.locator("#model option")).to_have_count(0)


@pytest.mark.parametrize("page", [False], indirect=True)
def test_the_page_runs_under_its_csp(page, servers) -> None:
    page.goto(servers["api"] + "/")
    page.wait_for_selector("#model option", state="attached")
    page.select_option("#model", "vae-fashion")
    page.click("#generate")
    page.wait_for_selector("#grid[src^='data:image/png']", state="attached")
    page.wait_for_selector("#latent-image[src^='data:image/png']", state="attached")
    assert page.problems == [], page.problems


def canvas_point(page, map_: dict, point: list[float]) -> tuple[float, float]:
    """Where a point of the atlas is on the screen (atlas.js's toPixel, then the CSS box)."""
    page.locator("#atlas").scroll_into_view_if_needed()
    box = page.locator("#atlas").bounding_box()
    side, pad = 480, 14
    (x0, x1), (y0, y1) = map_["bounds"]["x"], map_["bounds"]["y"]
    px = pad + (point[0] - x0) / (x1 - x0) * (side - 2 * pad)
    py = pad + (1 - (point[1] - y0) / (y1 - y0)) * (side - 2 * pad)
    return box["x"] + px * box["width"] / side, box["y"] + py * box["height"] / side


def test_the_latent_atlas(page, servers, tmp_path: Path) -> None:
    import httpx

    timings = {}
    page.goto(servers["api"] + "/")
    page.wait_for_selector("#model option", state="attached")
    name = pick(page, "vae")
    map_ = httpx.get(f"{servers['api']}/v1/models/{name}/atlas?projection=tsne").json()
    atlas = page.locator("#atlas")
    expect(atlas).to_have_attribute("data-projection", "tsne")
    expect(atlas).to_have_attribute("data-points", str(map_["count"]))
    assert map_["count"] == 2000
    timings["load_ms"] = float(atlas.get_attribute("data-load-ms"))
    legend = page.locator("#atlas-legend li")
    expect(legend).to_have_count(len(set(map_["labels"])))
    expect(page.locator("#atlas-table tr")).to_have_count(len(set(map_["labels"])))
    expect(page.locator("#atlas-image + .empty")).to_be_visible()  # an empty state, no icon

    # hover a point: its thumbnail and class
    x, y = canvas_point(page, map_, map_["points"][0])
    page.mouse.move(x - 3, y)
    page.mouse.move(x, y)
    expect(page.locator("#atlas-tooltip")).to_be_visible()
    label = page.locator("#atlas-thumb-label").inner_text()
    assert label.split(" · ")[0] in map_["class_names"]

    # click: decode that point (twice: the second is the warm figure)
    for k, point in enumerate((map_["points"][0], map_["points"][1])):
        page.evaluate("document.querySelector('#atlas-image').removeAttribute('src')")
        page.mouse.click(*canvas_point(page, map_, point))
        not_blank(page, "#atlas-image")
        expect(page.locator("#atlas-status")).to_contain_text("Decoded")
        timings[f"decode_click_{k + 1}_ms"] = float(atlas.get_attribute("data-decode-ms"))

    # drag: the path plays frame by frame to the end
    page.fill("#atlas-steps", "12")
    a, b = canvas_point(page, map_, map_["points"][2]), canvas_point(page, map_, map_["points"][3])
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=6)
    page.mouse.up()
    expect(atlas).to_have_attribute("data-frames", "12")
    expect(atlas).to_have_attribute("data-frame", "12")
    not_blank(page, "#atlas-image")
    expect(page.locator("#atlas-status")).to_contain_text("Playing 12 frames")
    page.mouse.move(*canvas_point(page, map_, map_["points"][4]))
    expect(page.locator("#atlas-tooltip")).to_be_visible()
    page.locator("#atlas-section").screenshot(path=str(SHOTS / "atlas-section.png"))

    # the keyboard does the same: arrows move the cross, Enter decodes, Space marks, P plays
    atlas.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowUp")
    expect(page.locator("#atlas-status")).to_contain_text("Cross at")
    page.keyboard.press("Space")
    expect(page.locator("#atlas-status")).to_contain_text("Start marked")
    for _ in range(3):
        page.keyboard.press("Shift+ArrowLeft")
    page.keyboard.press("p")
    expect(page.locator("#atlas-status")).to_contain_text("Playing 12 frames")
    page.keyboard.press("Enter")
    expect(page.locator("#atlas-status")).to_contain_text("Decoded")

    # a legend entry hides its class
    first = page.locator("#atlas-legend button").first
    first.click()
    expect(first).to_have_attribute("aria-pressed", "false")

    # your image onto the map; the PCA plane too
    buffer = io.BytesIO()
    img = Image.new("L", (28, 28), 0)
    img.paste(220, (3, 16, 25, 23))  # a low, wide light shape: shoe-like
    img.save(buffer, format="PNG")
    (tmp_path / "shoe.png").write_bytes(buffer.getvalue())
    page.set_input_files("#upload", str(tmp_path / "shoe.png"))
    page.select_option("#atlas-projection", "pca")
    expect(atlas).to_have_attribute("data-projection", "pca")
    page.click("#atlas-locate")
    expect(page.locator("#atlas-status")).to_contain_text("Your image lands at")
    assert atlas.get_attribute("data-located")
    expect(page.locator("#atlas-summary")).to_contain_text("of the codes' variance")
    shot(page, "07-atlas")

    # a model with an anomaly score says its verdict beside the point
    pick(page, "rbm")
    expect(atlas).to_have_attribute("data-points", "2000")
    page.click("#atlas-locate")
    expect(page.locator("#atlas-status")).to_contain_text("Anomaly check:")

    pick(page, "pixelcnn")  # no code: no atlas
    expect(page.locator("#atlas-section")).to_be_hidden()
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "atlas-timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"atlas timings (ms): {timings}")
    assert page.problems == [], page.problems


def test_a_first_visit_shows_empty_states_and_only_what_applies(page, servers) -> None:
    page.goto(servers["api"] + "/")
    page.wait_for_selector("#model option", state="attached")
    pick(page, "dae")
    for img in ("#original", "#noisy", "#output", "#frame"):  # no broken-image icons
        expect(page.locator(img)).to_be_hidden()
        expect(page.locator(f"{img} + .empty")).to_be_visible()
    # interpolation ends: the dae draws codes from its fitted mixture, so seeds are offered
    # (the shipped models all generate now; no shipped one interpolates between images only)
    expect(page.locator("#ends-seeds-label")).to_be_visible()
    pick(page, "vae")  # a VAE does both; each choice shows its own inputs
    expect(page.locator("#ends-seeds-label")).to_be_visible()
    expect(page.locator("#seed-a")).to_be_visible()
    expect(page.locator("#upload-b")).to_be_hidden()
    page.check("#ends-images")
    expect(page.locator("#seed-a")).to_be_hidden()
    expect(page.locator("#upload-b")).to_be_visible()

    # a slow call says why: held back here by a second, so it is slow on any machine
    def slow(route) -> None:
        time.sleep(1.0)
        route.continue_()

    name = pick(page, "ae")
    page.route("**/reconstruct", slow)
    draw(page)
    page.click("#reconstruct")
    expect(page.locator("#busy-reason")).to_contain_text(f"first reconstruct call to {name}")
    not_blank(page, "#output")
    expect(page.locator("#busy-reason")).to_be_hidden()
    assert page.problems == [], page.problems
