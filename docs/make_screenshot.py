"""Make docs/dashboard.png: the dashboard of one node in a 20-node network, at 1280x800.

It starts 20 real `twistd -n dht` processes on 127.0.0.1 (in a temporary directory, from this
checkout), puts 30 items through several of them, gets a few through the node it shows (keys
that node does not hold, so it has to look them up), opens that node's dashboard in headless
Chromium, does one last get through the page's form, and saves the screenshot. Every process is
stopped at the end.

Needs Debian's chromium and chromium-driver and the selenium package::

    apt-get install -y chromium chromium-driver && pip install selenium
    python docs/make_screenshot.py                  # writes docs/dashboard.png
    python docs/make_screenshot.py --out /tmp/x.png --nodes 10 --k 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WORDS = ["amber", "birch", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "iris"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One `twistd -n dht` process on loopback."""

    def __init__(self, data_dir: Path, k: int) -> None:
        self.data_dir, self.k = data_dir, k
        self.port, self.http = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's HTTP endpoint."""
        return f"http://127.0.0.1:{self.http}"

    def start(self, seed: Node | None) -> None:
        """Start the process, joining through ``seed``."""
        self.data_dir.mkdir(parents=True)
        args = [str(TWISTD), "-n", "--pidfile=", "dht", "--k", str(self.k)]
        args += ["--port", f"tcp:{self.port}:interface=127.0.0.1", "--data-dir", str(self.data_dir)]
        args += ["--http", f"tcp:{self.http}:interface=127.0.0.1"]
        if seed is not None:
            args += ["--peer", f"127.0.0.1:{seed.port}"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with (self.data_dir / "twistd.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def call(self, path: str, method: str = "GET", body: bytes | None = None) -> bytes:
        """One HTTP request to the node; the answer's body."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return bytes(answer.read())

    def api(self, path: str, method: str = "GET", body: bytes | None = None) -> Any:
        """One JSON answer."""
        return json.loads(self.call(path, method, body))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the API answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                sys.exit(f"a node exited: {(self.data_dir / 'twistd.log').read_text()[-2000:]}")
            try:
                self.api("/v1/status")
                return
            except OSError:
                time.sleep(0.1)
        sys.exit(f"the node at {self.url} did not answer in {timeout} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def screenshot(url: str, key: str, out: Path) -> None:
    """Open the dashboard at 1280x800, get ``key`` through its form, and save a screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.set_page_load_timeout(30)
        driver.get(url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "live" in d.find_element(By.ID, "live").text)
        driver.find_element(By.ID, "get-key").send_keys(key)
        driver.find_element(By.ID, "get-button").click()
        wait.until(lambda d: d.find_elements(By.ID, "get-value"))
        time.sleep(3.5)  # two more polls: the get's lookup is drawn and listed
        dots = driver.find_elements(By.CSS_SELECTOR, "#contacts circle.contact")
        if dots:  # hovering one shows what the page says about a contact
            from selenium.webdriver.common.action_chains import ActionChains

            ActionChains(driver).move_to_element(dots[len(dots) // 2]).perform()
            time.sleep(0.3)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    """Start the network, fill it, take the screenshot, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--gets", type=int, default=4)
    parser.add_argument("--k", type=int, default=6, help="bucket size and replicas per item")
    parser.add_argument("--seed", type=int, default=7, help="for the names and values")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="txdht-screenshot-") as tmp:
        nodes = [Node(Path(tmp) / f"node{i}", args.k) for i in range(args.nodes)]
        try:
            nodes[0].start(None)
            nodes[0].wait_ready()
            for node in nodes[1:]:
                node.start(nodes[0])
            for node in nodes[1:]:
                node.wait_ready()
            shown = nodes[args.nodes // 2]
            keys = []
            for i in range(args.items):
                writer = shown if i % 5 == 0 else rng.choice(nodes)
                name = f"{rng.choice(WORDS)}-{i}"
                value = f"{name}: {rng.randrange(10**6)}".encode()
                keys.append(writer.api(f"/v1/names/{name}", "PUT", value)["key"])
            held = {item["key"] for item in shown.api("/v1/items")["items"]}
            elsewhere = [key for key in keys if key not in held]
            for key in elsewhere[: args.gets]:
                shown.call(f"/v1/keys/{key}")
            last = elsewhere[args.gets] if len(elsewhere) > args.gets else keys[-1]
            status = shown.api("/v1/status")
            print(
                f"{args.nodes} nodes, {args.items} items; showing {status['id'][:12]} with "
                f"{status['peers']} peers and {status['items']} items"
            )
            screenshot(shown.url, last, args.out)
            print(f"wrote {args.out}")
        finally:
            for node in nodes:
                node.stop()


if __name__ == "__main__":
    main()
