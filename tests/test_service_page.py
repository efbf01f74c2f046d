"""The page at / in a real headless browser: Debian's chromium driven by Playwright.

Playwright's own browser download needs the network, so the test drives the system's
chromium (`apt-get install chromium`; CI installs it in .ci/run).
"""

import shutil
import time

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from regl.service.app import create_app
from regl.service.settings import ServiceSettings
from regl.service.threaded_server import ThreadedServer

CHROMIUM = shutil.which("chromium")
TOKEN = "page-t0ken"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH: apt-get install chromium"),
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


def _service(service_base, client_folder, store, token: str | None = None) -> ThreadedServer:
    return ThreadedServer(
        create_app(ServiceSettings(base=service_base, data=str(client_folder), threads=1, store=store, token=token))
    )


@pytest.fixture(scope="module")
def server(service_base, client_folder, tmp_path_factory):
    with _service(service_base, client_folder, tmp_path_factory.mktemp("page") / "store") as running:
        yield running


def _open(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A fresh tab on the page, and the errors its console reports (a CSP violation is one)."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page, errors


def test_the_page_shows_the_model(browser, server, service_base):
    page, errors = _open(browser, server.url)
    model = page.locator("#model")
    expect(model).to_contain_text(str(service_base))
    expect(model).to_contain_text("cat, dog, owl")
    expect(page.locator("#class option")).to_have_text(["0: cat", "1: dog", "2: owl"])
    assert page.locator("#token-form").is_hidden()  # no token, no field
    assert errors == []
    page.close()


def test_generate_shows_the_chosen_class_and_count(browser, server):
    page, errors = _open(browser, server.url)
    expect(page.locator("#class option")).to_have_count(3)
    page.select_option("#class", label="2: owl")
    page.fill("#count", "3")
    page.fill("#seed", "7")
    page.click("#generate-button")
    images = page.locator("#grid img")
    expect(images).to_have_count(3)
    expect(page.locator("#generate-status")).to_have_text("3 × owl, seed 7")
    assert images.evaluate_all("all => all.map(image => image.alt)") == ["owl #0", "owl #1", "owl #2"]
    expect(images.first).to_have_js_property("naturalWidth", 20)  # decoded: the client's 20×20 format
    assert errors == []
    page.close()


def test_the_job_list_follows_a_fine_tune(browser, server):
    page, errors = _open(browser, server.url)
    expect(page.locator("#no-jobs")).to_be_visible()
    job = httpx.post(
        f"{server.url}/v1/finetune",
        json={"steps": 250, "early_stop": 0, "batch_size": 2, "prior_per_class": 1, "activate": False},  # every step
    ).json()
    row = page.locator(f'tr[data-job="{job["id"]}"]')
    expect(row).to_contain_text("finetune")
    seen = set()
    deadline = time.monotonic() + 300
    while (status := row.get_attribute("data-status")) != "done":
        assert status in ("queued", "running") and time.monotonic() < deadline, row.inner_text()
        seen.add(row.locator("td").nth(3).inner_text().strip())
        time.sleep(0.2)
    expect(row.locator("td").nth(3)).to_have_text("100%")
    assert any(percent not in ("0%", "100%") for percent in seen), seen  # seen part-way
    assert page.locator("#no-jobs").is_hidden() and errors == []
    page.close()


def test_a_token_service_asks_for_its_token(browser, service_base, client_folder, tmp_path):
    with _service(service_base, client_folder, tmp_path / "store", TOKEN) as token_server:
        page, _ = _open(browser, token_server.url)
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#model")).to_be_empty()
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        expect(page.locator("#model")).to_contain_text("cat, dog, owl")
        assert page.locator("#token-form").is_hidden()
        assert page.evaluate("sessionStorage.getItem('regl-token')") == TOKEN
        assert TOKEN not in page.content()  # kept in the tab's storage, never written into the page
        page.close()
