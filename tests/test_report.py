"""What memonlined says after its decisions (issue 11): how much of each
device and node could be given back, the balloons, the metrics file. The
expected figures are counted from the fake kernel's own zones, not from
memonlined's model."""

import json
import logging
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemonrun import Run, wait_for
from fakekernel import FakeKernel, GiB, MiB
from kernelbackend import memonlined
from memonlined.backend import Backend
from memonlined.config import Config
from memonlined.discover import read_balloons

BLOCK = 128 * MiB


@pytest.mark.parametrize("driver, compaction, migrates", [
    ("virtio_balloon", True, True), ("virtio_balloon", False, False), ("vmw_balloon", True, False),
    ("hv_balloon", True, False), ("xen_balloon", True, False)])
def test_balloons_as_sysfs_shows_them(tmp_path, driver, compaction, migrates):
    kernel = FakeKernel(tmp_path)
    kernel.add_virtio_mem(GiB)                  # a virtio device that is no balloon
    name = kernel.add_balloon(driver, compaction=compaction, inflated_pages=1000)
    (balloon,) = read_balloons(Backend(kernel.root))
    assert (balloon.driver, balloon.device, balloon.migrates) == (driver, name, migrates)
    # vmstat's balloon counters are those of the drivers that use balloon compaction's lists
    assert balloon.inflated_pages == (1000 if driver in ("virtio_balloon", "vmw_balloon") else None)


def test_a_balloon_device_without_its_driver_is_not_a_balloon(tmp_path):
    kernel = FakeKernel(tmp_path)
    kernel.add_balloon("virtio_balloon", bound=False)
    kernel.add_balloon("hv_balloon", bound=False)
    assert read_balloons(Backend(kernel.root)) == []


def layout_of(kernel, name):
    return [kernel.layout()[i] for i in sorted(kernel.devices[name].blocks)]


def test_unmovable_balloon_kernel_keeps_hotplugged_memory_out_of_movable(tmp_path, caplog):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    kernel.add_balloon("hv_balloon")
    first, second, third = (kernel.add_dimm(GiB) for _ in range(3))
    rc, out = memonlined(kernel, "--unmovable-balloon", "kernel", "--override", f"{third}=movable", "online")
    assert rc == 0
    assert set(layout_of(kernel, first)) == set(layout_of(kernel, second)) == {"Normal"}
    assert set(layout_of(kernel, third)) == {"Movable"}          # a device override still wins
    assert "hv_balloon (1eccfd72-4b41-45ef-b73a-4a6e44c12924) is bound and its pages cannot migrate" in out
    assert out.count("(unmovable_balloon = kernel)") == 16       # the reason of each kernel decision


def test_by_default_a_balloon_changes_no_decision(tmp_path):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    kernel.add_balloon("hv_balloon")
    dimm = kernel.add_dimm(GiB)
    assert memonlined(kernel, "online")[0] == 0
    assert set(layout_of(kernel, dimm)) == {"Movable"}
    # with a balloon whose pages migrate, `kernel` changes nothing either
    kernel = FakeKernel(tmp_path / "2", policy="contig-zones")
    kernel.add_balloon("virtio_balloon", compaction=True)
    dimm = kernel.add_dimm(GiB)
    assert memonlined(kernel, "--unmovable-balloon", "kernel", "online")[0] == 0
    assert set(layout_of(kernel, dimm)) == {"Movable"}


def set_available(kernel, nbytes):
    path = os.path.join(kernel.root, "proc/meminfo")
    text = open(path).read().splitlines()
    text = [f"MemAvailable:   {nbytes // 1024} kB" if line.startswith("MemAvailable:") else line for line in text]
    open(path, "w").write("\n".join(text) + "\n")


def machine_with_three_devices(tmp_path):
    """A DIMM online Movable, a DIMM with kernel memory, virtio-mem with
    1 GiB Movable and 256 MiB offline."""
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    movable_dimm, kernel_dimm = kernel.add_dimm(GiB), kernel.add_dimm(2 * GiB)
    vm = kernel.add_virtio_mem(4 * GiB)
    kernel.virtio_mem_plug(vm, GiB)
    assert memonlined(kernel, "--override", f"{kernel_dimm}=kernel", "--override", "dimm=movable", "online")[0] == 0
    kernel.virtio_mem_plug(vm, 256 * MiB)                 # two more blocks, left offline
    return kernel, movable_dimm, kernel_dimm, vm


def counted(kernel, name):
    """(Movable, kernel, offline) bytes of a device, from the fake kernel's layout."""
    zones = [kernel.layout()[i] for i in kernel.devices[name].blocks]
    return (zones.count("Movable") * BLOCK, sum(1 for z in zones if z in ("Normal", "DMA32")) * BLOCK,
            zones.count(None) * BLOCK)


def test_status_says_what_each_device_and_node_could_give_back(tmp_path):
    kernel, movable_dimm, kernel_dimm, vm = machine_with_three_devices(tmp_path)
    set_available(kernel, 512 * MiB)
    rc, out = memonlined(kernel, "status", "--json")
    assert rc == 0
    status = json.loads(out)
    devices = {d["device"]: d for d in status["devices"]}
    for name in (movable_dimm, kernel_dimm, vm):
        d = devices[name]
        assert (d["movable_bytes"], d["kernel_bytes"], d["offline_bytes"]) == counted(kernel, name)
    assert counted(kernel, vm) == (GiB, 0, 256 * MiB)
    # a DIMM goes whole: its kernel memory keeps it all; virtio-mem gives back Movable and offline memory
    assert [devices[n]["removable_bytes"] for n in (movable_dimm, kernel_dimm, vm)] == [GiB, 0, GiB + 256 * MiB]
    (node,) = status["nodes"]
    assert node["hotplugged_bytes"] == {"movable": 2 * GiB, "kernel": 2 * GiB, "offline": 256 * MiB}
    # what is online and in use must fit MemAvailable; offline memory costs nothing
    assert node["unpluggable_now_bytes"] == status["unpluggable_now_bytes"] == 256 * MiB + 512 * MiB
    set_available(kernel, 8 * GiB)
    assert json.loads(memonlined(kernel, "status", "--json")[1])["unpluggable_now_bytes"] == 2 * GiB + 256 * MiB
    rc, out = memonlined(kernel, "status")
    assert f"Device {vm}: Movable 1G, kernel 0B, offline 256M; removable 1.2G" in out
    assert "Could be given back now: 2.2G of 2.2G removable (MemAvailable 8G" in out
    rc, out = memonlined(kernel, "explain", str(min(kernel.devices[kernel_dimm].blocks)))
    assert f"device {kernel_dimm}: Movable 0B, kernel 2G, offline 0B; removable 0B" in out


def test_doctor_and_status_name_the_balloon(tmp_path):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    assert "no balloon driver is bound" in memonlined(kernel, "doctor")[1]
    name = kernel.add_balloon("virtio_balloon", compaction=False, inflated_pages=262144)
    rc, out = memonlined(kernel, "doctor")
    assert f"balloon: virtio_balloon ({name}), pages cannot migrate, 1G inflated" in out
    assert "warning: virtio_balloon" in out and "no balloon compaction" in out
    balloons = json.loads(memonlined(kernel, "status", "--json")[1])["balloons"]
    assert balloons == [{"driver": "virtio_balloon", "device": name, "migrates": False, "inflated_bytes": GiB}]


def metrics(path):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(open(path).read()) for s in family.samples}


def test_the_metrics_file_parses_and_follows_every_change(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    kernel.add_balloon("hv_balloon")
    out = tmp_path / "textfile"
    out.mkdir()
    path = str(out / "memonlined.prom")
    run = Run(kernel, tmp_path / "state", settings=Config(settle_ms=10, metrics_file=path))
    seen = {}

    def script(run):
        assert metrics(path)[("memonlined_running", ())] == 1
        dimm = run.locked("add_dimm", GiB)
        wait_for(lambda: metrics(path).get(("memonlined_blocks_onlined_total", ())) == 8)
        seen.update(metrics(path))
        seen["dimm"], seen["counted"] = dimm, counted(kernel, dimm)
        run.locked("remove_dimm", dimm)
        wait_for(lambda: ("memonlined_device_bytes", (("device", dimm), ("kind", "dimm"), ("node", "0"),
                                                       ("state", "movable"))) not in metrics(path))

    with caplog.at_level(logging.INFO):
        assert run(script) == 0
    dimm = seen["dimm"]
    labels = (("device", dimm), ("kind", "dimm"), ("node", "0"))
    movable, in_kernel, offline = seen["counted"]
    assert movable == GiB
    for state, value in (("movable", movable), ("kernel", in_kernel), ("offline", offline)):
        assert seen[("memonlined_device_bytes", labels + (("state", state),))] == value
    assert seen[("memonlined_device_removable_bytes", labels)] == GiB
    assert seen[("memonlined_node_bytes", (("node", "0"), ("state", "movable")))] == GiB
    assert seen[("memonlined_balloon_info", (("device", "1eccfd72-4b41-45ef-b73a-4a6e44c12924"),
                                             ("driver", "hv_balloon"), ("migrates", "no")))] == 1
    assert seen[("memonlined_online_failures_total", ())] == 0
    final = metrics(path)
    assert final[("memonlined_running", ())] == 0
    assert os.listdir(out) == ["memonlined.prom"]             # replaced whole: no temporary file left
    warnings = [r.getMessage() for r in caplog.records if "cannot migrate" in r.getMessage()]
    assert len(warnings) == 1                                 # said once, not at every batch


def test_a_metrics_file_that_cannot_be_written_stops_nothing(tmp_path, caplog):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    path = str(tmp_path / "missing-dir" / "memonlined.prom")
    run = Run(kernel, tmp_path / "state", settings=Config(settle_ms=10, metrics_file=path))

    def script(run):
        dimm = run.locked("add_dimm", GiB)
        wait_for(lambda: set(layout_of(kernel, dimm)) == {"Movable"})

    assert run(script) == 0
    errors = [r.getMessage() for r in caplog.records if "cannot write the metrics file" in r.getMessage()]
    assert len(errors) == 1 and path in errors[0]


def test_the_metrics_file_never_writes_through_what_lies_at_its_temporary_name(tmp_path, monkeypatch):
    """A symlink planted at the temporary file's name (a shared directory):
    never written through; the next name is taken."""
    from memonlined.metrics import MetricsFile
    path = tmp_path / "memonlined.prom"
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    planted = tmp_path / f".memonlined-{os.getpid()}-00000000.prom.tmp"
    os.symlink(victim, planted)
    names = iter([b"\0" * 4, b"\1" * 4])
    monkeypatch.setattr(os, "urandom", lambda n: next(names))
    MetricsFile(str(path)).update("memonlined_running 1\n")
    assert path.read_text() == "memonlined_running 1\n" and not path.is_symlink()
    assert victim.read_text() == "untouched\n" and planted.is_symlink()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["memonlined.prom", "victim", planted.name])


def test_metrics_file_must_be_absolute(tmp_path, caplog):
    rc, _ = memonlined(FakeKernel(tmp_path), "--metrics-file", "memonlined.prom", "status")
    assert rc != 0
    assert "--metrics-file: invalid value 'memonlined.prom': expected off or an absolute path" in caplog.text


@pytest.mark.parametrize("driver", ["virtio_balloon", "hv_balloon", "xen_balloon", "vmw_balloon"])
def test_a_capture_records_the_balloons_and_doctor_says_the_same(tmp_path, driver):
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    kernel.add_virtio_mem(GiB)
    kernel.add_balloon(driver, compaction=False, inflated_pages=2048)
    if driver == "xen_balloon":  # what capture records of it
        open(os.path.join(kernel.root, "sys/devices/system/xen_memory/xen_memory0/target_kb"), "w").write("0\n")
    if driver == "vmw_balloon":
        open(os.path.join(kernel.root, "sys/module/vmw_balloon/initstate"), "w").write("live\n")
    out = str(tmp_path / "capture")
    assert memonlined(kernel, "capture", out)[0] == 0
    captured = read_balloons(Backend(out))
    assert captured == read_balloons(Backend(kernel.root)) and len(captured) == 1
    doctor = memonlined(kernel, "doctor")[1]
    assert memonlined(out, "doctor")[1] == doctor and "balloon: " in doctor


def test_doctor_names_the_dax_state_file_of_7_3_and_a_capture_keeps_it(tmp_path):
    """7.3's /sys/bus/dax/devices/daxX.Y/state (seen reading "offline" in a
    7.3.4 guest after `daxctl reconfigure-device --no-online`)."""
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    dax = kernel.add_dax_kmem(GiB)
    assert "dax state file" not in memonlined(kernel, "doctor")[1]   # before 7.3: no such file
    d = os.path.join(kernel.root, "sys/bus/dax/devices", dax)
    os.makedirs(d)
    open(os.path.join(d, "state"), "w").write("offline\n")
    doctor = memonlined(kernel, "doctor")[1]
    assert f"device {dax}: dax" in doctor and "; dax state file: offline (a write to it onlines" in doctor
    out = str(tmp_path / "capture")
    assert memonlined(kernel, "capture", out)[0] == 0
    assert memonlined(out, "doctor")[1] == doctor


def test_without_balloon_counters_whether_pages_migrate_is_unknown_and_changes_nothing(tmp_path):
    """No /proc/vmstat balloon counters (CONFIG_VM_EVENT_COUNTERS=n): a
    virtio_balloon is neither taken for migrating nor for not migrating."""
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    name = kernel.add_balloon("virtio_balloon")
    os.unlink(os.path.join(kernel.root, "proc/vmstat"))
    (balloon,) = read_balloons(Backend(kernel.root))
    assert (balloon.device, balloon.migrates, balloon.inflated_pages) == (name, None, None)
    dimm = kernel.add_dimm(GiB)
    assert memonlined(kernel, "--unmovable-balloon", "kernel", "online")[0] == 0
    assert set(layout_of(kernel, dimm)) == {"Movable"}
    assert "pages may migrate or not" in memonlined(kernel, "doctor")[1]


def test_a_tree_that_is_not_what_sysfs_looks_like_gives_no_balloon_and_no_traceback(tmp_path, caplog):
    kernel = FakeKernel(tmp_path, policy="contig-zones")
    os.makedirs(os.path.join(kernel.root, "sys/bus/vmbus/drivers"))
    open(os.path.join(kernel.root, "sys/bus/vmbus/drivers/hv_balloon"), "w").close()   # a file
    os.makedirs(os.path.join(kernel.root, "sys/bus/virtio/devices/virtio9"))
    os.mkdir(os.path.join(kernel.root, "sys/bus/virtio/devices/virtio9/device"))       # a directory
    dimm = kernel.add_dimm(GiB)
    assert read_balloons(Backend(kernel.root)) == []
    assert memonlined(kernel, "online")[0] == 0
    assert set(layout_of(kernel, dimm)) == {"Movable"}


def test_a_static_device_with_kernel_and_offline_blocks_gives_nothing_back_and_nodes_are_bounded_alone(tmp_path):
    """Two nodes, each with a virtio-mem device: each node's figure is bounded
    by the system's MemAvailable on its own; the system's by it once."""
    kernel = FakeKernel(tmp_path, policy="contig-zones",
                        boot_ram={0: [(0, 2 * GiB), (4 * GiB, 2 * GiB)], 1: [(8 * GiB, 4 * GiB)]})
    vms = [kernel.add_virtio_mem(4 * GiB, node=n) for n in (0, 1)]
    for vm in vms:
        kernel.virtio_mem_plug(vm, GiB)
    dimm = kernel.add_dimm(GiB, node=1)
    assert memonlined(kernel, "--override", f"{dimm}=kernel", "--override", "virtio-mem=movable", "online")[0] == 0
    kernel.write_state(max(kernel.devices[dimm].blocks), "offline")   # the DIMM: kernel and offline blocks
    set_available(kernel, 768 * MiB)
    status = json.loads(memonlined(kernel, "status", "--json")[1])
    devices = {d["device"]: d for d in status["devices"]}
    assert (devices[dimm]["kernel_bytes"], devices[dimm]["offline_bytes"], devices[dimm]["removable_bytes"]) == \
        (GiB - BLOCK, BLOCK, 0)
    nodes = {n["node"]: n for n in status["nodes"]}
    assert [nodes[n]["removable_bytes"] for n in (0, 1)] == [GiB, GiB]
    assert [nodes[n]["unpluggable_now_bytes"] for n in (0, 1)] == [768 * MiB, 768 * MiB]
    assert status["unpluggable_now_bytes"] == 768 * MiB


def test_the_metrics_file_follows_memavailable_and_a_late_balloon_without_uevents(tmp_path, monkeypatch):
    import memonlined.metrics as metrics_module
    monkeypatch.setattr(metrics_module, "REFRESH", 0.1)
    kernel = FakeKernel(tmp_path / "k", policy="contig-zones")
    path = str(tmp_path / "memonlined.prom")
    run = Run(kernel, tmp_path / "state", settings=Config(settle_ms=10, metrics_file=path))

    def script(run):
        set_available(kernel, 300 * MiB)
        wait_for(lambda: metrics(path).get(("memonlined_memory_available_bytes", ())) == 300 * MiB)
        name = kernel.add_balloon("virtio_balloon", inflated_pages=512)   # bound after the start
        wait_for(lambda: metrics(path).get(("memonlined_balloon_inflated_bytes",
                                             (("device", name), ("driver", "virtio_balloon")))) == 2 * MiB)

    assert run(script) == 0
