"""The clinician's page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which `make install` installs through scripts/install_browser.sh) driven by
Selenium against the real app (Ray Serve, a tiny trained DQN checkpoint, a small real classifier).

Each test opens the page afresh, works it as a user would (keyboard for the vitals, the file
picker for a `.psv`), and checks what the page shows against what the API answers when asked
directly. A screenshot of each state goes to one folder, printed at the start (run with `-s` to
see it). The browser's console must stay free of errors.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import httpx
import pytest

# Ray must bind to loopback only on these machines (see the README's Ray section).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed (chromium and chromedriver not both on PATH): "
    "run `make install`, or `bash scripts/install_browser.sh` as root",
)

WAIT_S = 60  # a busy 2-core machine: the first what-if and the first request warm the replica
# Keyboard entry, in the form's tab order: the required vitals come first (OBS_NAMES order).
KEYED_PATIENT = {
    "HR": "118",
    "O2Sat": "89",
    "SBP": "86",
    "DBP": "48",
    "MAP": "61",
    "Resp": "28",
    "Temp": "38.9",
    "Lactate": "4.2",
    "Age": "71",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def classifier_dir(small_psv_dir: Path, tmp_path_factory) -> Path:
    """A real sepsis classifier (logistic regression, no oversampling) on the small cohort: the
    timeline's hourly risk. About 3 s."""
    from data_prep.prepare import prepare
    from training.classification.experiment import run_classification
    from training.classification.options import ClassifyConfig

    root = tmp_path_factory.mktemp("browser_classifier")
    prepare(small_psv_dir, root / "prepared")
    config = ClassifyConfig(oversample=("none",), models=("logreg",), n_boot=100, fidelity=False)
    run_classification(root / "prepared", root / "classify", config)
    return root / "classify" / "model"


TOKEN = "browser-test-token-0123456789abcdef"
LOCKED = "/locked"
"""Route prefix of the second application, which requires `TOKEN`."""


@pytest.fixture(scope="module")
def base_url(tiny_sepsis_run: Path, classifier_dir: Path, tmp_path_factory) -> str:
    """The real app (page, static files and API), with the classifier, on a free loopback port,
    behind the default ingress; and under `LOCKED` a second application of the same checkpoint,
    without a classifier, that requires a bearer token (the page's URLs are relative, so it
    works there too). Both are deployed before any browser connects: HAProxy learns a new route
    on a reload, and a connection kept alive from before still reaches the old configuration."""
    from ray import serve

    from sepsis_rl.serve.app import build
    from sepsis_rl.serve.ingress import HAPROXY, local_serve, wait_until_ready

    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    checkpoint = str(tiny_sepsis_run / "checkpoints" / "last")
    port = _free_port()
    with local_serve("127.0.0.1", port, HAPROXY, num_cpus=2):
        app = build({"checkpoint": checkpoint, "classifier": str(classifier_dir)})
        serve.run(app, name="browser", route_prefix="/")
        locked = build({"checkpoint": checkpoint, "token_file": str(token_file)})
        serve.run(locked, name="browser-token", route_prefix=LOCKED)
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url)
        wait_until_ready(url + LOCKED)
        yield url


@pytest.fixture(scope="module")
def token_url(base_url: str) -> str:
    """The page of the application that requires `TOKEN`."""
    return f"{base_url}{LOCKED}/"


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser_screenshots")
    print(f"\nbrowser screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through Debian's chromedriver (a given driver path keeps Selenium
    Manager from trying to download one), with the console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium_profile")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1200,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def page(browser, base_url):
    """The page freshly loaded, its vitals form built from GET /v1/model."""
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # drop what earlier tests left
    browser.get(f"{base_url}/")
    _wait(browser, lambda d: d.find_elements(By.ID, "vital-HR"))
    return browser


def _console_errors(driver, refused_status: int | None = None) -> list[dict]:
    """The console's errors since the last call (a failed request, an exception, a missing
    resource), except Chromium's note of a request the test expects the API to refuse."""
    expected = f"the server responded with a status of {refused_status}"
    return [
        entry
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not (refused_status and expected in entry["message"])
    ]


def _wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def _shot(driver, folder: Path, name: str, element_id: str) -> None:
    """Screenshot of the window with `element_id` scrolled to the top."""
    driver.execute_script(f"document.getElementById('{element_id}').scrollIntoView(true)")
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"


def _shown(driver, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).is_displayed()


def _as_the_page_sends(typed: dict[str, str]) -> dict[str, int | float]:
    """The JSON numbers the page sends for what was typed (JavaScript writes 999, not 999.0)."""
    return {name: json.loads(value) for name, value in typed.items()}


def _type_patient_by_keyboard(driver, patient: dict[str, str]) -> None:
    """Focus the first vital and type the rest with Tab between fields, then press Enter."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.ID, "vital-HR").click()
    keys = ActionChains(driver)
    for i, value in enumerate(patient.values()):
        if i:
            keys.send_keys(Keys.TAB)
        keys.send_keys(value)
    keys.send_keys(Keys.ENTER).perform()


def test_the_form_names_every_vital_with_its_unit_and_the_caveat_comes_first(page, base_url):
    from selenium.webdriver.common.by import By

    model = httpx.get(f"{base_url}/v1/model", timeout=WAIT_S).json()
    for vital in model["vitals"]:
        label = page.find_element(By.CSS_SELECTOR, f"label[for='vital-{vital['name']}']")
        label = label.get_attribute("textContent")  # optional fields sit in a closed <details>
        unit = {"degC": "°C"}.get(vital["unit"], vital["unit"])
        if vital["unit"] != "0/1":
            assert unit in label, f"the label of {vital['name']} lacks its unit {unit}: {label!r}"
        field = page.find_element(By.ID, f"vital-{vital['name']}")
        assert (field.get_attribute("aria-required") == "true") == vital["required"]
    caveat = page.find_element(By.ID, "caveat")
    form = page.find_element(By.ID, "vitals-form")
    assert caveat.is_displayed() and "simulator" in caveat.text
    assert caveat.location["y"] < form.location["y"], "the caveat must precede the form"
    assert _console_errors(page) == []


def test_a_patient_typed_in_gets_the_recommendation_and_the_protocols_choice(
    page, base_url, screenshots
):
    from selenium.webdriver.common.by import By

    _type_patient_by_keyboard(page, KEYED_PATIENT)
    _wait(page, lambda d: _shown(d, "result") and d.find_element(By.ID, "recommendation").text)
    _shot(page, screenshots, "1_recommendation", "result")

    patient = _as_the_page_sends(KEYED_PATIENT)
    answer = httpx.post(f"{base_url}/v1/recommend", json=patient, timeout=WAIT_S).json()
    learned = page.find_element(By.CSS_SELECTOR, "#recommendation .action").text
    protocol = page.find_element(By.CSS_SELECTOR, "#protocol-choice .action").text
    assert learned == answer["action_name"]
    assert protocol == answer["protocol"]["action_name"]
    assert _shown(page, "recommendation") and _shown(page, "protocol-choice")
    # The chart's table: one row per action, the values the API gives, rounded as shown.
    rows = page.execute_script(
        "return [...document.querySelectorAll('#values-table tbody tr')]"
        ".map(r => [r.cells[0].textContent, r.cells[1].textContent])"
    )
    assert [name for name, _ in rows] == list(answer["values"])
    for name, shown in rows:
        assert float(shown) == pytest.approx(answer["values"][name], abs=0.006)
    bars = page.find_elements(By.CSS_SELECTOR, "#values-chart svg rect")
    assert len(bars) == len(answer["values"])
    unit = "reward points" if answer["value_kind"] == "q_values" else "%"
    assert unit in page.find_element(By.ID, "values-table").get_attribute("textContent")
    assert _console_errors(page) == []


def test_an_impossible_value_is_refused_next_to_its_field(page, base_url, screenshots):
    from selenium.webdriver.common.by import By

    _type_patient_by_keyboard(page, {**KEYED_PATIENT, "HR": "999"})
    field = page.find_element(By.ID, "vital-HR")
    _wait(page, lambda d: field.get_attribute("aria-invalid") == "true")
    _shot(page, screenshots, "2_refused_value", "patient-heading")

    patient = _as_the_page_sends({**KEYED_PATIENT, "HR": "999"})
    refused = httpx.post(f"{base_url}/v1/recommend", json=patient, timeout=WAIT_S)
    assert refused.status_code == 422
    message = next(p["msg"] for p in refused.json()["detail"] if p["field"] == "HR")
    error = page.find_element(By.ID, "vital-HR-error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert message in error.text
    assert "vital-HR-error" in field.get_attribute("aria-describedby")
    assert not _shown(page, "result"), "a refused patient must not show a recommendation"
    assert _console_errors(page, refused_status=422) == []


def test_an_uploaded_stay_shows_one_timeline_row_per_hour(page, base_url, screenshots, tmp_path):
    from selenium.webdriver.common.by import By

    from data_prep.synth import generate_cohort, write_psv_files

    (psv,) = write_psv_files(generate_cohort(1, seed=3), tmp_path)
    page.find_element(By.ID, "psv-file").send_keys(str(psv))
    page.find_element(By.ID, "stay-button").click()
    _wait(page, lambda d: _shown(d, "timeline"))
    _shot(page, screenshots, "3_timeline", "timeline")

    with psv.open("rb") as upload:
        answer = httpx.post(
            f"{base_url}/v1/stay", files={"file": (psv.name, upload)}, timeout=WAIT_S
        ).json()
    rows = page.execute_script(
        "return [...document.querySelectorAll('#timeline-table tbody tr')]"
        ".map(r => [...r.cells].slice(0, 4).map(c => c.textContent))"
    )
    hours_in_file = len(psv.read_text().splitlines()) - 1  # minus the header
    assert len(rows) == len(answer["hours"]) == hours_in_file
    assert answer["classifier"] is True
    dash = "\u2014"
    assert rows == [
        [
            str(h["hour"]),
            f"{100 * h['risk']:.1f} %" if h["risk"] is not None else dash,
            h["action_name"] or dash,
            h["protocol_action_name"] or dash,
        ]
        for h in answer["hours"]
    ]
    assert page.find_elements(By.CSS_SELECTOR, "#timeline-chart svg polyline"), "no risk line"
    assert answer["patient"] in page.find_element(By.ID, "timeline-heading").text
    strips = page.find_elements(By.CSS_SELECTOR, "#timeline-chart svg rect")
    assert len(strips) == 2 * len(answer["hours"])  # the learned and the protocol strip
    assert _console_errors(page) == []


def test_a_broken_psv_is_refused_next_to_the_file_field_with_its_line(
    page, base_url, screenshots, tmp_path
):
    from selenium.webdriver.common.by import By

    from data_prep.synth import generate_cohort, write_psv_files

    (psv,) = write_psv_files(generate_cohort(1, seed=3), tmp_path)
    lines = psv.read_text().splitlines()
    lines[3] = "fast" + lines[3][lines[3].index("|") :]  # line 4, column 1 (HR)
    psv.write_text("\n".join(lines) + "\n")
    page.find_element(By.ID, "psv-file").send_keys(str(psv))
    page.find_element(By.ID, "stay-button").click()
    field = page.find_element(By.ID, "psv-file")
    _wait(page, lambda d: field.get_attribute("aria-invalid") == "true")
    _shot(page, screenshots, "4_refused_file", "stay-heading")

    with psv.open("rb") as upload:
        refused = httpx.post(
            f"{base_url}/v1/stay", files={"file": (psv.name, upload)}, timeout=WAIT_S
        )
    assert refused.status_code == 422
    (problem,) = refused.json()["detail"]
    assert (problem["field"], problem["line"], problem["column"]) == ("file", 4, 1)
    error = page.find_element(By.ID, "psv-file-error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert problem["msg"] in error.text and "line 4" in error.text
    assert not _shown(page, "timeline")
    assert _console_errors(page, refused_status=422) == []


def test_what_if_shows_survival_with_its_interval_and_the_simulators_caveat(
    page, base_url, screenshots
):
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "load-example").click()
    episodes = page.find_element(By.ID, "episodes")
    episodes.clear()
    episodes.send_keys("40")
    page.find_element(By.ID, "what-if-button").click()
    _wait(page, lambda d: _shown(d, "what-if"))
    _shot(page, screenshots, "5_what_if", "whatif-heading")

    patient = page.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#vitals-fields input')]"
        ".filter(i => i.type === 'number' && i.value !== '').map(i => [i.name, Number(i.value)]))"
    )
    answer = httpx.post(
        f"{base_url}/v1/what-if",
        json={"patient": patient, "episodes": 40, "seed": 0},
        timeout=WAIT_S,
    ).json()
    caveat = page.find_element(By.ID, "what-if-caveat")
    assert caveat.is_displayed() and caveat.text == answer["caveat"]
    rows = page.execute_script(
        "return [...document.querySelectorAll('#survival-table tbody tr')]"
        ".map(r => [r.dataset.policy, r.cells[1].textContent, r.cells[2].textContent])"
    )
    assert [policy for policy, _, _ in rows] == ["learned", "protocol", "no_treatment"]
    for policy, survival, interval in rows:
        figures = answer["policies"][policy]
        low, high = figures["survival_ci"]
        assert survival == f"{100 * figures['survival']:.1f} %"
        assert interval == f"{100 * low:.1f} % to {100 * high:.1f} %"
    charts = page.find_elements(By.CSS_SELECTOR, "#paths-charts figure")
    assert [c.get_attribute("data-variable") for c in charts] == ["MAP", "Lactate", "HR"]
    assert _console_errors(page) == []


def test_a_server_with_a_token_asks_for_it_and_the_page_keeps_it_in_memory_only(
    browser, token_url, screenshots
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get_log("browser")
    browser.get(token_url)
    token = _wait(browser, lambda d: d.find_element(By.ID, "token"))
    _wait(browser, lambda d: token.get_attribute("aria-invalid") == "true")
    error = browser.find_element(By.ID, "token-error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert "token" in error.text and "401" not in error.text
    assert browser.find_elements(By.ID, "vital-HR") == []
    _shot(browser, screenshots, "6_token_asked", "access")

    token.send_keys(TOKEN, Keys.ENTER)
    _wait(browser, lambda d: d.find_elements(By.ID, "vital-HR"))
    assert not error.is_displayed() and token.get_attribute("aria-invalid") is None
    assert not _shown(browser, "vitals-error")
    _type_patient_by_keyboard(browser, KEYED_PATIENT)
    _wait(browser, lambda d: _shown(d, "result") and d.find_element(By.ID, "recommendation").text)
    _shot(browser, screenshots, "7_token_accepted", "result")
    stored = browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie]"
    )
    assert stored == [0, 0, ""], "the token must live in the page's memory only"
    assert _console_errors(browser, refused_status=401) == []
