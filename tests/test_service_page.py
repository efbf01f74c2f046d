"""The page at / in a real headless browser: Debian's chromium driven by Playwright.

Playwright's own browser download needs the network, so the test drives the system's
chromium (`apt-get install chromium`; CI installs it in .ci/run).
"""

import shutil
import time

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from service_fixtures import build_client_folder

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


def test_the_page_shows_the_nodes_data_beside_its_fill(browser, service_base, client_folder, tmp_path):
    with _service(service_base, client_folder, tmp_path / "store") as fresh:
        page, errors = _open(browser, fresh.url)
        rows = page.locator("#data tr")
        expect(rows).to_have_count(3)
        expect(rows.nth(0)).to_contain_text("cat")
        assert [rows.nth(i).locator("td").nth(1).inner_text().strip() for i in range(3)] == ["6", "3", "1"]
        expect(rows.nth(0).locator("td").nth(2)).to_have_text("—")  # no fill yet
        expect(rows.nth(0).locator("img.real-sample")).to_have_count(4)
        job = httpx.post(f"{fresh.url}/v1/fill", json={"mode": "noise", "supplement": 1.0}).json()
        expect(page.locator("#fill-job")).to_have_text(f"fill job {job['id']}", timeout=60_000)  # no reload
        planned = httpx.get(f"{fresh.url}/v1/jobs/{job['id']}").json()["result"]["plan"]["counts"]["noise"]
        assert [rows.nth(i).locator("td").nth(2).inner_text().strip() for i in range(3)] == [str(n) for n in planned]
        expect(rows.nth(2).locator("img.synthetic-sample")).to_have_count(min(4, planned[2]))
        assert errors == []
        page.close()


def test_the_page_follows_a_run_the_node_trains_for(browser, service_base, tmp_path):
    import torch

    from regl.fl.experiment import new_model
    from regl.fl.remote_update import pack_arrays
    from regl.fl.settings import ExperimentSettings

    torch.set_num_threads(1)
    folder = build_client_folder(tmp_path / "node", per_class=(10, 5, 2))
    run = ExperimentSettings(dataset="fashion-mnist", classes="cat,dog,owl", test_data=str(folder), num_rounds=4)
    weights = pack_arrays({k: v.numpy().copy() for k, v in new_model(run).state_dict().items()})
    settings = ServiceSettings(
        base=service_base, data=str(folder), classes="cat,dog,owl", threads=1, store=tmp_path / "store"
    )
    with ThreadedServer(create_app(settings)) as node:
        page, errors = _open(browser, node.url)
        expect(page.locator("#no-runs")).to_be_visible()
        for server_round, accuracy in ((1, [0.1]), (2, [0.1, 0.35])):
            config = {**run.to_config(), "server-round": server_round, "global-accuracy": accuracy}
            body = {"config": config, "client": 0, "data_dir": str(folder), "weights": weights}
            assert httpx.post(f"{node.url}/v1/train", json=body, timeout=120).status_code == 200
            shown = page.locator(f'section[data-run="{run.name}"]')
            expect(shown).to_contain_text(f"trained rounds {', '.join(map(str, range(1, server_round + 1)))} of 4")
        expect(shown).to_contain_text("global accuracy 35.00% after round 1")  # live: the page was not reloaded
        assert len(shown.locator("polyline").get_attribute("points").split()) == 2
        assert page.locator("#no-runs").is_hidden() and errors == []
        page.close()
