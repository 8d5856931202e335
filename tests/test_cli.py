"""The command line on recorded trees and on the fake kernel: status,
explain, doctor, capture, and the daemon's modes."""

import json
import os

import pytest

from fakekernel import FakeKernel, GiB
from kernelbackend import DATA, KernelBackend, memonlined
from memonlined.backend import Backend
from memonlined.config import Config, resolve_mode
from memonlined.writer import Writer, configure_kernel
from memonlined.discover import discover
from memonlined.policy import Settings

DIMMS = os.path.join(DATA, "dimm-4x4g")   # a real 6.1 guest: five offline 4 GiB DIMMs


def test_status_json_merges_ranges_like_lsmem():
    rc, out = memonlined(DIMMS, "status", "--json")
    assert rc == 0
    rows = json.loads(out)["memory"]
    offline = [(r["block"], r["device"], r["choice"]) for r in rows if r["state"] == "offline"]
    assert offline == [("48-79", "PNP0C80:00", "Movable"), ("80-111", "PNP0C80:01", "Movable"),
                       ("112-143", "PNP0C80:02", "Movable"), ("144-175", "PNP0C80:03", "Normal"),
                       ("176-207", "PNP0C80:04", "Normal")]
    assert rows[0]["range"] == "0x0000000000000000-0x0000000007ffffff" and rows[0]["size"] == "128M"
    (node,) = json.loads(out)["nodes"]
    assert node["movable_mib"] == 0 and node["early_kernel_mib"] == 4095


def test_online_json_has_one_decision_a_line(tmp_path):
    kernel = FakeKernel(tmp_path)
    kernel.add_dimm(GiB)
    kernel.add_virtio_mem(4 * GiB)
    kernel.virtio_mem_plug("virtio5", 512 << 20)
    rc, out = memonlined(kernel, "--override", 'PNP0C80:00=kernel', "online", "--dry-run", "--json")
    assert rc == 0
    decisions = json.loads(out)["decisions"]
    lines = out.splitlines()
    assert len(decisions) == len(lines) == 12
    lines[0] = lines[0][len('{"decisions": ['):]
    lines = [line.strip()[:-2] if i == len(lines) - 1 else line.strip()[:-1] for i, line in enumerate(lines)]
    assert [json.loads(line) for line in lines] == decisions  # each line is one decision


def test_status_text():
    rc, out = memonlined(DIMMS, "status")
    assert rc == 0
    assert "0x0000000480000000-0x000000057fffffff  4G    offline  144-175  -       0     PNP0C80:03  Normal" in out
    assert "Node 0: early kernel 4095M, movable 0M" in out


def test_explain_gives_the_numbers_after_the_blocks_before_it():
    rc, out = memonlined(DIMMS, "explain", "144", "--json")
    assert rc == 0
    d = json.loads(out)
    assert (d["zone"], d["device"]) == ("Normal", "PNP0C80:03")
    (check,) = d["checks"]                      # the system-wide check failed: no per-node one
    # three 4 GiB DIMMs before it went Movable; 4 GiB more does not fit 301% of the boot memory
    assert check["movable"] == 3 * 1048576 and check["nr_pages"] == 1048576
    assert check["limit"] == 301 * check["kernel_early"] // 100 and not check["ok"]
    rc, out = memonlined(DIMMS, "explain", "144")
    assert "after the 96 offline blocks below it" in out and "does not fit" in out


def test_explain_of_an_online_and_of_a_missing_block():
    assert memonlined(DIMMS, "explain", "40")[1].strip() == "memory40 is online in Normal (boot)"
    assert memonlined(DIMMS, "explain", "9999")[0] == 2


def test_doctor():
    rc, out = memonlined(DIMMS, "doctor")
    assert rc == 0
    assert "in-kernel auto-movable policy: yes" in out
    assert "device PNP0C80:04: dimm, node 0, size 4G, 32 blocks" in out


def test_capture_gives_the_same_answers(tmp_path):
    out = str(tmp_path / "copy")
    assert memonlined(DIMMS, "capture", out)[0] == 0
    assert memonlined(out, "online", "--dry-run", "--json") == memonlined(DIMMS, "online", "--dry-run", "--json")
    assert os.readlink(os.path.join(out, "sys/devices/system/memory/memory48/firmware_node")).startswith("../../../")


@pytest.mark.parametrize("mode, settings, kernel_has_policy, expected", [
    ("userspace", {}, True, "userspace"),
    ("kernel", {}, True, "kernel"),
    ("kernel", {}, False, "userspace"),
    ("auto", {}, True, "kernel"),
    ("auto", {}, False, "userspace"),
    ("auto", {"overrides": {"dax": "movable"}}, True, "userspace"),
    ("auto", {"kernel_floor_mib": 256}, True, "userspace"),
    ("auto", {"policy": "movable"}, True, "userspace"),
])
def test_resolve_mode(tmp_path, mode, settings, kernel_has_policy, expected):
    kernel = FakeKernel(tmp_path, kernel_version=(6, 1) if kernel_has_policy else (5, 10))
    machine = discover(Backend(kernel.root)).machine
    assert resolve_mode("online_policy" in machine.kernel_params, Config(mode=mode, **settings))[0] == expected


def test_kernel_mode_hands_the_decisions_to_the_kernel(tmp_path):
    kernel = FakeKernel(tmp_path, policy="contig-zones", ratio=301)
    params = os.path.join(kernel.root, "sys/module/memory_hotplug/parameters")
    configure_kernel(Writer(KernelBackend(kernel)), Settings(ratio=150, numa_aware=False),
                     {n: open(os.path.join(params, n)).read().strip() for n in os.listdir(params)})
    assert [open(os.path.join(params, n)).read().strip()
            for n in ("online_policy", "auto_movable_ratio", "auto_movable_numa_aware")] == ["auto-movable", "150", "N"]
    kernel.add_dimm(4 * GiB)                   # 4 GiB fits 150% of 4 GiB: the kernel onlines it Movable itself
    assert {kernel.layout()[i] for i in range(48, 80)} == {"Movable"}


def test_kernel_floor(tmp_path):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    kernel.add_dimm(GiB)
    kernel.add_dimm(GiB)
    assert memonlined(kernel, "--kernel-floor-mib", "1024", "online")[0] == 0
    assert [kernel.layout()[i] for i in (48, 55, 56, 63)] == ["Normal", "Normal", "Movable", "Movable"]


def test_overrides_by_kind_and_by_device(tmp_path):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    kernel.add_dimm(GiB)                       # PNP0C80:00
    kernel.add_dimm(GiB)                       # PNP0C80:01
    vm = kernel.add_virtio_mem(4 * GiB)
    kernel.virtio_mem_plug(vm, GiB)
    rc, _ = memonlined(kernel, "--override", "dimm=kernel", "--override", "PNP0C80:01=movable",
                       "--policy", "kernel", "--override", f"{vm}=auto-movable", "online")
    assert rc == 0
    layout = kernel.layout()
    assert [layout[i] for i in (48, 56)] == ["Normal", "Movable"]
    assert {layout[i] for i in kernel.devices[vm].blocks} == {"Movable"}


def test_status_plans_on_a_copy_and_leaves_the_model_as_it_is(tmp_path, capsys):
    from memonlined.cli import cmd_status
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    kernel.add_dimm(GiB)
    backend = Backend(kernel.root)
    machine = discover(backend).machine
    before = {i: (b.state, b.valid_zones) for i, b in machine.blocks.items()}
    nodes = {n: repr(s) for n, s in machine.nodes.items()}
    assert cmd_status(backend, machine, Settings(), as_json=True) == 0
    assert {i: (b.state, b.valid_zones) for i, b in machine.blocks.items()} == before
    assert {n: repr(s) for n, s in machine.nodes.items()} == nodes
    rows = [r for r in json.loads(capsys.readouterr().out)["memory"] if r["block"] == "48-55"]
    assert rows[0]["state"] == "offline" and rows[0]["choice"] == "Movable"


def _journal_entries(sock):
    """The datagrams on SOCK as journald reads them (the native protocol)."""
    entries = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return entries
        entry = {}
        while data:
            line, _, rest = data.partition(b"\n")
            if b"=" in line:
                k, v = line.split(b"=", 1)
                data = rest
            else:  # NAME, then a 64-bit little-endian length, the value, a newline
                k, n = line, int.from_bytes(rest[:8], "little")
                v, data = rest[8:8 + n], rest[8 + n + 1:]
            entry[k.decode()] = v.decode()
        entries.append(entry)


def test_under_systemd_each_decision_reaches_the_journal_with_its_fields(tmp_path, monkeypatch):
    """A socket in place of journald's (the systemd guests read the real journal)."""
    import logging
    import socket
    from memonlined import notify
    path = str(tmp_path / "journal.socket")
    journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    journald.bind(path)
    monkeypatch.setattr(notify, "JOURNAL_SOCKET", path)
    monkeypatch.setenv("INVOCATION_ID", "0" * 32)
    kernel = FakeKernel(tmp_path / "sys")
    kernel.add_dimm(GiB)
    offline = [i for i, zone in kernel.layout().items() if zone is None]
    rc, _ = memonlined(kernel, "online")
    logging.getLogger("memonlined").warning("two\nlines")
    monkeypatch.delenv("INVOCATION_ID")
    memonlined(kernel, "status")  # stderr again for the tests after this one
    sent = _journal_entries(journald)
    assert rc == 0 and len(offline) == 8
    decisions = [e for e in sent if "BLOCK" in e]
    assert sorted(int(e["BLOCK"]) for e in decisions) == offline
    for e in decisions:
        assert e["MESSAGE"].startswith(f"memory{e['BLOCK']}: onlined") and e["RESULT"] == "onlined", e
        assert e["MESSAGE_ID"] and e["ZONE"] == "Movable" and e["DEVICE"] == "PNP0C80:00" and e["REASON"], e
        assert e["PRIORITY"] == "6" and e["SYSLOG_IDENTIFIER"] == "memonlined" and e["CODE_FUNC"], e
    assert sent[-1]["MESSAGE"] == "two\nlines" and sent[-1]["PRIORITY"] == "4"
    assert all(k.isupper() for e in sent for k in e)  # no record attributes journald would drop


def test_without_journald_the_log_goes_to_stderr(tmp_path, monkeypatch, capsys):
    from memonlined import notify
    monkeypatch.setattr(notify, "JOURNAL_SOCKET", str(tmp_path / "none"))
    monkeypatch.setenv("INVOCATION_ID", "0" * 32)
    kernel = FakeKernel(tmp_path / "sys")
    kernel.add_dimm(GiB)
    rc, _ = memonlined(kernel, "online")
    monkeypatch.delenv("INVOCATION_ID")
    assert rc == 0 and "memonlined: INFO: memory" in capsys.readouterr().err


def test_a_restarted_journald_is_found_again_and_a_stalled_one_never_waited_for(tmp_path, capsys):
    import logging
    import signal
    import socket
    from memonlined.cli import stderr_handler
    from memonlined.notify import JournalHandler
    path = str(tmp_path / "journal.socket")
    journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    journald.bind(path)
    handler = JournalHandler("memonlined", stderr_handler(), path)
    log = logging.getLogger("memonlined.test-journal")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        log.info("one")
        journald.close()
        os.unlink(path)
        log.info("while journald is away")
        assert "memonlined: INFO: while journald is away" in capsys.readouterr().err
        journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        journald.bind(path)
        log.info("two")
        assert [e["MESSAGE"] for e in _journal_entries(journald)] == ["two"]
        class Stuck(BaseException):  # not an Exception: logging would swallow it
            pass

        def stuck(*_):
            raise Stuck("blocked in a send to a journal socket nobody reads")
        signal.signal(signal.SIGALRM, stuck)
        signal.alarm(20)
        for i in range(100_000):  # nobody reads: the socket's queue fills up, the daemon goes on
            log.info("stalled %d", i)
            if "memonlined: INFO: stalled" in capsys.readouterr().err:
                break
        else:
            raise AssertionError("a full journal socket was never noticed")
    finally:
        signal.alarm(0)
        log.removeHandler(handler)
        handler.close()
        journald.close()
