"""The web page in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) loads ``/`` from a running ``bootsvc
serve`` while a machine boots through it with real requests: its iPXE
script fetched with curl from its own address, then two iSCSI logins with
its CHAP secret that read its disk (iPXE's and the OS's). The table shows
the machines, updates live without a reload, a click shows the timeline,
and /metrics counts what happened. A screenshot is kept in tmp_path
(BOOTSVC_WEB_SCREENSHOT=docs/web.png writes the README's too)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from target.pdu import DataIn, ScsiResponse
from tests.e2e.conftest import need
from tests.e2e.peers import LOOPBACK, bootsvc_serve, free_port, machine_secret, stop
from tests.iscsi_client import Client, read10

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
PREFIX = "iqn.2026-11.test.web"
PC1, PC2 = "52:54:00:00:00:01", "52:54:00:00:00:02"
PC1_IP = "127.77.0.31"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser() -> object:
    need("chromium", "chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (pip install -e .[test])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--force-prefers-reduced-motion"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    # Debian's driver, named: selenium must not go looking for (downloading) one of its own
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or CHROMEDRIVER))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "gold.raw").write_bytes(b"\xee" * (4 << 20))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "disk.yaml").write_text("base: gold.raw\n")
    ports = {k: free_port() for k in ("iscsi", "http")}
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"""
state_dir: {state}
domain: lab.test
iqn_prefix: {PREFIX}
profiles_dir: profiles
listen:
  iscsi: [{LOOPBACK}:{ports['iscsi']}]
  http: {LOOPBACK}:{ports['http']}
recorder: {{stall: 30}}
machines:
  {PC1}: {{hostname: pc1, profile: disk, ip: {PC1_IP}}}
  {PC2}: {{hostname: pc2, profile: disk, ip: 127.77.0.32}}
""")
    proc = bootsvc_serve(cfg, tmp_path / "serve.log", "ready: 2 of 2")
    try:
        yield f"http://{LOOPBACK}:{ports['http']}", state, ports["iscsi"]
    finally:
        stop(proc)


IPXE_ISID, OPEN_ISCSI_ISID = bytes.fromhex("400027230001"), bytes.fromhex("00023d000001")


def login_and_read(port: int, state: Path, isid: bytes) -> None:
    """One iSCSI session of pc1's, with its CHAP secret: log in, read the
    first block, leave (iPXE's session, by its ISID, then the OS's:
    the recorder tells them apart as it does on a real boot)."""
    initiator = f"{PREFIX}:pc1"
    secret = machine_secret(state, PC1)
    c = Client(LOOPBACK, port, initiator=initiator, source=PC1_IP, isid=isid)
    try:
        r = c.login(f"{PREFIX}:boot.pc1", chap=(initiator, secret.encode()))
        assert r.status_class == 0, r
        c.command(read10(0, 1), read=512)
        while True:
            pdu = c.recv()
            assert pdu is not None
            if isinstance(pdu, ScsiResponse) or isinstance(pdu, DataIn) and pdu.status_present:
                break
        if isid != IPXE_ISID:  # iPXE leaves without a Logout when it hands over to the OS
            c.logout()
            c.recv()
    finally:
        c.close()


def test_the_page_shows_a_boot_live(serve: tuple[str, Path, int], tmp_path: Path) -> None:
    need("curl")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, state, iscsi_port = serve
    driver = browser()
    try:
        wait = WebDriverWait(driver, 20)

        def row(host: str) -> str:
            return str(driver.find_element(By.XPATH, f"//tbody/tr[td[1]='{host}']").text)

        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
        wait.until(lambda d: "never booted" in row("pc1") and PC2 in row("pc2"))
        assert driver.execute_script("return document.documentElement.outerHTML").count("<tr") == 3

        # the machine fetches its script: the row changes without a reload
        marker = driver.execute_script("window.notReloaded = 1; return window.notReloaded")
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--interface", PC1_IP, "-o", "/dev/null", "-w",
                            "%{http_code}", f"{url}/boot/{PC1.replace(':', '-')}.ipxe"],
                           capture_output=True, text=True, timeout=20)
        assert r.stdout == "200", r.stdout + r.stderr
        wait.until(lambda d: "running" in row("pc1") and "running: script" in row("pc1"))

        # a click opens its timeline, under its own address
        driver.find_element(By.XPATH, "//tbody/tr[td[1]='pc1']").click()
        wait.until(lambda d: d.find_element(By.ID, "timeline").is_displayed())
        assert driver.current_url.endswith("/machines/pc1")
        wait.until(lambda d: "script" in d.find_element(By.ID, "tl-boots").text)

        # it logs in and reads its disk twice (iPXE, then the OS): booted, in the table and the timeline, live
        login_and_read(iscsi_port, state, IPXE_ISID)
        wait.until(lambda d: "first-read" in d.find_element(By.ID, "tl-boots").text)
        login_and_read(iscsi_port, state, OPEN_ISCSI_ISID)
        wait.until(lambda d: "booted" in row("pc1"))
        wait.until(lambda d: "os-read" in d.find_element(By.ID, "tl-boots").text)
        steps = driver.find_element(By.ID, "tl-boots").text
        for step in ("script", "login", "first-read", "session-end", "os-login", "os-read", "diagnosis: booted"):
            assert step in steps, steps
        assert driver.execute_script("return window.notReloaded") == marker == 1  # never reloaded

        shot = tmp_path / "web.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("BOOTSVC_WEB_SCREENSHOT"):
            shutil.copy(shot, os.environ["BOOTSVC_WEB_SCREENSHOT"])
    finally:
        driver.quit()  # type: ignore[attr-defined]

    # the API and /metrics say the same
    machines = json.loads(urllib.request.urlopen(url + "/api/machines", timeout=10).read())
    pc1 = next(m for m in machines if m["hostname"] == "pc1")
    assert pc1["state"] == "booted" and pc1["address"] == PC1_IP and pc1["read_bytes"] >= 1024
    assert next(m for m in machines if m["hostname"] == "pc2")["state"] is None
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("bootsvc_iscsi_logins_total", (("outcome", "accepted"),))] == 2
    assert got[("bootsvc_iscsi_read_bytes_total", (("host", "pc1"),))] >= 1024
    assert got[("bootsvc_boot_duration_seconds_count", ())] == 1
    assert got[("bootsvc_http_requests_total", (("status", "200"),))] >= 3
