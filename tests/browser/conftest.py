"""Browser tests: headless Chromium driving the admin as people do, against the lab.

Debian's `chromium` and `chromium-driver` through Selenium (nothing downloaded), one
browser for the whole session (starting Chromium costs seconds), pytest-django's live
server on the transactional test database, LDAP logins on the lab's slapd, jobs run by the
real test worker (tests/conftest.py, celery_worker). Screenshots go to
test-artifacts/browser/ (git-ignored), one per step worth seeing and one per failed test.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from lab import fleet
from lab import herd as lab_herd
from lab.state import REPO_DIR
from tests.helpers import restore_roles

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO_DIR / "test-artifacts" / "browser"
WIDTH, HEIGHT = 1366, 768
# As root in a container: no sandbox (it needs user namespaces Chromium may not get), no
# GPU, /tmp rather than a small /dev/shm, and nothing that phones home or updates itself.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    f"--window-size={WIDTH},{HEIGHT}",
)
# The lab herd the job and switchover tests share (no other test uses this port).
HERD, PORT = "browse", 5581


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="elephaas-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(ARTIFACTS / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        # --window-size counts the (invisible) browser frame: the page itself gets less.
        # The viewport is what a laptop screen shows, so it is set exactly.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        size = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        if size != [WIDTH, HEIGHT]:
            pytest.fail(f"the browser's viewport is {size}, not {[WIDTH, HEIGHT]}")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The browser on the live server, with the few moves the tests make."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, test_name: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.test_name = test_name

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.base_url)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str = "body") -> str:
        return self.find(css).text

    def log_in(self, username: str) -> None:
        """Through the login form, with the user's password from the lab's secrets file."""
        password = fleet.ldap_users()[username]["password"]
        self.driver.delete_all_cookies()
        self.open("/admin/login/?next=/admin/")
        self.find("#id_username").send_keys(username)
        self.find("#id_password").send_keys(password)
        self.find("#login-form [type=submit]").click()
        self.wait_for(lambda: self.path() == "/admin/", f"{username} logged in")
        assert username in self.text("#user-tools").lower()

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 20) -> object:
        """Poll `condition` (a page may be reloading itself meanwhile) until it is true."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = condition()
            except (StaleElementReferenceException, WebDriverException):
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                self.shot(f"timeout-{what[:40]}")
                raise AssertionError(f"waited {timeout:.0f} s for: {what}")
            time.sleep(0.2)

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{self.test_name}--{_file_name(name)}.png"
        self.driver.save_screenshot(str(path))
        return path

    def mark(self) -> None:
        """Tag the page loaded now: `reloaded()` is true once the page reloaded itself."""
        self.driver.execute_script("window.__elephaasMark = true")

    def reloaded(self) -> bool:
        return not self.driver.execute_script("return window.__elephaasMark === true")

    def widths(self, css: str | None = None) -> tuple[int, int]:
        """(scrollWidth, clientWidth) of the page, or of the element `css`: a page that
        does not scroll sideways may still hold a box that does (the admin's results
        table scrolls inside its own box)."""
        target = "document.documentElement" if css is None else f"document.querySelector({css!r})"
        return tuple(
            self.driver.execute_script(f"const e = {target}; return [e.scrollWidth, e.clientWidth]")
        )


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-")


@pytest.fixture
def page(browser, live_server, lab, request) -> Page:
    # The previous test's flush emptied auth_group: LDAP logins need the roles back.
    restore_roles()
    browser.delete_all_cookies()
    return Page(browser, live_server.url, _file_name(request.node.name))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    page = item.funcargs.get("page") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(page, Page):
        try:
            page.shot("FAILED")
        except WebDriverException:
            pass


@pytest.fixture(scope="session")
def browse_herd(lab, lab_servers):
    """The lab herd `browse`: primary srv1, replicas srv2 and srv3 (real clusters)."""
    lab_herd.create(HERD, primary=1, replicas=[2, 3], port=PORT)
    yield HERD
    lab_herd.drop(HERD)


@pytest.fixture
def browse(browse_herd, lab_servers, transactional_db):
    """The `browse` herd in this test's inventory, discovered from its servers as a DBA
    would, with a vhost of its own."""
    from herds.models import Herd
    from instances.jobs import queue, runner
    from instances.models import JobKind
    from tests.factories import make_environment
    from tests.helpers import add_lab_server

    env = make_environment("prod")
    servers = [add_lab_server(s, env) for s in lab_servers[:3]]
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers, queue=False))
    herd = Herd.objects.get(name=HERD)
    herd.vhost = f"browse-{secrets.token_hex(3)}"
    herd.save()
    return herd
