"""Fixtures of the real-guest tests (marker `vm`; the systemd one: `vm_systemd`).

Which Debian kernels: MEMONLINED_E2E_KERNELS (default "bookworm,bullseye";
"bookworm,bullseye,trixie" adds 6.12), and MEMONLINED_E2E_NEWEST for a few
scenarios (default "trixie-backports": 7.3; empty: none). The systemd-unit test runs only with
MEMONLINED_E2E_SYSTEMD=0 leaves out the systemd-unit test (it builds a debootstrap root on first use).

Prerequisites (QEMU, virtme-ng, the kernels) come from tests/e2e/setup.sh,
which tests/run.sh runs first; when they are missing this runs it once. A
missing prerequisite fails the tests loudly. The only skip: not root outside
CI (CI=true makes that an error too).
"""
import concurrent.futures
import json
import os
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from guest import CACHE, REPO
import scenarios

KERNELS = scenarios.KERNELS
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "oracle(scenario, ...): the kernel-policy runs a vm test compares with")
    config.addinivalue_line("markers", "vm_systemd: the systemd-unit test in a debootstrap guest "
                                       "(MEMONLINED_E2E_SYSTEMD=0 leaves it out)")


def _missing():
    """What the guests need and is not there, as a list of messages."""
    missing = []
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        missing.append("qemu-system-x86_64")
    if not os.path.exists(os.path.join(REPO, ".venv/bin/vng")):
        missing.append(".venv/bin/vng (virtme-ng)")
    try:
        with open(os.path.join(CACHE, "kernels.json")) as f:
            kernels = json.load(f)
    except (OSError, ValueError):
        kernels = {}
    for suite in KERNELS + scenarios.NEWEST + ["bookworm", "trixie"]:  # trixie: test_lifecycle.py
        path = kernels.get(suite, {}).get("vmlinuz")
        if not path or not os.path.exists(path):
            missing.append(f"the {suite} kernel ({CACHE}/kernels.json)")
    return missing


_setup_lock = threading.Lock()
_setup_result = []


@pytest.fixture(scope="session")
def e2e_ready():
    """QEMU, vng and the kernels are there (setup.sh run once if not); fail loudly if not."""
    with _setup_lock:
        if not _setup_result:
            _setup_result.append(_prepare())
    kind, message = _setup_result[0]
    if kind == "skip":
        pytest.skip(message)
    if kind == "fail":
        pytest.fail(message, pytrace=False)


def _prepare():
    if os.environ.get("MEMONLINED_E2E_SETUP_FAILED"):
        return "fail", ("tests/e2e/setup.sh failed in tests/run.sh (see its output above): "
                        + os.environ["MEMONLINED_E2E_SETUP_FAILED"])
    if os.geteuid() != 0:
        msg = "the real-guest tests need root (QEMU, modules in /lib/modules, /var/cache)"
        return ("fail", msg + "; CI=true makes a missing prerequisite an error") if IN_CI else ("skip", msg)
    unknown = [k for k in KERNELS + scenarios.NEWEST if k not in ("bullseye", "bookworm", "trixie", "trixie-backports")]
    if unknown:
        return "fail", f"MEMONLINED_E2E_KERNELS: unknown suite(s) {unknown}"
    if _missing():
        print(f"\ne2e: missing {', '.join(_missing())}: running tests/e2e/setup.sh", flush=True)
        p = subprocess.run(["bash", os.path.join(HERE, "setup.sh")], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if p.returncode or _missing():
            return "fail", (f"tests/e2e/setup.sh could not provide {', '.join(_missing()) or 'everything'} "
                            f"(exit {p.returncode}):\n{p.stdout[-3000:]}")
    return "ok", ""


class Oracles:
    """The kernel-policy runs (scenarios.ORACLES), one guest at a time in a
    background thread, in the order the selected tests need them, while the
    tests run their memonlined guests: two guests at a time on the 2-core
    machine. A 5.10 test reuses the 6.1 kernel's run of its scenario."""

    def __init__(self):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle")
        self.futures = {}
        self.lock = threading.Lock()

    def submit(self, scenario, suite):
        key = (scenario, scenarios.oracle_suite(suite))
        with self.lock:
            if key not in self.futures:
                fn, kw = scenarios.ORACLES[scenario]
                self.futures[key] = self.pool.submit(fn, key[1], "kernel", **kw)
            return self.futures[key]

    def result(self, scenario, suite, timeout=1800):
        return self.submit(scenario, suite).result(timeout)


@pytest.fixture(scope="session")
def oracles(request, e2e_ready):
    o = Oracles()
    for item in request.session.items:  # prefetch, in test order
        marker = item.get_closest_marker("oracle")
        params = getattr(getattr(item, "callspec", None), "params", {})
        suite = params.get("suite") or params.get("systemd_root")  # test_systemd.py: the root's suite
        if marker and suite:
            for scenario in marker.args:
                o.submit(scenario, suite)
    yield o
    for f in o.futures.values():
        f.cancel()
    o.pool.shutdown(wait=True)


# -- timings -------------------------------------------------------------------

_durations = {}


def pytest_runtest_logreport(report):
    if "vm" in report.keywords or "vm_systemd" in report.keywords:
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _durations and not scenarios.TIMINGS:
        return
    tr = terminalreporter
    tr.section("memonlined e2e timings")
    for nodeid, seconds in _durations.items():
        tr.write_line(f"{seconds:7.1f}s  {nodeid.split('::', 1)[-1]}")
    if _durations:
        tr.write_line(f"{sum(_durations.values()):7.1f}s  all real-guest tests")
    if scenarios.TIMINGS:
        tr.write_line("guests (boot, total, steps; guests of one test run two at a time):")
        for what, seconds in scenarios.TIMINGS:
            tr.write_line(f"{seconds:7.1f}s    {what}")
