"""The HTML placement report: formatting units, and the seed's report rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import types
from html.parser import HTMLParser

import pytest

from harness import plugin
from harness.placement import ContainerRecord, Placement, Snapshot
from harness.report import clean_trace, placement_properties, render_report, write_report
from harness.run import JobResult, RunResult

from worker_groups import SEED_RUNS

# Chromium flags that keep a headless browser off the network: no background updates, sync,
# component downloads, QUIC or first-run pings.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


class _Elements(HTMLParser):
    """Every start tag of a document with its attributes, as a browser's DOM dump lists them."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.section: str = ""

    def handle_starttag(self, tag, attrs) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "section":
            self.section = attributes.get("data-mode", "")
        attributes["section"] = self.section
        self.elements.append((tag, attributes))

    def having(self, attribute: str, mode: str) -> list[dict[str, str]]:
        return [attrs for _, attrs in self.elements if attribute in attrs and attrs["section"] == mode]


def _fake_result(trace: str, secret: str) -> RunResult:
    baseline = Snapshot("host", "before")
    after = Snapshot("host", "after <job>", images=["app:<1>"],
                     containers=[ContainerRecord("web<script>", "abc", "app:<1>", "running")])
    job = JobResult("<build>", "build", "success", 0, trace, 1.0,
                    {"containers": [{"id": "1", "name": "runner-x-build", "type": "build"}],
                     "timings": {"prepare_executor": 1.0, "step_script": 2.0, "cleanup": 0.5}},
                    started_at=100.0)
    return RunResult("fake", "dood", [job], Placement("dood", baseline, [after]), secrets=[secret],
                     runner_volumes=["/var/run/docker.sock:/var/run/docker.sock"])


def test_trace_loses_ansi_and_sections() -> None:
    trace = "section_start:1700000000:step_script\r\x1b[0K\x1b[32;1mhello\x1b[0;m\nsection_end:1700000001:step_script\r\x1b[0K"
    assert clean_trace(trace, []) == "hello\n"


def test_trace_masks_secret_again() -> None:
    assert "s3cr3t-value" not in clean_trace("login with s3cr3t-value\n", ["s3cr3t-value"])


def test_report_escapes_every_name() -> None:
    html = render_report([_fake_result("<b>trace</b>", "s3cr3t-value")])
    assert "<script>" not in html
    assert "web&lt;script&gt;" in html
    assert "&lt;build&gt;" in html
    assert "&lt;b&gt;trace&lt;/b&gt;" in html


def test_report_names_host_engine() -> None:
    result = _fake_result("", "secret-value")
    result.host = "sandbox dind-dood-harness-1a2b3c4d-sandbox-5e6f70"

    assert "Host engine: <code>sandbox dind-dood-harness-1a2b3c4d-sandbox-5e6f70</code>" in render_report([result])


def test_report_has_no_external_reference() -> None:
    html = render_report([_fake_result("trace", "s3cr3t-value")])
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html
    assert "<script" not in html


def test_dood_socket_arrow_points_at_host() -> None:
    html = render_report([_fake_result("trace", "s3cr3t-value")])
    assert 'data-from="runner-x-build" data-to="host"' in html
    assert 'data-via="/var/run/docker.sock"' in html


def test_properties_name_daemon_contents() -> None:
    properties = dict(placement_properties(_fake_result("trace", "s3cr3t-value")))
    assert properties["placement fake/dood host"] == "image app:<1>; container web<script>"
    assert properties["placement fake/dood arrow"] == "runner-x-build -> host"


def _chromium(*arguments: str, profile) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: run `make browser` (apt-get install -y chromium)"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def seed_dom(scenario_runs, tmp_path_factory) -> _Elements:
    """The DOM that headless Chromium builds from the seed's report, for both modes."""
    folder = tmp_path_factory.mktemp("report")
    page = write_report([scenario_runs("seed", "dind"), scenario_runs("seed", "dood")], folder / "seed.html")
    dumped = _chromium("--dump-dom", page.as_uri(), profile=folder / "profile")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    screenshot = _chromium(f"--screenshot={folder / 'seed.png'}", "--window-size=1100,2400", page.as_uri(),
                           profile=folder / "profile")
    assert screenshot.returncode == 0, screenshot.stderr[-2000:]
    assert (folder / "seed.png").stat().st_size > 10_000
    parser = _Elements()
    parser.feed(dumped.stdout)
    return parser


@pytest.mark.engine
@pytest.mark.dind
@pytest.mark.dood
@pytest.mark.slow
@SEED_RUNS
class TestSeedReportInBrowser:
    def test_dind_boxes(self, seed_dom) -> None:
        daemons = {attrs["data-daemon"] for attrs in seed_dom.having("data-daemon", "dind") if attrs.get("class") == "daemon"}
        assert {"host", "dind:BuildImages", "dind:TestImage"} <= daemons

    def test_dood_has_host_box_only(self, seed_dom) -> None:
        daemons = {attrs["data-daemon"] for attrs in seed_dom.having("data-daemon", "dood") if attrs.get("class") == "daemon"}
        assert daemons == {"host"}

    def test_dind_build_arrows_reach_own_daemon(self, seed_dom) -> None:
        arrows = [attrs for attrs in seed_dom.having("data-to", "dind") if attrs.get("data-role") == "build"]
        targets = {(attrs["data-from"].endswith("-build"), attrs["data-to"]) for attrs in arrows}
        assert targets == {(True, "dind:BuildImages"), (True, "dind:TestImage")}
        assert all(attrs["data-via"] == "tcp://docker:2375" for attrs in arrows)

    def test_dind_service_runs_daemon(self, seed_dom) -> None:
        arrows = [attrs for attrs in seed_dom.having("data-to", "dind") if attrs.get("data-role") == "service"]
        assert {attrs["data-to"] for attrs in arrows} == {"dind:BuildImages", "dind:TestImage"}

    def test_dood_arrows_reach_host_socket(self, seed_dom) -> None:
        arrows = [attrs for attrs in seed_dom.having("data-to", "dood") if attrs.get("class") == "arrow"]
        assert len(arrows) == 2
        assert {attrs["data-to"] for attrs in arrows} == {"host"}
        assert {attrs["data-via"] for attrs in arrows} == {"/var/run/docker.sock"}

    def test_pushed_image_in_both_dind_boxes(self, seed_dom) -> None:
        # The texts are not attributes, so the item elements are counted per daemon box instead.
        items = [attrs for attrs in seed_dom.having("data-kind", "dind") if attrs.get("class") == "item"]
        assert sum(1 for attrs in items if attrs["data-kind"] == "image") >= 3

    def test_timeline_marks_each_event(self, seed_dom) -> None:
        events = {attrs["data-event"] for attrs in seed_dom.having("data-event", "dind")}
        assert {"created", "service ready", "step_script", "removed"} <= events

    def test_sections_name_host_engine(self, seed_dom, scenario_runs) -> None:
        hosts = [attrs["data-host"] for tag, attrs in seed_dom.elements if tag == "section" and "data-host" in attrs]
        assert hosts == [scenario_runs("seed", "dind").host, scenario_runs("seed", "dood").host]

    def test_traces_collapsed_per_job(self, seed_dom) -> None:
        traces = [attrs["data-job"] for tag, attrs in seed_dom.elements if tag == "details" and "data-job" in attrs]
        assert traces == ["BuildImages", "TestImage", "BuildImages", "TestImage"]


class _Config:
    """The parts of a pytest config that the plugin's report hooks read; ``worker`` adds xdist's."""

    def __init__(self, rootpath, results: list | None = None, worker: bool = False) -> None:
        self.rootpath = rootpath
        self.stash = pytest.Stash()
        if results is not None:
            self.stash[plugin._RUNS_KEY] = types.SimpleNamespace(results=lambda: list(results))
        if worker:
            self.workerinput = {}
            self.workeroutput = {}

    def getoption(self, name: str, default=None):
        return "report.html" if name == "--harness-report" else default


def test_report_merges_xdist_workers(tmp_path) -> None:
    first, second = _fake_result("", "secret-1"), _fake_result("", "secret-2")
    first.scenario, second.scenario = "from-worker-one", "from-worker-two"
    workers = [_Config(tmp_path, [first], worker=True), _Config(tmp_path, [second], worker=True)]
    controller = _Config(tmp_path)

    for worker in workers:
        plugin.pytest_sessionfinish(types.SimpleNamespace(config=worker), 0)
        plugin.pytest_testnodedown(types.SimpleNamespace(config=controller, workeroutput=worker.workeroutput), None)
    # Catches workers that write the report themselves, where the last one to finish wins.
    assert not (tmp_path / "report.html").exists()
    plugin.pytest_sessionfinish(types.SimpleNamespace(config=controller), 0)

    html = (tmp_path / "report.html").read_text()
    assert "from-worker-one" in html
    assert "from-worker-two" in html
