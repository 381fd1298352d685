"""The dashboard in a real browser: headless Chromium, driven by Selenium, against real nodes.

Five `twistd -n dht` processes on loopback (k = 3, so not every node holds every item) serve
the page from their real ``APIResource``. The tests open it, count the dots on the clock face,
hover one, check each dot's colour, fade and angle, put and get through the form (and see a
get's error), watch a lookup's path appear, compare the panels with /metrics, stop a node to
see the page say so and recover, check the phone-width layout, and fail on any error in the
browser's console. Screenshots go to ``$TXDHT_ARTIFACTS`` (``.ci/run`` sets it to
``artifacts/``; default: the test's tmp_path).

They need Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (all
installed by ``.ci/run``). Without them they are skipped, saying what is missing, unless
``TXDHT_REQUIRE_BROWSER`` is set (``.ci/run`` sets it): then they fail, so CI cannot pass without
a browser ever starting. Like the other real-process tests they run on the default reactor's
pass only, and every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.test_processes import NodeProcess, kill_all, start_joined

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Bound on every wait for the page: a few poll periods (1.5 s) plus a lookup.
PAGE_TIMEOUT = 20.0
NETWORK_SIZE = 5
#: Replicas per item: fewer than the nodes, so that not every node holds every item.
K = 3
UNREACHABLE = "node unreachable — retrying"
#: Set (to anything but "" or "0") to fail, not skip, the tests when the browser is missing.
REQUIRE_BROWSER = "TXDHT_REQUIRE_BROWSER"
#: The face's geometry and drawing rules, as in txdht/static/app.js.
RING = 400
FADE_SECONDS = 600
FADE_DEPTH = 0.7
T = TypeVar("T")


def missing_browser_parts() -> list[str]:
    """What the browser tests need and this machine lacks, each with how to install it."""
    missing = [
        f"{binary} (apt-get install chromium chromium-driver)"
        for binary in (CHROMIUM, CHROMEDRIVER)
        if not binary.exists()
    ]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install '.[test]')")
    return missing


@pytest.fixture(autouse=True, scope="module")
def _requirements(request: pytest.FixtureRequest) -> None:
    """Before any node starts: skip on the asyncio pass; without a browser, skip or fail."""
    if request.config.getoption("reactor") != "default":
        pytest.skip("browser tests run on the default reactor pass only")
    missing = missing_browser_parts()
    if not missing:
        return
    message = "the browser tests cannot run, missing: " + "; ".join(missing)
    if os.environ.get(REQUIRE_BROWSER, "") not in ("", "0"):
        pytest.fail(f"{message}. {REQUIRE_BROWSER} is set, so this fails.", pytrace=False)
    pytest.skip(message)


def until(what: str, check: Callable[[], T | None], timeout: float = PAGE_TIMEOUT) -> T:
    """Poll ``check`` until it returns something other than None or False; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Five node processes joined through the first; all are killed at the end."""
    base = tmp_path_factory.mktemp("dashboard")
    nodes = [NodeProcess(base / f"node{i}") for i in range(NETWORK_SIZE)]
    try:
        start_joined(nodes, k=K)
        yield nodes
    finally:
        kill_all(nodes)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $TXDHT_ARTIFACTS, else the test's tmp_path."""
    where = Path(os.environ.get("TXDHT_ARTIFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


class Browser:
    """A headless Chromium and the console messages it logged so far."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.console: list[dict[str, Any]] = []

    def log(self) -> list[dict[str, Any]]:
        """Every console entry so far (the driver hands each one out once)."""
        self.console += self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return self.console

    def severe(self, allow_network: bool = False) -> list[dict[str, Any]]:
        """The SEVERE console entries (without failed requests, when they are expected)."""
        return [
            entry
            for entry in self.log()
            if entry["level"] == "SEVERE" and not (allow_network and entry["source"] == "network")
        ]

    def js(self, script: str, *args: Any) -> Any:
        """Run a script in the page; its result."""
        return self.driver.execute_script(script, *args)

    def text(self, element_id: str) -> str:
        """The text of the element with this id ("" if there is none)."""
        return str(
            self.js(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : ''",
                element_id,
            )
        )

    def count(self, selector: str) -> int:
        """How many elements match a CSS selector."""
        return int(self.js("return document.querySelectorAll(arguments[0]).length", selector))

    def open(self, node: NodeProcess) -> None:
        """Load the node's dashboard and wait until it has drawn the node's contacts once."""
        self.driver.get(node.url + "/")
        until("the first update", lambda: "live" in self.text("live"))


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium at 1280x800 (Debian's binaries, named explicitly); quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        # Nothing but the page under test goes on the network.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        # A --window-size window has a smaller viewport in new headless: set the viewport.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        driver.set_script_timeout(PAGE_TIMEOUT)
        yield Browser(driver)
    finally:
        driver.quit()


def hex_key(text: str) -> str | None:
    """``text`` if it is a 128-character hex key."""
    return text if re.fullmatch(r"[0-9a-f]{128}", text) else None


def fade(last_seen: float) -> float:
    """The opacity app.js gives a contact last seen ``last_seen`` seconds ago."""
    return 1 - FADE_DEPTH * min(1.0, last_seen / FADE_SECONDS)


def id_fraction(hex_id: str) -> float:
    """Where an id sits on the face: its top 48 bits as a fraction of the full turn."""
    return int(hex_id[:12], 16) / 2**48


def api_error(node: NodeProcess, path: str) -> str:
    """How the page shows the error the API answers for ``path``: "message (code, status)"."""
    try:
        node.api(path)
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
        return f"{body['message']} ({body['error']}, {e.code})"
    raise AssertionError(f"{path} did not fail")


def drawn_contacts(browser: Browser) -> dict[str, dict[str, Any]]:
    """The contact dots on the face by id: position, fill and opacity, set and as rendered."""
    dots: list[dict[str, Any]] = browser.js(
        "return [...document.querySelectorAll('#contacts circle.contact')].map(d => ({"
        "id: d.dataset.id, cx: Number(d.getAttribute('cx')), cy: Number(d.getAttribute('cy')),"
        "fill: d.getAttribute('fill'), renderedFill: getComputedStyle(d).fill,"
        "opacity: Number(d.getAttribute('opacity')),"
        "renderedOpacity: Number(getComputedStyle(d).opacity),"
        "title: d.querySelector('title').textContent}))"
    )
    return {dot["id"]: dot for dot in dots}


def test_face_shows_every_contact(
    network: list[NodeProcess], browser: Browser, artifacts: Path
) -> None:
    """The face has one dot per routing table contact, the node itself, and hover details."""
    node = network[0]
    browser.open(node)

    def dots_match() -> int | None:
        peers = len(node.api("/v1/peers")["peers"])
        return peers if browser.count("#contacts circle.contact") == peers else None

    assert until("one dot per contact", dots_match) >= 1
    assert browser.count("#self circle.self-dot") == 1
    status = node.api("/v1/status")
    until("the panels", lambda: browser.text("stat-peers") == str(status["peers"]))
    assert browser.js("return document.getElementById('stat-id').title") == status["id"]
    first = node.api("/v1/peers")["peers"][0]
    title = browser.js(
        "return document.querySelector(`#contacts circle[data-id='${arguments[0]}'] title`)"
        ".textContent",
        first["id"],
    )
    assert first["id"] in title
    assert f"127.0.0.1:{first['port']}" in title
    assert "last seen" in title
    # Ids that share a long prefix sit close together, near this node's own dot too, which is
    # drawn under the contacts so that it never hides one. Hover a dot that nothing covers; the
    # contacts are redrawn every poll, so the pointer goes to an offset from the centre of the
    # face (which stays), not to a dot element that may be replaced meanwhile.
    dots = browser.js(
        "const face = document.getElementById('face').getBoundingClientRect();"
        "const middle = (box) => [box.left + box.width / 2, box.top + box.height / 2];"
        "const [fx, fy] = middle(face);"
        "return [...document.querySelectorAll('#contacts circle.contact')].map((dot) => {"
        "  const [x, y] = middle(dot.getBoundingClientRect());"
        "  const top = document.elementFromPoint(x, y);"
        "  const cover = top === dot ? null : top.tagName + '.' + top.getAttribute('class');"
        "  return [dot.dataset.id, Math.round(x - fx), Math.round(y - fy), cover];"
        "})"
    )
    assert [cover for *_, cover in dots if cover and not cover.startswith("circle.contact")] == []
    shown_id, dx, dy, _ = [dot for dot in dots if dot[3] is None][-1]  # the last drawn is on top
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    face = browser.driver.find_element(By.ID, "face")
    ActionChains(browser.driver).move_to_element_with_offset(face, dx, dy).perform()
    # Its details: alone, with its whole id; touching other dots, a line each, its own first.
    until("the hover details", lambda: shown_id[:16] in browser.text("hover"))
    assert "last seen" in browser.text("hover")
    items = len(node.api("/v1/items")["items"])
    until("the items", lambda: browser.count("#items rect.item") == items)
    assert browser.js("return [window.innerWidth, window.innerHeight]") == [1280, 800]
    assert browser.js("return document.documentElement.scrollWidth") <= 1280
    for element_id in ("face", "put-form", "get-form"):  # all on the first screen
        box = browser.js(f"return document.getElementById('{element_id}').getBoundingClientRect()")
        assert 0 <= box["top"] < box["bottom"] <= 800, element_id
    browser.driver.save_screenshot(str(artifacts / "dashboard-1280x800.png"))
    assert not browser.severe(), browser.severe()


def test_hovering_dots_that_overlap_lists_every_contact_there(
    network: list[NodeProcess], browser: Browser
) -> None:
    """Contacts with nearby ids share a spot on the face; hovering there lists each of them
    (the one under the pointer first), so none is hidden by the dot drawn over it."""
    node = network[0]
    browser.open(node)
    until("two contacts", lambda: browser.count("#contacts circle.contact") >= 2)
    # One script, so that no redraw comes between: move a second dot onto the first, hover it.
    ids, text = browser.js(
        "const [a, b] = document.querySelectorAll('#contacts circle.contact');"
        "b.setAttribute('cx', a.getAttribute('cx'));"
        "b.setAttribute('cy', a.getAttribute('cy'));"
        "a.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));"
        "return [[a.dataset.id, b.dataset.id], document.getElementById('hover').textContent];"
    )
    lines = text.split("\n")
    count = int(lines[0].split()[0])
    assert lines[0] == f"{count} contacts here:"
    assert count >= 2
    assert lines[1].startswith(ids[0][:16] + "…")  # the hovered one first
    assert any(line.startswith(ids[1][:16] + "…") for line in lines[2:])
    assert all("127.0.0.1:" in line and "last seen" in line for line in lines[1:] if "…" in line)
    assert not browser.severe(), browser.severe()


def test_put_then_get_through_the_form(network: list[NodeProcess], browser: Browser) -> None:
    """A value put through the form is read back through the form, with its key and copies."""
    from selenium.webdriver.common.by import By

    browser.open(network[1])
    find = browser.driver.find_element
    find(By.ID, "put-name").send_keys("dashboard greeting")
    find(By.ID, "put-value").send_keys("hello from the browser ☃")
    find(By.ID, "put-button").click()
    key = until("the put's key", lambda: hex_key(browser.text("put-key")))
    stored_on = int(browser.text("put-count"))
    assert 1 <= stored_on <= 3
    assert "stored on" in browser.text("put-result")
    # The holders, by id: nodes of the network, the page's own node named "this node".
    holders = browser.text("put-holders").split(", ")
    assert len(set(holders)) == len(holders) == stored_on, holders
    own = network[1].api("/v1/status")["id"][:12] + "…"
    ids = {node.api("/v1/status")["id"][:12] + "…" for node in network} - {own}
    assert set(holders) <= ids | {"this node"}, (holders, ids)
    assert find(By.ID, "get-key").get_attribute("value") == key
    find(By.ID, "get-button").click()
    until("the value", lambda: browser.text("get-value") == "hello from the browser ☃")
    with urllib.request.urlopen(f"{network[3].url}/v1/keys/{key}", timeout=10) as answer:
        assert answer.read().decode() == "hello from the browser ☃"
    assert not browser.severe(), browser.severe()


def test_get_of_a_bad_or_unknown_key_shows_the_error(
    network: list[NodeProcess], browser: Browser
) -> None:
    """A get of a malformed key, and of a key no node holds, shows the node's error in the page."""
    from selenium.webdriver.common.by import By

    node = network[1]
    browser.open(node)
    find = browser.driver.find_element
    for key in ("not-a-key", "ab" * 64):
        expected = api_error(node, f"/v1/keys/{key}")
        find(By.ID, "get-key").clear()
        find(By.ID, "get-key").send_keys(key)
        find(By.ID, "get-button").click()
        until(f"the error for {key}", lambda: browser.text("get-result") == expected)  # noqa: B023
        assert browser.js("return document.getElementById('get-result').className") == (
            "result error"
        )
        assert browser.count("#get-value") == 0
    assert "(bad_key, 400)" in api_error(node, "/v1/keys/not-a-key")
    assert "(not_found, 404)" in browser.text("get-result")
    # The browser logs each 4xx answer itself; the page's code logged nothing.
    assert not browser.severe(allow_network=True), browser.severe(allow_network=True)


def test_face_colours_by_bucket_places_by_id_and_fades_by_last_seen(
    network: list[NodeProcess], browser: Browser
) -> None:
    """Each dot sits at its id's angle, has its bucket's own fill and the fade of its last_seen."""

    def spread() -> NodeProcess | None:
        for node in network:
            if len({peer["bucket"] for peer in node.api("/v1/peers")["peers"]}) >= 2:
                return node
        return None

    node = until("a node with contacts in two buckets", spread)
    browser.open(node)

    def in_step() -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]] | None:
        # The page and this test read /v1/peers at different moments: wait until they agree.
        peers = node.api("/v1/peers")["peers"]
        dots = drawn_contacts(browser)
        return (peers, dots) if set(dots) == {peer["id"] for peer in peers} else None

    peers, dots = until("the page to draw the routing table", in_step)
    fills: dict[int, set[str]] = {}
    for peer in peers:
        dot = dots[peer["id"]]
        turn = id_fraction(peer["id"]) * 2 * math.pi
        assert math.isclose(dot["cx"], RING * math.sin(turn), abs_tol=1e-6), peer
        assert math.isclose(dot["cy"], -RING * math.cos(turn), abs_tol=1e-6), peer
        angle = math.atan2(dot["cx"], -dot["cy"]) % (2 * math.pi) / (2 * math.pi)
        assert math.isclose(angle, id_fraction(peer["id"]), abs_tol=1e-9), peer
        assert dot["renderedFill"] not in ("", "none", "rgb(0, 0, 0)"), dot
        fills.setdefault(peer["bucket"], set()).add(dot["renderedFill"])
        # Seconds pass between the page's poll and ours: a few seconds move the fade < 0.02.
        assert abs(dot["opacity"] - fade(peer["last_seen"])) < 0.02, (dot, peer)
        assert dot["renderedOpacity"] == dot["opacity"], dot
        assert f"bucket {peer['bucket']}, last seen " in dot["title"]
    assert all(len(colours) == 1 for colours in fills.values()), fills  # one colour per bucket
    assert len({colour for colours in fills.values() for colour in colours}) == len(fills) >= 2
    counts = {bucket: sum(p["bucket"] == bucket for p in peers) for bucket in fills}
    legend = browser.js(
        "return [...document.querySelectorAll('#legend li')].map(l => l.textContent)"
    )
    times = "\u00d7"  # the legend's multiplication sign
    assert legend == [f"bucket {b} {times} {counts[b]}" for b in sorted(counts, reverse=True)]
    assert not browser.severe(), browser.severe()


def test_face_fades_contacts_last_seen_longer_ago(
    network: list[NodeProcess], browser: Browser
) -> None:
    """A contact last seen longer ago is drawn fainter, down to a floor from ten minutes on."""
    node = network[0]
    browser.open(node)
    ids = [peer["id"] for peer in node.api("/v1/peers")["peers"]]
    assert len(ids) >= 2
    # A real node's contacts are all seen within the test's few seconds, too close to tell apart
    # without long sleeps: the page is handed the real table with these ages put in instead.
    ages = dict(zip(ids, (0.0, 3600.0, 300.0, 600.0, 120.0, 450.0), strict=False))
    browser.js(
        "const ages = arguments[0];"
        "const real = window.fetch.bind(window);"
        "window.fetch = async (resource, options) => {"
        "  const response = await real(resource, options);"
        "  if (!String(resource).endsWith('v1/peers') || !response.ok) return response;"
        "  const body = await response.json();"
        "  for (const peer of body.peers) {"
        "    if (Object.hasOwn(ages, peer.id)) peer.last_seen = ages[peer.id];"
        "  }"
        "  return new Response(JSON.stringify(body),"
        "    {status: 200, headers: {'content-type': 'application/json'}});"
        "};",
        ages,
    )

    def faded() -> dict[str, dict[str, Any]] | None:
        dots = drawn_contacts(browser)
        drawn = all(
            key in dots and abs(dots[key]["opacity"] - fade(age)) < 0.006
            for key, age in ages.items()
        )
        return dots if drawn else None

    dots = until("the dots faded by the given ages", faded)
    by_age = sorted(ages, key=ages.__getitem__)
    for younger, older in itertools.pairwise(by_age):
        light, faint = dots[younger]["renderedOpacity"], dots[older]["renderedOpacity"]
        if ages[younger] < FADE_SECONDS:
            assert faint < light, (ages[younger], ages[older], light, faint)
        else:  # both ten minutes or more: the floor
            assert math.isclose(faint, 1 - FADE_DEPTH), (ages[older], faint)
            assert math.isclose(light, 1 - FADE_DEPTH), (ages[younger], light)
    assert dots[by_age[0]]["renderedOpacity"] == 1.0
    assert "last seen just now" in dots[ids[0]]["title"]
    assert "last seen 1.0 h ago" in dots[ids[1]]["title"]
    assert not browser.severe(), browser.severe()


def test_get_draws_the_lookup_path(network: list[NodeProcess], browser: Browser) -> None:
    """A get for a key held elsewhere shows its lookup: listed, and drawn as lines on the face."""
    from selenium.webdriver.common.by import By

    viewer, writer = network[2], network[4]
    held = {item["key"] for item in viewer.api("/v1/items")["items"]}
    for attempt in range(40):
        key = writer.api(f"/v1/names/elsewhere-{attempt}", "PUT", f"far {attempt}".encode())["key"]
        if key not in held and key not in {i["key"] for i in viewer.api("/v1/items")["items"]}:
            break
    else:
        pytest.fail("every key landed on the viewing node")
    before = viewer.api("/v1/lookups")["count"]
    browser.open(viewer)
    find = browser.driver.find_element
    find(By.ID, "get-key").send_keys(key)
    find(By.ID, "get-button").click()
    until("the value", lambda: browser.text("get-value") == f"far {attempt}")
    lookup = viewer.api("/v1/lookups")["lookups"][0]
    assert lookup["number"] > before
    assert (lookup["kind"], lookup["target"], lookup["found"]) == ("find_value", key, True)
    selector = f"#paths g.path[data-lookup='{lookup['number']}']"
    until(
        "the lookup in the list",
        lambda: browser.count(f"#lookup-list li[data-number='{lookup['number']}']") == 1,
    )
    until(
        "the path on the face",
        lambda: browser.count(f"{selector}:not(.old) line.hop") == lookup["hops"],
    )
    assert lookup["hops"] >= 1
    assert browser.count(f"{selector} line.hop.answered") >= 1
    assert browser.count(f"{selector} path.target") == 1
    listed = browser.js(
        "return document.querySelector(`#lookup-list li[data-number='${arguments[0]}']`)"
        ".textContent",
        lookup["number"],
    )
    assert f"{lookup['hops']} hops" in listed
    assert "found" in listed
    assert not browser.severe(), browser.severe()


def metric_counts(node: NodeProcess) -> dict[str, str]:
    """The panels' figures added up from the node's /metrics text (read with the Prometheus
    client library's parser), as the page shows them."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts = dict.fromkeys(("sent", "received", "failed", "lookups"), 0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            direction, outcome = sample.labels.get("direction"), sample.labels.get("outcome")
            if sample.name == "txdht_rpcs_total" and direction in ("sent", "received"):
                counts[direction] += int(sample.value)
                if direction == "sent" and outcome not in ("ok", "cancelled"):
                    counts["failed"] += int(sample.value)
            elif sample.name == "txdht_lookup_duration_seconds_count":
                counts["lookups"] = int(sample.value)
    return {name: str(n) for name, n in counts.items()}


def panel_counts(browser: Browser) -> dict[str, str]:
    """The lookups and RPCs sent, received and failed, as the page's panels show them."""
    return {
        name: browser.text(f"stat-{name}") for name in ("lookups", "sent", "received", "failed")
    }


def panels_agree(node: NodeProcess, browser: Browser) -> dict[str, str]:
    """Wait (bounded) until the panels show what /metrics says, read before and after them."""

    def agree() -> dict[str, str] | None:
        before, shown, after = metric_counts(node), panel_counts(browser), metric_counts(node)
        return shown if before == shown == after else None

    return until("the panels to show the counters of /metrics", agree)


def test_panels_show_the_counters_of_metrics(
    network: list[NodeProcess], browser: Browser, tmp_path: Path
) -> None:
    """The RPC and lookup panels add up the node's Prometheus counters: sent, received, failed
    (sent and ended other than ok or cancelled) and lookups, with a rate per second."""
    browser.open(network[0])  # the seed: everyone joined through it
    shown = panels_agree(network[0], browser)
    assert int(shown["sent"]) > 0
    assert int(shown["received"]) > 0
    until(  # from the second update on: the change since the last, per second
        "the rates",
        lambda: re.fullmatch(r"\d+\.\d /s", browser.text("stat-received-rate")),
    )
    # A node whose only seed does not answer: its requests to the seed fail.
    unreachable = NodeProcess(tmp_path / "nobody")  # given ports, never started
    node = NodeProcess(tmp_path / "alone")
    try:
        node.start(peers=[unreachable], k=K)
        node.wait_ready()
        browser.open(node)
        shown = panels_agree(node, browser)
        assert int(shown["failed"]) >= 1
        assert shown["received"] == "0"
        assert not browser.severe(), browser.severe()
    finally:
        node.kill()


def test_panels_show_whether_the_node_joined_its_live_contacts_and_the_network_size(
    network: list[NodeProcess], browser: Browser
) -> None:
    """The panels show what /v1/status says: joined (yes), the live contacts, and the
    network's estimated size (with a tilde)."""
    node = network[2]  # joined through the seed
    browser.open(node)

    def agree() -> dict[str, str] | None:
        status = node.api("/v1/status")
        expected = {
            "joined": "yes" if status["joined"] else "not yet",
            "live": str(status["live_contacts"]),
            "size": f"~{status['network_size']}",
        }
        shown = {name: browser.text(f"stat-{name}") for name in expected}
        return shown if shown == expected else None

    shown = until("the panels to show joined, live contacts and size", agree)
    assert shown["joined"] == "yes"
    assert int(shown["live"]) >= 1
    assert re.fullmatch(r"~\d+", shown["size"])
    assert not browser.severe(), browser.severe()


def test_narrow_width_stacks_without_horizontal_scroll(
    network: list[NodeProcess], browser: Browser, artifacts: Path
) -> None:
    """At a phone's 390x844 the panels stack under the face and nothing scrolls sideways."""
    browser.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    node = network[3]
    browser.open(node)
    peers = len(node.api("/v1/peers")["peers"])
    until("the dots", lambda: browser.count("#contacts circle.contact") == peers)
    assert browser.js("return window.innerWidth") == 390
    assert browser.js("return document.documentElement.scrollWidth") <= 390
    assert browser.js("return document.body.scrollWidth") <= 390
    face = browser.js("return document.getElementById('face').getBoundingClientRect().toJSON()")
    side = browser.js("return document.querySelector('.side').getBoundingClientRect().toJSON()")
    assert side["top"] >= face["bottom"]  # stacked, not side by side
    assert 300 <= face["width"] <= 390
    wide = browser.js(
        "return [...document.querySelectorAll('body *')]"
        ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className)"
    )
    assert wide == []
    browser.driver.save_screenshot(str(artifacts / "dashboard-390x844.png"))
    assert not browser.severe(), browser.severe()


def test_unreachable_node_then_recovery(tmp_path: Path, browser: Browser) -> None:
    """When the node stops answering the page says so and keeps trying; it recovers after."""
    node = NodeProcess(tmp_path / "solo")
    try:
        node.start(k=K)
        node.wait_ready()
        browser.open(node)
        assert browser.js("return document.getElementById('unreachable').hidden") is True
        node.kill()

        def banner() -> bool:
            shown = browser.js(
                "const b = document.getElementById('unreachable');"
                "return !b.hidden && b.getBoundingClientRect().height > 0"
            )
            return bool(shown) and browser.text("unreachable") == UNREACHABLE

        until("the unreachable message", banner)
        assert browser.js("return document.body.classList.contains('offline')") is True
        node.start(k=K)  # same ports, same data dir: the same node comes back
        node.wait_ready()
        until(
            "the recovery",
            lambda: browser.js("return document.getElementById('unreachable').hidden"),
        )
        until("fresh data", lambda: "live" in browser.text("live"))
        assert browser.js("return document.body.classList.contains('offline')") is False
        # Refused connections are logged by the browser itself; the page's code logged nothing.
        assert not browser.severe(allow_network=True), browser.severe(allow_network=True)
    finally:
        node.kill()


def test_listens_panel_lists_the_listens_as_listener_and_as_holder(
    network: list[NodeProcess], browser: Browser
) -> None:
    """While `txdht watch` runs on a node, its page lists the listen (with its holders), and a
    holder's page lists the listen it holds."""
    import subprocess

    from tests.test_processes import BIN, environment, txdht

    key = txdht(network[0], "put", "watched on the dashboard", "v").stdout.decode().strip()
    watch = subprocess.Popen(
        [str(BIN / "txdht"), "--node", network[2].url, "watch", key],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
    )
    try:
        browser.open(network[2])
        until("the listen", lambda: browser.text("listening-count") == "1")
        until("its holders", lambda: "holders" in browser.text("listening-list"))
        assert key[:12] in browser.text("listening-list")
        holder = next(n for n in network if n.api("/v1/listens")["held"])
        browser.open(holder)
        until("the held listen", lambda: int(browser.text("held-count") or 0) >= 1)
        assert "left" in browser.text("held-list")
        assert not browser.severe(), browser.severe()
    finally:
        watch.kill()
        watch.wait(timeout=10)
