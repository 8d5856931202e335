"""The daemon through a VM's life, in a real guest (the lifecycle issue):
a kernel that onlines hot-plugged memory itself (Debian 13's default), the
daemon SIGKILLed, restarted and stopped; `udevadm trigger` with a block an
administrator offlined; a virtio-mem device shrunk and grown again while the
daemon is stopped (blocks re-added at reused indexes: new sysfs
directories, checked here by their inode numbers); a real netlink overflow
and the rescan after it."""
import os
import shutil
import time

import pytest

import scenarios as S
from guest import GiB, GuestError

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("e2e_ready")]

AO = "/sys/devices/system/memory/auto_online_blocks"
VALID_ZONES = ("cd /sys/devices/system/memory && for n in {}; do "
               "for l in memory$n/node[0-9]*; do [ -e $l ] && echo $n $(cat memory$n/valid_zones); done; done")
INODES = "cd /sys/devices/system/memory && for d in memory[0-9]*; do echo ${d#memory} $(stat -c %i $d); done"


def wait_rc(g, name, timeout=30):
    deadline = time.monotonic() + timeout
    while not (rc := g.sh(f"cat /run/{name}.rc 2>/dev/null", check=False).stdout.strip()):
        if time.monotonic() > deadline:
            raise GuestError(f"{name} did not exit")
        time.sleep(0.3)
    return int(rc)


def inodes(g):
    return {int(n): int(i) for n, i in (line.split() for line in g.sh(INODES).stdout.splitlines())}


def lifecycle(suite):
    res = {}
    # The kernel onlines by itself, with the auto-movable policy: when it is
    # memonlined's turn, valid_zones of an offline block is the kernel's answer.
    with S.boot(suite, "memonlined", "lifecycle", qemu_opts=S.virtio_mem_opts("vm0", 8 * GiB),
                extra_append=["memhp_default_state=online", "memory_hotplug.online_policy=auto-movable"]) as g:
        ao = lambda: g.sh(f"cat {AO}").stdout.strip()  # noqa: E731
        g.sh("modprobe virtio_mem")
        count = S.base_blocks(g)
        res["auto_online at boot"] = ao()
        S.start_daemon(g, "run", name="mo1")
        res["auto_online while running"] = ao()
        S.resize(g, "vm0", 2 * GiB)
        res["grown"] = S.wait_layout(g, S.all_online(count + 16), "2 GiB online")

        # SIGKILL: nothing puts the setting back; what is added meanwhile waits offline.
        g.sh("kill -KILL $(cat /run/mo1.pid)")
        res["kill rc"] = wait_rc(g, "mo1")
        res["auto_online after kill"] = ao()
        S.resize(g, "vm0", 2 * GiB + (512 << 20))
        res["offline after kill"] = sum(z is None for z in S.layout(g).values())
        S.start_daemon(g, "run", name="mo2")
        res["after restart"] = S.wait_layout(g, S.all_online(count + 20), "2.5 GiB online after the restart")
        res["mo2 rc"], res["mo2 log"] = S.stop_daemon(g, "mo2")
        res["auto_online after the clean stop"] = ao()

        # udevadm trigger (systemd-udev-trigger.service at boot) with a block offlined by the administrator.
        S.start_daemon(g, "run", name="mo3")
        g.sh("echo offline > /sys/devices/system/memory/memory50/state")
        time.sleep(1)
        g.sh("udevadm trigger --action=add --subsystem-match=memory")
        time.sleep(4)
        res["after trigger"] = S.layout(g)
        g.sh("echo online_movable > /sys/devices/system/memory/memory50/state")  # the administrator again
        res["mo3 rc"], res["mo3 log"] = S.stop_daemon(g, "mo3")

        # Shrunk and grown again while no memonlined runs, memory left offline
        # (as on a kernel booted with memhp_default_state=offline).
        g.sh(f"echo offline > {AO}")
        before, ino_before = S.layout(g), inodes(g)
        S.resize(g, "vm0", 2 * GiB)
        shrunk = S.layout(g)
        S.resize(g, "vm0", 2 * GiB + (512 << 20))
        regrown = S.wait_layout(g, lambda lay: len(lay) == count + 20, "the regrown blocks present")
        res["re-added"] = sorted((set(before) - set(shrunk)) & set(regrown))
        res["inodes"] = (ino_before, inodes(g))
        time.sleep(1)  # node links: valid_zones is read only once a block has one (6.1 oopses before)
        res["kernel's answer"] = dict(
            (int(n), z) for n, z in (line.split()[:2] for line in g.sh(VALID_ZONES.format(
                " ".join(str(n) for n in res["re-added"] if regrown[n] is None))).stdout.splitlines()))
        S.start_daemon(g, "run", name="mo4")
        res["after re-plug"] = S.wait_layout(g, S.all_online(count + 20), "the re-added blocks online")
        res["mo4 rc"], res["mo4 log"] = S.stop_daemon(g, "mo4")

        # A real netlink overflow: the daemon stopped (SIGSTOP) while two DIMMs
        # come and `udevadm trigger` sends change events for every device.
        S.start_daemon(g, "--receive-buffer-mib 1 run", name="mo5")
        g.sh("kill -STOP $(cat /run/mo5.pid)")
        for i in range(2):
            g.add_dimm(f"d{i}", 4 * GiB)
        lay = S.wait_layout(g, lambda lay: len(lay) == count + 84 and len(lay.fw) == 64, "the DIMMs' blocks and links")
        res["dimms"] = dimms = [sorted(lay.fw)[:32], sorted(lay.fw)[32:]]
        time.sleep(1)
        res["kernel's answer for the DIMMs"] = dict(
            (int(n), z) for n, z in (line.split()[:2] for line in g.sh(VALID_ZONES.format(
                " ".join(str(d[0]) for d in dimms))).stdout.splitlines()))
        # Thousands of uevents; the daemon's 1 MiB socket buffer (2 MiB as the kernel counts) overflows.
        g.sh("for i in 1 2 3 4 5 6 7 8 9 10; do udevadm trigger; done")
        g.sh("kill -CONT $(cat /run/mo5.pid)")
        res["after overflow"] = S.wait_layout(g, S.all_online(count + 84), "the DIMMs online after the rescan")
        res["mo5 rc"], res["mo5 log"] = S.stop_daemon(g, "mo5")
    return res


@pytest.mark.parametrize("suite", ["trixie"])
def test_kill_restart_trigger_and_reused_indexes(suite):
    res = lifecycle(suite)
    for name in ("mo2", "mo3", "mo4", "mo5"):
        assert res[f"{name} rc"] == 0, res[f"{name} log"][-3000:]
        assert "Traceback" not in res[f"{name} log"], res[f"{name} log"][-3000:]

    # Defect 1: after a SIGKILL, a restart and a clean stop, the kernel onlines by itself again.
    assert res["auto_online at boot"] == "online"
    assert res["auto_online while running"] == "offline"
    assert res["kill rc"] == 137
    assert res["auto_online after kill"] == "offline" and res["offline after kill"] == 4
    # (the 4 blocks added while it was down are online: the scenario waited for that)
    assert "auto_online_blocks was online before memonlined (recorded by an earlier memonlined" \
        in res["mo2 log"], res["mo2 log"][-3000:]
    assert res["auto_online after the clean stop"] == "online"

    # Defect 3: the synthetic adds change nothing and report nothing.
    assert res["after trigger"][50] is None, S.summary(res["after trigger"])
    assert "onlined by someone else" not in res["mo3 log"], res["mo3 log"][-3000:]
    assert "onlined to" not in res["mo3 log"].split("ready:", 1)[1], res["mo3 log"][-3000:]

    # Defect 2: re-added blocks are new sysfs directories (new inode numbers,
    # the others keep theirs), and memonlined onlines them where the kernel would.
    before, after = res["inodes"]
    readded = res["re-added"]
    assert readded, "the shrink removed no block"
    assert all(before[n] != after[n] for n in readded), [(n, before[n], after[n]) for n in readded]
    kept = set(before) & set(after) - set(readded)
    assert kept and all(before[n] == after[n] for n in kept)
    assert res["kernel's answer"], "no re-added block was offline before memonlined started"
    for n, zone in res["kernel's answer"].items():
        assert res["after re-plug"][n] == zone, (n, res["after re-plug"][n], zone, S.decisions_for(res["mo4 log"], [n]))

    # Defect 6, with a real overflow: the rescan onlines both DIMMs, each whole, where the kernel would.
    assert "uevents may have been lost" in res["mo5 log"], res["mo5 log"][-3000:]
    for dimm in res["dimms"]:
        zones = {res["after overflow"][n] for n in dimm}
        assert zones == {res["kernel's answer for the DIMMs"][dimm[0]]}, (dimm[0], zones, res["mo5 log"][-3000:])


EINJ = "/sys/kernel/debug/notifier-error-inject/memory/actions/MEM_GOING_ONLINE/error"
PARAMS = "/sys/module/memory_hotplug/parameters"


def refused_onlines_and_kernel_mode(suite):
    res = {}
    with S.boot(suite, "memonlined", "refusals", qemu_opts=S.virtio_mem_opts("vm0", 8 * GiB)) as g:
        g.sh("modprobe virtio_mem && modprobe memory-notifier-error-inject && "
             "(mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug)")
        count = S.base_blocks(g)
        # Every online refused by the kernel (-EBUSY from a memory notifier).
        g.sh(f"echo -16 > {EINJ}")
        S.start_daemon(g, "run", name="mo1")
        S.resize(g, "vm0", 256 << 20)
        S.wait_layout(g, lambda lay: len(lay) == count + 2, "two virtio-mem blocks")
        time.sleep(3)
        res["refused"] = S.layout(g)
        r = g.sh("/run/mo online", check=False)
        res["one-shot rc"], res["one-shot err"] = r.returncode, r.stderr
        g.sh(f"echo 0 > {EINJ}")
        g.sh("udevadm trigger --action=add --subsystem-match=memory")   # what retries them
        res["retried"] = S.wait_layout(g, S.all_online(count + 2), "the refused blocks online once allowed")
        res["mo1 rc"], res["mo1 log"] = S.stop_daemon(g, "mo1")

        # Kernel mode, and a reload with another ratio.
        g.sh("printf '[daemon]\\nmode = kernel\\n' > /run/k.conf")
        S.start_daemon(g, "--config /run/k.conf run", name="mo2")
        res["kernel mode"] = g.sh(f"cat {PARAMS}/online_policy {PARAMS}/auto_movable_ratio "
                                  "/sys/devices/system/memory/auto_online_blocks").stdout.split()
        g.sh("printf '[daemon]\\nmode = kernel\\n[policy]\\nratio = 100\\n' > /run/k.conf && kill -HUP $(cat /run/mo2.pid)")
        deadline = time.monotonic() + 30
        while (ratio := g.sh(f"cat {PARAMS}/auto_movable_ratio").stdout.strip()) != "100" \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        res["ratio after reload"] = ratio
        res["mo2 rc"], res["mo2 log"] = S.stop_daemon(g, "mo2")
    return res


@pytest.mark.parametrize("suite", ["bookworm"])
def test_refused_onlines_and_kernel_mode_reload(suite):
    res = refused_onlines_and_kernel_mode(suite)
    log = res["mo1 log"]
    assert res["mo1 rc"] == 0 and "Traceback" not in log, log[-3000:]
    # Both writes refused: the blocks stay offline, one warning and one error each, nothing else.
    assert [z for n, z in sorted(res["refused"].items())][-2:] == [None, None], S.summary(res["refused"])
    assert log.count("online_movable failed (EBUSY); falling back to online_kernel") == 2, log[-3000:]
    assert log.count("online_kernel failed (EBUSY); the block stays offline") == 2, log[-3000:]
    assert res["one-shot rc"] == 1 and "Traceback" not in res["one-shot err"], res["one-shot err"]
    assert "online_kernel failed (EBUSY)" in res["one-shot err"], res["one-shot err"]
    # (once allowed, the refused blocks were onlined: the scenario waited for that)
    # Kernel mode: the kernel's policy configured, and a reload's ratio written to it.
    assert res["kernel mode"] == ["auto-movable", "301", "online"], res["kernel mode"]
    assert res["ratio after reload"] == "100", res["mo2 log"][-3000:]
    assert res["mo2 rc"] == 0 and "Traceback" not in res["mo2 log"], res["mo2 log"][-3000:]


SELFTEST = "/var/cache/memonlined-e2e/selftest/mem-on-off-test.sh"


def kernel_selftest(suite):
    res = {}
    with S.boot(suite, "memonlined", "selftest") as g:
        shutil.copy(SELFTEST, os.path.join(g.share, "mem-on-off-test.sh"))
        count = S.base_blocks(g)
        S.start_daemon(g, "run", name="mo1")
        g.add_dimm("d0", 4 * GiB)
        res["before"] = S.wait_layout(g, S.all_online(count + 32, 32), "the DIMM online")
        # 2% of the hot-pluggable blocks (its kselftest default) offlined and onlined again, then with
        # notifier error injection: memonlined must leave every block it offlines alone.
        r = g.sh(f"bash {g.share}/mem-on-off-test.sh", check=False, timeout=600)
        res["selftest rc"], res["selftest out"] = r.returncode, r.stdout + r.stderr
        res["after"] = S.layout(g)
        res["mo1 rc"], res["mo1 log"] = S.stop_daemon(g, "mo1")
    return res


@pytest.mark.parametrize("suite", ["bookworm"])
def test_the_kernels_memory_hotplug_selftest_passes_while_memonlined_runs(suite):
    res = kernel_selftest(suite)
    assert res["selftest rc"] == 0, res["selftest out"][-4000:] + "\n" + res["mo1 log"][-3000:]
    assert "offline->online" in res["selftest out"] and "-> Success" in res["selftest out"], res["selftest out"]
    log = res["mo1 log"]
    assert res["mo1 rc"] == 0 and "Traceback" not in log and "ERROR" not in log, log[-3000:]
    after_ready = log.split("onlined to", 32)[-1]     # past the DIMM's 32 decisions
    assert "onlined to" not in after_ready and "onlined by someone else" not in log, log[-3000:]
    assert None not in res["after"].values()         # the selftest put everything back online
