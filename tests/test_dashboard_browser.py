"""The Ray dashboard in a real browser (issue 14): a user's view of a short LoRA `train` and a
one-trial `sweep` run against a `ray start --head` cluster with token auth on.

Headless Chromium (Debian's `chromium` + `chromium-driver`; Selenium is given the driver's path, so
it never downloads one) opens the dashboard, meets the "Authentication Token Required" dialog and
is let in with the token typed as a user types it. Then, reading the rendered pages:
- the Jobs page lists the train command as a driver job, with its entrypoint, SUCCEEDED;
- Ray Train's runs, named `train_lora` and `sweep-<trial id>`, with their workers: Ray 2.60's
  dashboard has no Train page in its menu, so the browser opens the dashboard's own Train view,
  /api/train/v2/runs/v1 (what a user reaches at that address), and the job page's Actor Table
  shows the run's workers as `RayTrainWorker` actors;
- the job page's Ray Data Overview lists the run's input dataset, `train_lora.input_<id>`;
- each job's Ray Core Overview shows no failed task but Ray's own (tests/rays_own.py), each
  with its error as the dashboard's state API gives it.
Screenshots of each page go to $MED42_TEST_ARTIFACTS/dashboard (else pytest's tmp dir).

HEAVY: about 3 minutes on 2 cores (the head, the two runs, the browser).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ray_head import VENV_BIN, cli_env
from rays_own import rays_own_failure

pytestmark = pytest.mark.slow  # minutes of real Ray runs: `pytest -m 'not slow'` skips them

# Debian's packages (.ci/run installs them); overridable for a machine that has them elsewhere.
CHROMIUM = os.environ.get("MED42_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MED42_CHROMEDRIVER", "/usr/bin/chromedriver")
RUN = "train_lora"  # the pipeline's stage name, as its runs are named (pipeline/run.py)
WORKERS = 2         # "its workers", plural
SWEEP = "sweep"     # sweep.name: each trial's Train run is named <sweep.name>-<trial id>
WAIT_S = 60         # for a page to render what the dashboard's polling brings

_missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
if _missing:  # before any fixture: no cluster or run is started for nothing
    pytest.skip(f"no {' or '.join(_missing)}: install Debian's chromium and chromium-driver (.ci/run does)",
                allow_module_level=True)


def _run(args: list[str], env: dict, log: Path) -> None:
    done = subprocess.run([str(VENV_BIN / "med42-ray"), *args], env=env, stdout=log.open("w"),
                          stderr=subprocess.STDOUT, timeout=420, check=False)
    assert done.returncode == 0, f"med42-ray {args[0]} exited {done.returncode}:\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def runs(sample_prepared, tiny_model_dir, ray_head, tmp_path_factory) -> dict:
    """A 2-step LoRA `train` named train_lora on 2 workers, then a 1-trial 2-step `sweep`, each a
    plain `med42-ray` command joining the head through RAY_ADDRESS, as the README says."""
    prepared = str(sample_prepared[0])
    tmp = tmp_path_factory.mktemp("dashboard_runs")
    env = cli_env(RAY_ADDRESS=ray_head.gcs)
    small = ["-o", "train.scaling.threads_per_worker=1", "-o", "train.zero_stage=null", "-o", "train.peak_tflops=0.1"]
    _run(["train", "--run-dir", str(tmp / "t"), "--data-dir", prepared, "--strategy", "lora", "--max-steps", "2",
          "--num-workers", str(WORKERS), "-o", f"train.run_name={RUN}", "-o", "train.export=false", *small],
         env, tmp / "train.log")
    _run(["sweep", "--run-dir", str(tmp / "s"), "--data-dir", prepared, "--num-samples", "1", "--max-steps", "2",
          "--eval-every", "2", "--num-workers", "1", "-o", f"sweep.name={SWEEP}", *small], env, tmp / "sweep.log")
    (trial,) = json.loads((tmp / "s" / "sweep" / "trials.json").read_text())["trials"]
    return {"trial_run": f"{SWEEP}-{trial['trial_id']}"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = os.environ.get("MED42_TEST_ARTIFACTS")
    where = Path(root) / "dashboard" if root else tmp_path_factory.mktemp("dashboard_screenshots")
    where.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {where}")
    return where


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # A container: no sandbox, and /dev/shm is small. Tall window: whole job pages in one screenshot.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,2400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} not seen in {WAIT_S} s at {driver.current_url}") from None


def _find(xpath: str):
    """A wait condition: the first element at `xpath`, once there (None until then)."""
    from selenium.webdriver.common.by import By

    return lambda d: next(iter(d.find_elements(By.XPATH, xpath)), None)


def _section(browser, title: str):
    """A job page's collapsible section (the <div> two above its title's <h4>), opened if closed
    and scrolled into view."""
    h4 = _wait(browser, _find(f"//h4[normalize-space()='{title}']"), f"the {title} section")
    section = h4.find_element("xpath", "../..")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", h4)  # not under the sticky menu
    if len(section.find_elements("xpath", "./div")) < 2:  # closed: only its title row
        h4.click()
    return section


def _filter(browser, section, label: str, value: str) -> None:
    """Type `value` into the filter box labelled `label` of a table section, as a user does."""
    from selenium.webdriver.common.keys import Keys

    box = _wait(browser, lambda _: next(iter(section.find_elements(
        "xpath", f".//label[normalize-space()='{label}']/following-sibling::div//input")), None), f"the {label} filter")
    box.send_keys(value, Keys.ENTER)


@pytest.fixture(scope="module")
def dashboard(browser, ray_head, runs, artifacts):
    """The browser let in as a user is: the dialog, the token from `ray get-auth-token`, Submit.
    Returns a function that opens a dashboard path in it."""
    from selenium.webdriver.support import expected_conditions as EC

    token = subprocess.run([str(VENV_BIN / "ray"), "get-auth-token"], env=cli_env(), capture_output=True,
                           text=True, check=True).stdout.strip()
    browser.get(ray_head.dashboard)
    # visible, not just present: the dialog fades in, and hidden text reads as ""
    title = _wait(browser, EC.visibility_of_element_located(("id", "token-auth-dialog-title")), "the token dialog")
    assert title.text == "Authentication Token Required"
    browser.save_screenshot(str(artifacts / "0_token_dialog.png"))
    browser.find_element("xpath", "//input[@placeholder='Enter your authentication token']").send_keys(token)
    browser.find_element("xpath", "//button[normalize-space()='Submit']").click()
    _wait(browser, EC.invisibility_of_element_located(("id", "token-auth-dialog-title")), "the dialog closing")

    def open_page(path: str):
        browser.get(ray_head.dashboard + path)
        return browser

    return open_page


def test_the_token_lets_the_browser_in_and_keeps_it_in(dashboard, artifacts):
    """After Submit the dashboard shows its pages, and a fresh load asks no more (the token is
    kept in the dashboard's cookie)."""
    browser = dashboard("/#/overview")
    _wait(browser, _find("//*[normalize-space()='Recent jobs']"), "the Overview page")
    assert not browser.find_elements("id", "token-auth-dialog-title")
    assert "ray-authentication-token" in {c["name"] for c in browser.get_cookies()}
    browser.save_screenshot(str(artifacts / "1_overview.png"))


def _job_row(browser, needle: str):
    """The Jobs page row whose entrypoint contains `needle`: (job id, row text)."""
    row = _wait(browser, _find(f"//tr[td[contains(., '{needle}')]]"), f"a job whose entrypoint has {needle!r}")
    return row.find_element("xpath", "./td[1]").text.strip(), row.text


@pytest.fixture(scope="module")
def job_ids(dashboard, artifacts) -> dict:
    browser = dashboard("/#/jobs")
    train = _job_row(browser, f"train.run_name={RUN}")
    sweep = _job_row(browser, "med42-ray sweep")
    browser.save_screenshot(str(artifacts / "2_jobs.png"))
    return {"train": train, "sweep": sweep}


def test_jobs_page_lists_the_train_run(job_ids):
    job_id, text = job_ids["train"]
    assert re.fullmatch(r"[0-9a-f]{8}", job_id), job_id  # a driver job: Ray's own job id
    assert "med42-ray train" in text and "--strategy lora" in text, text
    assert "SUCCEEDED" in text, text
    assert "SUCCEEDED" in job_ids["sweep"][1], job_ids["sweep"][1]


def _train_runs(dashboard, artifacts) -> dict:
    """The dashboard's Train view as the browser renders it (JSON in a <pre>), by run name."""
    browser = dashboard("/api/train/v2/runs/v1")
    pre = _wait(browser, _find("//pre"), "the Train runs")
    browser.save_screenshot(str(artifacts / "3_train_runs.png"))
    return {r["name"]: r for r in json.loads(pre.text)["train_runs"]}


def test_train_runs_are_listed_by_name_with_their_workers(dashboard, artifacts, job_ids, runs):
    train_runs = _train_runs(dashboard, artifacts)
    assert {RUN, runs["trial_run"]} <= set(train_runs), sorted(train_runs)
    for name, job, workers in ((RUN, "train", WORKERS), (runs["trial_run"], "sweep", 1)):
        run = train_runs[name]
        assert run["status"] == "FINISHED", (name, run["status"], run["status_detail"])
        assert run["job_id"] == job_ids[job][0], (name, run["job_id"])  # the run is its command's job's
        (attempt,) = run["attempts"]  # no worker failed: one attempt, no restart
        assert sorted(w["world_rank"] for w in attempt["workers"]) == list(range(workers)), name

    # The same workers on the job's page, in its Actor Table filtered to Ray Train's worker class
    # (a page holds 10 actors; the job has more).
    browser = dashboard(f"/#/jobs/{job_ids['train'][0]}")
    table = _section(browser, "Actor Table")
    _filter(browser, table, "Class", "RayTrainWorker")
    rows = {}
    for w in train_runs[RUN]["attempts"][0]["workers"]:
        rows[w["actor_id"]] = _wait(browser, _find(f"//tr[td[normalize-space()='{w['actor_id']}']]"),
                                    f"worker actor {w['actor_id']}").text
    assert all("RayTrainWorker" in text for text in rows.values()), rows
    browser.save_screenshot(str(artifacts / "4_train_job_actors.png"))


def test_train_job_page_lists_the_runs_input_dataset(dashboard, artifacts, job_ids):
    browser = dashboard(f"/#/jobs/{job_ids['train'][0]}")
    _section(browser, "Ray Data Overview")
    cell = _wait(browser, _find(f"//td[starts-with(normalize-space(), '{RUN}.input_')]"),
                 f"the dataset {RUN}.input")
    assert "FINISHED" in cell.find_element("xpath", "..").text
    browser.save_screenshot(str(artifacts / "5_train_job_data.png"))


def _task_counts(browser) -> dict[str, int]:
    """The Ray Core Overview's legend, once no task is still running or waiting: {label: count}."""
    section = _section(browser, "Ray Core Overview")

    def settled(_):
        legend = dict(re.findall(r"^([A-Za-z ]+): (\d+)$", section.text, re.MULTILINE))
        busy = {"Running", "Waiting for scheduling", "Waiting for dependencies"} & set(legend)
        return {k: int(v) for k, v in legend.items()} if "Total" in legend and not busy else None

    return _wait(browser, settled, "a settled Ray Core Overview")


def _failed_task_names(browser) -> list[str]:
    """The names of the job's failed tasks, from its Task Table filtered to State FAILED (one page:
    the caller checks that it holds them all)."""
    table = _section(browser, "Task Table")
    _filter(browser, table, "State", "FAILED")

    def failed_rows(_):
        rows = table.find_elements("xpath", ".//tbody/tr")
        return rows if rows and all("\nFAILED\n" in r.text for r in rows) else None

    rows = _wait(browser, failed_rows, "the Task Table filtered to FAILED")
    return [r.text.split("\n")[1].split()[0] for r in rows]  # a row reads: id, "<name> <job id>", state, ...


def _failed_task_errors(dashboard, job_id: str) -> list[dict]:
    """The job's failed tasks from the dashboard's state API (what its Task Table reads), opened in
    the same browser: name, error type and the error's last line."""
    query = "&".join(f"filter_keys={k}&filter_predicates=%3D&filter_values={v}"
                     for k, v in (("job_id", job_id), ("state", "FAILED")))
    browser = dashboard(f"/api/v0/tasks?detail=true&limit=1000&{query}")
    tasks = json.loads(_wait(browser, _find("//pre"), "the state API's failed tasks").text)["data"]["result"]["result"]
    return [{"name": t["name"], "error_type": t.get("error_type"),
             "error": (t.get("error_message") or "").strip().splitlines()[-1:]} for t in tasks]


@pytest.mark.parametrize("job", ["train", "sweep"])
def test_job_overview_shows_no_failed_tasks(dashboard, artifacts, job_ids, job):
    browser = dashboard(f"/#/jobs/{job_ids[job][0]}")
    counts = _task_counts(browser)
    browser.save_screenshot(str(artifacts / f"6_{job}_job_overview.png"))
    assert counts["Total"] > 10, counts  # the run's tasks are there to count
    if counts.get("Failed"):
        failed = _failed_task_names(browser)
        browser.save_screenshot(str(artifacts / f"6_{job}_job_failed_tasks.png"))
        errors = _failed_task_errors(dashboard, job_ids[job][0])
        (artifacts / f"6_{job}_job_failed_tasks.json").write_text(json.dumps(errors, indent=1))
        assert len(failed) == counts["Failed"] and sorted(failed) == sorted(e["name"] for e in errors), (counts, failed)
        assert all(rays_own_failure(e["name"], e["error_type"]) for e in errors), errors
    assert counts["Finished"] + counts.get("Failed", 0) == counts["Total"], counts
