"""memonlined in real guests against the kernel's own auto-movable policy.

Each test boots Debian kernels under QEMU (TCG) with the host's root shared
in, hot-plugs memory over QMP, and compares memonlined's layout (the zone of
every block) with the one the kernel's policy produced for the same scenario
in another guest (scenarios.py; the 5.10 kernel has no policy: its oracle is
the 6.1 kernel's run). See conftest.py for which kernels run.
"""
import re

import pytest

import scenarios as S
from scenarios import KERNELS, NEWEST

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("e2e_ready")]

WITH_5_10 = list(KERNELS)                             # scenarios that run on 5.10 too
POLICY_KERNELS = [k for k in KERNELS if k != "bullseye"] or ["bookworm"]
AND_NEWEST = WITH_5_10 + NEWEST                       # and on the newest kernel


def check_daemon(res):
    assert res["rc"] == 0, f"memonlined run exited {res['rc']}:\n{res['log'][-4000:]}"
    bad = [line for line in res["log"].splitlines() if "ERROR" in line or "Traceback" in line]
    assert not bad, "memonlined logged errors:\n" + "\n".join(bad) + "\n" + res["log"][-4000:]


def assert_same(mine, kernel, checkpoint, suite, log=""):
    """memonlined's layout equals the kernel's, block for block."""
    a, b = mine[checkpoint], kernel[checkpoint]
    if a == b:
        return
    d = S.diff(a, b)
    raise AssertionError(
        f"{checkpoint} on {suite}: {len(d)} blocks differ (block, memonlined, kernel {S.oracle_suite(suite)}): "
        f"{d[:40]}\nmemonlined: {S.summary(a)}\nkernel:     {S.summary(b)}\n"
        f"memonlined's decisions for them:\n{S.decisions_for(log, [n for n, _, _ in d[:40]])}")


def runs(layout, zone):
    return S.summary({n: z for n, z in layout.items() if z == zone})


@pytest.mark.oracle("dimms")
@pytest.mark.parametrize("suite", AND_NEWEST)
def test_cover_letter_dimms(suite, oracles):
    """Five 4 GiB DIMMs into a 4 GiB guest, one by one: 48-143 Movable (DIMMs
    0-2), 144-207 Normal (DIMMs 3-4), after each DIMM as the kernel had it."""
    mine = S.dimms(suite, "memonlined")
    kernel = oracles.result("dimms", suite)
    check_daemon(mine)
    final = kernel["after DIMM 4"]
    assert runs(final, "Movable") == "48-143 Movable" and runs(final, "Normal") == "32-47 Normal, 144-207 Normal", \
        f"the kernel's own layout is not the cover letter's: {S.summary(final)}"
    for i in range(5):
        assert_same(mine, kernel, f"after DIMM {i}", suite, mine["log"])


@pytest.mark.oracle("virtio-mem")
@pytest.mark.parametrize("suite", AND_NEWEST)
def test_cover_letter_virtio_mem_grow_and_shrink(suite, oracles):
    """One virtio-mem device grown 0 -> 16 GiB (48-143 Movable, then Normal 144,
    Movable 145-147, ...), then asked to shrink to 2 GiB."""
    mine = S.virtio_mem_grow_shrink(suite, "memonlined")
    kernel = oracles.result("virtio-mem", suite)
    check_daemon(mine)
    grown = kernel["grown"]
    assert [grown[n] for n in (48, 143, 144, 145, 147, 148)] == \
        ["Movable", "Movable", "Normal", "Movable", "Movable", "Normal"], S.summary(grown)
    assert_same(mine, kernel, "grown", suite, mine["log"])
    # The shrink is the driver's doing (it offlines and removes blocks); what
    # is left must still be where memonlined put it.
    assert mine["plugged after shrink"] == kernel["plugged after shrink"] or suite == "bullseye", \
        (mine["plugged after shrink"], kernel["plugged after shrink"])
    for n, zone in mine["shrunk"].items():
        assert mine["grown"].get(n) == zone, f"block {n}: {mine['grown'].get(n)} before the shrink, {zone} after"
    if suite != "bullseye":  # 5.10's virtio-mem driver picks other blocks to unplug
        assert_same(mine, kernel, "shrunk", suite, mine["log"])


_boot_offline = {}


def boot_offline_run(suite):
    """One memonlined guest per kernel for the two tests below."""
    if suite not in _boot_offline:
        try:
            _boot_offline[suite] = S.boot_offline(suite, "memonlined")
        except Exception as e:  # noqa: BLE001 - the second test reports the same failure
            _boot_offline[suite] = e
    if isinstance(_boot_offline[suite], Exception):
        raise _boot_offline[suite]
    return _boot_offline[suite]


@pytest.mark.oracle("boot-offline")
@pytest.mark.parametrize("suite", AND_NEWEST)
def test_boot_offline_memory_dry_runs_and_a_udev_rule(suite, oracles):
    """Three 4 GiB DIMMs and a 2 GiB virtio-mem device present at start, left
    offline at boot; memonlined's start-up onlines them like the kernel's
    policy at boot. Before that, in the same guest: `online --dry-run` and
    `run --dry-run` change nothing and predict what the real run then does,
    and a distribution-style udev rule is reported by doctor and by run."""
    mine = boot_offline_run(suite)
    kernel = oracles.result("boot-offline", suite)
    check_daemon(mine)
    before = mine["before"]
    offline = sorted(n for n, z in before.items() if z is None)

    # Scenario 7: the udev rule.
    rule = S.UDEV_RULE + ":1"
    assert f"conflict: {rule} onlines memory blocks (online)" in mine["doctor"], mine["doctor"]
    assert rule in mine["run --dry-run log"], mine["run --dry-run log"]
    assert "no udev rule onlines memory blocks" in mine["doctor after masking"], mine["doctor after masking"]

    # Scenario 6: the dry-runs wrote nothing and predicted the real run.
    assert mine["online --dry-run rc"] == 0, mine["online --dry-run"]
    assert mine["run --dry-run rc"] == 0, mine["run --dry-run log"]
    assert mine["state after online --dry-run"] == mine["state before"]
    assert mine["state after run --dry-run"] == mine["state before"]
    assert sorted(mine["dry predictions"]) == offline
    assert mine["daemon dry predictions"] == mine["dry predictions"]
    real = {n: mine["final"][n] for n in offline}
    wrong = {n: (p, real[n]) for n, p in mine["dry predictions"].items() if p != real[n]}
    assert not wrong, f"dry-run predicted otherwise than the real run did (block: (predicted, real)): {wrong}\n" \
                      f"{[d for d in mine['dry json'] if d['block'] in wrong][:5]}"

    # Scenario 3: the layout after start-up equals the kernel's at boot.
    assert_same(mine, kernel, "final", suite, mine["log"])


@pytest.mark.parametrize("suite", WITH_5_10)
def test_a_run_after_run_dry_run_onlines_the_boot_offline_memory(suite, oracles):
    """`memonlined run --dry-run` leaves nothing behind that changes the real
    `memonlined run` started after it (same default state dir, /run/memonlined)."""
    mine = boot_offline_run(suite)
    assert "real run after run --dry-run" not in mine, mine["real run after run --dry-run"]


@pytest.mark.oracle("numa2-numa", "numa2-nonuma")
@pytest.mark.parametrize("suite", POLICY_KERNELS)
def test_two_numa_nodes_numa_aware_on_and_off(suite, oracles):
    """A virtio-mem device per node (2 GiB boot memory each): node 0's grown to
    1 GiB, then node 1's to 8 GiB. Numa-aware, node 1's ratio gives it Normal
    blocks; not numa-aware, the system's ratio leaves it all Movable."""
    mine_on = S.numa2(suite, "memonlined", numa_aware=True)
    mine_off = S.numa2(suite, "memonlined", numa_aware=False)
    on, off = oracles.result("numa2-numa", suite), oracles.result("numa2-nonuma", suite)
    check_daemon(mine_on)
    check_daemon(mine_off)
    assert "Normal" in [on["vm1 grown"][n] for n in on["vm1 grown"] if n >= 176]
    assert on["vm1 grown"] != off["vm1 grown"], "numa-awareness made no difference: the scenario is too small"
    for cp in ("vm0 grown", "vm1 grown"):
        assert_same(mine_on, on, cp, suite, mine_on["log"])
        assert_same(mine_off, off, cp, suite, mine_off["log"])


@pytest.mark.oracle("virtio-mem-bbm")
@pytest.mark.parametrize("suite", POLICY_KERNELS)
def test_virtio_mem_big_block_mode(suite, oracles):
    """virtio-mem with block-size=1G (BBM): each 1 GiB unit wholly in one zone."""
    mine = S.virtio_mem_bbm(suite, "memonlined")
    kernel = oracles.result("virtio-mem-bbm", suite)
    check_daemon(mine)
    assert "big block size" in mine["probe"], mine["probe"]
    assert "probe lines are not in the kernel log" not in mine["log"], \
        "memonlined did not find the virtio_mem probe lines that dmesg shows:\n" + mine["probe"]
    grown = kernel["grown"]
    assert "Normal" in [grown[n] for n in grown if n >= 48], S.summary(grown)
    for unit in range(48, 176, 8):  # one zone per unit
        assert len({grown[n] for n in range(unit, unit + 8)}) == 1, S.summary(grown)
    assert_same(mine, kernel, "grown", suite, mine["log"])


@pytest.mark.oracle("virtio-mem-bbm")
@pytest.mark.parametrize("suite", ["bookworm"])
def test_virtio_mem_big_block_mode_after_the_kernel_log_wrapped(suite, oracles):
    """The same growth with the daemon restarted halfway, after the kernel log
    was flooded until the virtio_mem probe lines were gone: the unit learned
    before the restart is kept (the lifecycle issue's defect 9)."""
    mine = S.virtio_mem_bbm_wrapped(suite)
    kernel = oracles.result("virtio-mem-bbm", suite)
    check_daemon(mine)
    assert mine["rc1"] == 0, mine["log1"][-3000:]
    assert mine["probe lines left"] == 0, "the flood did not push the probe lines out of the kernel log"
    assert "probe lines are not in the kernel log" not in mine["log"], mine["log"][-3000:]
    assert_same(mine, kernel, "grown", suite, mine["log"])


@pytest.mark.oracle("numa-empty-node")
@pytest.mark.parametrize("suite", ["bookworm"])
def test_a_node_without_cpus_or_memory_at_boot_receives_virtio_mem_and_a_dimm(suite, oracles):
    """The lifecycle issue's defect 4 in a real kernel: memory on a node that
    came online after memonlined started."""
    mine = S.numa_empty_node(suite, "memonlined")
    kernel = oracles.result("numa-empty-node", suite)
    check_daemon(mine)
    assert "2" not in mine["nodes at boot"].split("\n")[0] and "2" in mine["nodes"], (mine["nodes at boot"], mine["nodes"])
    assert_same(mine, kernel, "virtio-mem grown", suite, mine["log"])
    assert_same(mine, kernel, "dimm added", suite, mine["log"])


@pytest.mark.oracle("dax-kmem")
@pytest.mark.parametrize("suite", AND_NEWEST)
def test_dax_kmem_devices_and_a_race_with_daxctl(suite, oracles):
    """NVDIMMs made system RAM with daxctl (dax/kmem): each device wholly in
    one zone, as the kernel's policy put it; then daxctl.conf.d set up to
    online a device (doctor reports it) and daxctl onlining it itself while
    memonlined runs."""
    mine = S.dax_kmem(suite, "memonlined")
    kernel = oracles.result("dax-kmem", suite)
    check_daemon(mine)
    assert "System RAM (kmem)" in mine["iomem"], mine["iomem"]
    new0 = [n for n in kernel["after NVDIMM 0"] if n not in kernel["boot"]]
    assert new0 and {kernel["after NVDIMM 0"][n] for n in new0} == {"Movable"}, S.summary(kernel["after NVDIMM 0"])
    new1 = [n for n in kernel["after NVDIMM 1"] if n not in kernel["after NVDIMM 0"]]
    assert new1 and {kernel["after NVDIMM 1"][n] for n in new1} == {"Normal"}, S.summary(kernel["after NVDIMM 1"])
    for checkpoint in ("after NVDIMM 0", "after NVDIMM 1"):
        assert_same(mine, kernel, checkpoint, suite, mine["log"])
    # The race: daxctl onlined the third device itself while memonlined acted
    # on the same blocks. doctor had reported the configuration; every block is
    # online, daxctl succeeded, memonlined logged no error (check_daemon) and
    # accounted for every block.
    assert f"conflict: {S.DAXCTL_CONF}:1 [reconfigure-device nv2]" in mine["doctor with daxctl.conf"], \
        mine["doctor with daxctl.conf"]
    assert mine["race rc"] == 0 and '"mode":"system-ram"' in mine["race daxctl"], mine["race daxctl"]
    # 7.3's dax state file of each system-RAM device, named by doctor as the kernel shows it
    doctor = mine["doctor with daxctl.conf"]
    states = dict(line.split() for line in mine["dax states"].splitlines())
    listed = {dax: state for dax, state in states.items() if f"device {dax}: dax" in doctor}
    assert len(listed) >= 2 or not states, (states, doctor)        # the two system-RAM devices
    for dax, state in listed.items():
        assert re.search(rf"device {re.escape(dax)}: dax.*; dax state file: {state} \(", doctor), doctor
    race = mine["after the race"]
    assert len(race) > len(mine["after NVDIMM 1"]) and None not in race.values(), S.summary(race)
    unaccounted = [n for n in race if n not in mine["after NVDIMM 1"] and not re.search(
        rf"memory{n}: (onlined to|onlined by someone else|was already online)", mine["log"])]
    assert not unaccounted, f"memonlined's log says nothing about blocks {unaccounted}:\n{mine['log'][-3000:]}"
