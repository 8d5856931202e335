"""Scenario 8: the Debian package and its systemd unit, in guests with systemd as init.

A debootstrap'ed Debian root: bookworm (6.1, Python 3.11), trixie (6.12, 3.13), bullseye (5.10,
Python 3.9, no memory_hotplug parameters: the unit must start there too)
(tests/e2e/systemd_image.sh, cached under /var/cache/memonlined-e2e/systemd-root-SUITE)
gets this checkout's Debian package (packaging/build-deb.sh), installed with
apt in a chroot (Debian's python3-pyudev is in the root already), which enables the shipped unit, and a oneshot check unit that
reports on the serial console. QEMU boots it directly (TCG) with the memory
history of scenarios.SYSTEMD_HISTORY: a cold-plugged DIMM and a virtio-mem
device at start; the test hot-plugs a 4 GiB DIMM over QMP once the check
says READY, then grows the virtio-mem device. The layouts are compared with
a twin guest whose kernel policy onlined the same history
(scenarios.systemd_twin). Each boot takes about 2.5 min (the first run:
about 1.5 min more to build the root); MEMONLINED_E2E_SYSTEMD=0 leaves them out.

    .venv/bin/python -m pytest tests/e2e -m vm_systemd
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from guest import CACHE, GiB, QMP, REPO
import scenarios as S

HERE = os.path.dirname(os.path.abspath(__file__))
DECISION_ID = "3f0b6c2e8d4a4f5bb1c9e7a2d5f81c40"

pytestmark = [
    pytest.mark.vm_systemd,
    pytest.mark.skipif(os.environ.get("MEMONLINED_E2E_SYSTEMD") == "0",
                       reason="MEMONLINED_E2E_SYSTEMD=0: the systemd-unit guest is left out"),
]

CHECK_UNIT = """[Unit]
Description=memonlined e2e check
After=memonlined.service multi-user.target
Wants=memonlined.service

[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/usr/local/bin/e2e-check
ExecStartPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""

# What every boot checks first (the host gives the block counts on the kernel
# command line): memory at start online, READY; a 4 GiB DIMM hot-plugged by
# the host while a process holds most of the memory; the virtio-mem device
# grown by the host; the layout after each.
CHECK_GROWTH = r"""#!/bin/sh
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=
cd /sys/devices/system/memory
arg() { sed -n "s/.* e2e\.$1=\([0-9]*\).*/\1/p" /proc/cmdline; }
show() { systemctl show -p ActiveState -p SubState -p StatusText -p NRestarts memonlined | tr '\n' ' '; }
online() {  # until there are $1 blocks, none offline (5 min at most)
    i=0
    while [ $i -lt 600 ]; do
        n=$(ls -d memory[0-9]* | wc -l)
        off=$(cat memory[0-9]*/state | grep -c offline)
        [ "$n" -ge "$1" ] && [ "$off" = 0 ] && return 0
        sleep 0.5; i=$((i + 1))
    done
    echo "E2E-TIMEOUT $n blocks, $off offline, $1 wanted"
}
echo "E2E-STATUS $(show)"
echo "E2E-EXPOSURE $(systemd-analyze security memonlined.service --no-pager 2>&1 | grep -o 'exposure level for memonlined.service: [0-9.]*')"
echo "E2E-DOCTOR-BEGIN"
memonlined doctor 2>&1
echo "E2E-DOCTOR-END"
# Memory pressure: a process holding most of the guest's memory while the DIMM comes.
python3 -c 'import time; b = b"x" * (3000 << 20); open("/run/hog.ready", "w").close(); time.sleep(900)' &
hog=$!
i=0; while [ ! -e /run/hog.ready ] && [ $i -lt 240 ] && kill -0 $hog 2>/dev/null; do sleep 0.5; i=$((i + 1)); done
online $(arg start)
echo "E2E-READY $(ls -d memory[0-9]* | wc -l)"
online $(($(arg start) + 32))
echo "E2E-LAYOUT-DIMM-BEGIN"
%s
echo "E2E-LAYOUT-DIMM-END"
echo "E2E-DIMM-ONLINE"
online $(($(arg start) + 32 + $(arg grow)))
echo "E2E-LAYOUT-BEGIN"
%s
echo "E2E-LAYOUT-END"
echo "E2E-STATUS2 $(show)"
echo "E2E-HOG $(kill -0 $hog 2>/dev/null && echo alive || echo gone) $(grep -E '^(MemTotal|MemAvailable)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
kill $hog 2>/dev/null; wait $hog 2>/dev/null
""" % (S.LAYOUT, S.LAYOUT)

# What the journal shows at the end of every boot.
CHECK_JOURNAL = r"""
echo "E2E-JOURNAL-BEGIN"
journalctl -u memonlined -o verbose MESSAGE_ID=%s --no-pager
echo "E2E-JOURNAL-END"
echo "E2E-LOG-BEGIN"
journalctl -u memonlined --no-pager | tail -n 150
echo "E2E-LOG-END"
echo "E2E-BOOT-BEGIN"
journalctl -b -o short-monotonic --no-pager | grep -E "memonlined\[[0-9]+\]: (ready:|memory[0-9]+: onlined|.*waiting up to)|Reached target.*System Initialization|Starting (memonlined.service|Online hot-plugged)" | head -n 80
echo "E2E-BOOT-END"
""" % DECISION_ID

# Debian 13's own boot: the kernel onlined the memory at start; memonlined
# took over. Its clean stop puts auto_online_blocks back.
CHECK_DEFAULT = CHECK_GROWTH + r"""
echo "E2E-AO-RUNNING $(cat auto_online_blocks)"
systemctl stop memonlined
echo "E2E-AO-STOPPED $(cat auto_online_blocks)"
""" + CHECK_JOURNAL

# The offline boot goes on: reload, upgrade, watchdog, remove, purge.
CHECK = CHECK_GROWTH + r"""
# A broken configuration on reload: the old one stays, and the journal says so.
cp /etc/memonlined/memonlined.conf /run/good.conf
printf '[policy]\nratio = lots\n' > /etc/memonlined/memonlined.conf
systemctl reload memonlined
i=0; while ! journalctl -u memonlined | grep -q "keeping the configuration in force" && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
cp /run/good.conf /etc/memonlined/memonlined.conf
echo "E2E-RELOADED $(show)"
# An administrator offlines a block; the package is upgraded while memory is plugged.
echo offline > memory40/state
pid0=$(systemctl show -p MainPID --value memonlined)
echo "E2E-UPGRADE-BEGIN"
systemctl is-enabled memonlined
DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/memonlined-upgrade.deb 2>&1; echo "E2E-UPGRADE-RC $?"
echo "E2E-UPGRADE-END"
i=0; while ! systemctl is-active -q memonlined && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
echo "E2E-UPGRADED $(dpkg-query -W -f='${Version}' memonlined) $pid0 $(systemctl show -p MainPID --value memonlined) $(cat memory40/state) $(cat memory[0-9]*/state | grep -c offline)"
# A kernel that onlines by itself; the watchdog finds memonlined hung.
echo online > auto_online_blocks
mkdir -p /run/systemd/system/memonlined.service.d
printf '[Service]\nWatchdogSec=4\n' > /run/systemd/system/memonlined.service.d/watchdog.conf
systemctl daemon-reload
systemctl restart memonlined
echo "E2E-AO-RUNNING $(cat auto_online_blocks)"
kill -STOP $(systemctl show -p MainPID --value memonlined)
i=0; while [ "$(systemctl show -p NRestarts --value memonlined)" = 0 ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
i=0; while ! systemctl is-active -q memonlined && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
echo "E2E-AO-RESTARTED $(systemctl show -p NRestarts --value memonlined) $(cat auto_online_blocks)"
systemctl stop memonlined
echo "E2E-AO-STOPPED $(cat auto_online_blocks)"
# Removing the package stops the daemon, which puts the setting back; purging leaves nothing.
systemctl start memonlined
echo "E2E-RM-RUNNING $(cat auto_online_blocks)"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q memonlined >/run/remove.log 2>&1
echo "E2E-RM $? $(cat auto_online_blocks) $(systemctl is-active memonlined)"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q memonlined >>/run/remove.log 2>&1
echo "E2E-PURGE $? $(ls -d /etc/memonlined /run/memonlined 2>/dev/null | wc -l)"
""" + CHECK_JOURNAL


def root_for(suite):
    p = subprocess.run(["bash", os.path.join(HERE, "systemd_image.sh"), suite], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if p.returncode:
        pytest.fail(f"tests/e2e/systemd_image.sh {suite} failed:\n{p.stdout[-3000:]}", pytrace=False)
    return os.path.join(CACHE, f"systemd-root-{suite}")


@pytest.fixture(scope="session", params=["bookworm", "bullseye", "trixie"])
def systemd_root(request, e2e_ready):
    return root_for(request.param)


def build_deb(version=None):
    env = dict(os.environ, MEMONLINED_DEB_VERSION=version or "")
    p = subprocess.run(["bash", os.path.join(REPO, "packaging/build-deb.sh")], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=env)
    if p.returncode:
        pytest.fail(f"packaging/build-deb.sh failed:\n{p.stdout[-3000:]}", pytrace=False)
    return os.path.join(REPO, p.stdout.split()[-1])  # its last line: the package it built


@pytest.fixture(scope="session")
def deb(e2e_ready):
    """The Debian package of this checkout (packaging/build-deb.sh), and the
    same rebuilt at a higher version for the upgrade."""
    return build_deb(), build_deb("99.0")


def install(root, debs, check):
    """The package, with apt in a chroot (its dependencies are in the root
    already: no network), and the check unit running CHECK into ROOT."""
    # What an earlier version of this test put in /usr/local must not run instead.
    for old in glob.glob(os.path.join(root, "usr/local/lib/python3*/dist-packages/memonlined")):
        shutil.rmtree(old)
    for old in ("usr/local/bin/memonlined", "etc/systemd/system/memonlined.service",
                "etc/systemd/system/sysinit.target.wants/memonlined.service"):
        if os.path.lexists(os.path.join(root, old)):
            os.unlink(os.path.join(root, old))
    deb, upgrade = debs
    shutil.copy(deb, os.path.join(root, "tmp/memonlined.deb"))
    shutil.copy(upgrade, os.path.join(root, "root/memonlined-upgrade.deb"))  # installed in the guest
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    # A fresh install each time (the root is cached): purge what an earlier run installed.
    subprocess.run(["chroot", root, "dpkg", "--purge", "memonlined"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    assert not os.path.exists(os.path.join(root, "etc/memonlined")), "purging left /etc/memonlined"
    # The chroot reaches the archive (the guest does not): what the package needs and the root lacks.
    p = subprocess.run(["chroot", root, "apt-get", "update", "-q"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=env)
    assert p.returncode == 0, f"apt-get update in the {root} chroot failed:\n{p.stdout[-3000:]}"
    p = subprocess.run(["chroot", root, "apt-get", "install", "-y", "-q", "--reinstall",
                        "/tmp/memonlined.deb"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    os.unlink(os.path.join(root, "tmp/memonlined.deb"))
    assert p.returncode == 0, f"apt-get install of the package in the {root} chroot failed:\n{p.stdout[-3000:]}"
    assert os.path.lexists(os.path.join(root, "etc/systemd/system/sysinit.target.wants/memonlined.service")), \
        "installing the package did not enable the service"
    files = {"usr/local/bin/e2e-check": (check, 0o755), "etc/systemd/system/e2e-check.service": (CHECK_UNIT, 0o644)}
    for rel, (text, mode) in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    if not os.path.lexists(os.path.join(wants, "e2e-check.service")):
        os.symlink("/etc/systemd/system/e2e-check.service", os.path.join(wants, "e2e-check.service"))


def section(text, name):
    m = re.search(rf"E2E-{name}-BEGIN\r?\n(.*?)E2E-{name}-END", text, re.S)
    return m.group(1).replace("\r", "") if m else ""


def journal_entries(text):
    """journalctl -o verbose: an unindented header line, then indented FIELD=value lines."""
    entries, cur = [], None
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        if line and not line[0].isspace():
            cur = {}
            entries.append(cur)
        elif cur is not None and "=" in line:
            k, v = line.strip().split("=", 1)
            cur[k] = v
    return entries


def boot_guest(root, boot_kind, debs, check):
    """Install the package and CHECK into ROOT, boot it with test_systemd's
    memory (scenarios.systemd_guest_opts), hot-plug the 4 GiB DIMM once the
    check says E2E-READY and grow virtio-mem once it says E2E-DIMM-ONLINE.
    Returns the console's text and the seconds until READY."""
    t0 = time.monotonic()
    install(root, debs, check)
    grown = S.SYSTEMD_HISTORY[boot_kind][1]
    work = tempfile.mkdtemp(prefix="memonlined-e2e-sd-", dir="/tmp")
    proc = None
    try:
        img = os.path.join(work, "root.img")
        subprocess.run(["mkfs.ext4", "-q", "-d", root, img, "2000M"], check=True)
        # Debian's 7.x kernels: /usr/lib/modules/V/vmlinuz (linux-binary-V), no /boot/vmlinuz-V.
        vmlinuz = sorted(glob.glob(os.path.join(root, "boot/vmlinuz-*"))
                         or glob.glob(os.path.join(root, "usr/lib/modules/*/vmlinuz")))[-1]
        initrd = sorted(glob.glob(os.path.join(root, "boot/initrd.img-*")))[-1]
        sock, console = os.path.join(work, "qmp.sock"), os.path.join(work, "console.log")
        m = S.SYSTEMD_MEMORY
        count, growth = S.systemd_blocks(boot_kind)
        append = ["root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 loglevel=3",
                  f"e2e.start={count} e2e.grow={growth}"]
        if boot_kind == "offline":
            append.append("memhp_default_state=offline")
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1",
               "-m", f"{m['memory_mib']}M,slots={m['slots']},maxmem={m['maxmem_mib']}M",
               *" ".join(S.systemd_guest_opts(boot_kind)).split(),
               "-nographic", "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd, "-append", " ".join(append),
               "-drive", f"file={img},if=virtio,format=raw", "-qmp", f"unix:{sock},server=on,wait=off"]
        with open(console, "w") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        qmp = QMP(sock)

        def text():
            with open(console, errors="replace") as f:
                return f.read()

        def wait_for(mark, timeout):
            deadline = time.monotonic() + timeout
            while mark not in text():
                assert proc.poll() is None, f"guest exited before {mark}:\n{text()[-5000:]}"
                assert time.monotonic() < deadline, f"no {mark} after {timeout} s:\n{text()[-5000:]}"
                time.sleep(0.5)

        wait_for("E2E-READY", 300)
        ready = time.monotonic() - t0
        status = re.search(r"E2E-STATUS (.*)", text()).group(1)
        assert "ActiveState=active" in status and "SubState=running" in status, \
            f"memonlined.service is not active (READY) when multi-user is reached: {status}\n{text()[-5000:]}"
        qmp.execute("object-add", **{"qom-type": "memory-backend-ram", "id": "d0-mem", "size": 4 * GiB,
                                     "reserve": False})
        qmp.execute("device_add", driver="pc-dimm", id="d0", memdev="d0-mem")
        wait_for("E2E-DIMM-ONLINE", 300)
        qmp.execute("qom-set", path="/machine/peripheral/vm0", property="requested-size", value=grown)
        proc.wait(400)
        out = text()
        if os.environ.get("MEMONLINED_E2E_KEEP"):
            shutil.copy(console, f"{os.environ['MEMONLINED_E2E_KEEP']}.{os.path.basename(root)}.{boot_kind}")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    suite = os.path.basename(root).rsplit("-", 1)[-1]
    S.note_time(f"systemd unit guest [{suite}, {boot_kind} boot]: boot to memonlined active (incl. image)", ready)
    S.note_time(f"systemd unit guest [{suite}, {boot_kind} boot]: total", time.monotonic() - t0)
    assert "E2E-TIMEOUT" not in out, (re.search(r"E2E-TIMEOUT.*", out).group(0), section(out, "LOG"))
    return out


def assert_kernel_layouts(out, kernel, suite):
    """The layouts after the DIMM and after the growth equal the kernel's, block for block."""
    for name, checkpoint in (("LAYOUT-DIMM", "dimm"), ("LAYOUT", "final")):
        mine = S.parse_layout(section(out, name))
        d = S.diff(mine, kernel[checkpoint])
        assert not d, (f"{checkpoint} on {suite}: {len(d)} blocks differ (block, memonlined, kernel "
                       f"{S.oracle_suite(suite)}): {d[:20]}\nmemonlined: {S.summary(mine)}\n"
                       f"kernel: {S.summary(kernel[checkpoint])}\n{section(out, 'LOG')[-4000:]}")
    return S.parse_layout(section(out, "LAYOUT"))


def assert_decisions(out, zones, blocks):
    """Each of BLOCKS has its decision in the journal, with the zone it is in."""
    entries = [e for e in journal_entries(section(out, "JOURNAL")) if "BLOCK" in e]
    by_block = {int(e["BLOCK"]): e for e in entries}
    assert sorted(by_block) == sorted(blocks), \
        f"journal decisions for {sorted(by_block)}, not {sorted(blocks)}\n{section(out, 'JOURNAL')[-3000:]}"
    for n in blocks:
        e = by_block[n]
        device = "PNP0C80:" if n in zones.fw else "virtio"
        assert e.get("ZONE") == zones[n] and e.get("DEVICE", "").startswith(device) and e.get("REASON"), e
        assert e.get("RESULT") == "onlined", e


@pytest.mark.oracle("systemd-offline")
def test_systemd_unit_from_boot_to_purge(systemd_root, deb, oracles):
    """memhp_default_state=offline: the cold-plugged DIMM and virtio-mem's memory at start,
    a DIMM hot-plugged under memory pressure, virtio-mem grown: the kernel's layouts; then
    reload, upgrade, watchdog, remove, purge."""
    suite = os.path.basename(systemd_root).rsplit("-", 1)[-1]
    out = boot_guest(systemd_root, "offline", deb, CHECK)
    kernel = oracles.result("systemd-offline", suite)
    zones = assert_kernel_layouts(out, kernel, suite)
    S.note_time(f"systemd unit guest [{suite}, offline boot]: the kernel's layout, met: {S.summary(zones)}", 0)
    assert_decisions(out, zones, [n for n in zones if n >= 32])
    exposure = float(re.search(r"E2E-EXPOSURE exposure level for memonlined.service: ([\d.]+)", out).group(1))
    S.note_time(f"systemd unit guest [{suite}]: systemd-analyze security exposure {exposure}", 0)
    assert exposure <= 2.5, exposure
    status2 = re.search(r"E2E-STATUS2 (.*)", out).group(1)
    assert "ActiveState=active" in status2 and "NRestarts=0" in status2, status2

    # The boot-offline DIMM and virtio-mem's memory at start were onlined by the start-up,
    # before sysinit.target (which READY=1 lets systemd reach; "ready:" is logged just after it).
    boot = section(out, "BOOT")
    stamps = lambda pattern: [float(t) for t in re.findall(r"\[\s*([\d.]+)\][^\n]*" + pattern, boot)]  # noqa: E731
    onlined, sysinit = stamps(r"memory(?:3[2-9]|4[0-7]): onlined"), stamps(r"Reached target.*System Initialization")
    assert len(onlined) == 16 and sysinit and max(onlined) < sysinit[0], boot
    vm0 = sorted(n for n in zones if n >= 48 and n not in zones.fw)[:S.SYSTEMD_HISTORY["offline"][0] // S.BLOCK]
    vm0_onlined = stamps(rf"memory(?:{'|'.join(map(str, vm0))}): onlined")
    # udev loads virtio_mem beside memonlined: the start-up waits for its driver and blocks.
    assert len(vm0_onlined) == len(vm0) and max(vm0_onlined) < sysinit[0], (vm0, boot)
    # systemd 247 (Debian 11) names the unit by its Description only.
    unit_start, unit_ready = stamps(r"Starting (?:memonlined\.service|Online hot-plugged)")[0], stamps(r"ready:")[0]
    S.note_time(f"systemd unit guest [{suite}]: unit start to READY (24 blocks onlined)", unit_ready - unit_start)
    S.note_time(f"systemd unit guest [{suite}]: unit start to sysinit.target", sysinit[0] - unit_start)
    S.note_time(f"systemd unit guest [{suite}]: unit start to virtio-mem's memory at start online "
                f"({'before' if max(vm0_onlined) < sysinit[0] else 'after'} sysinit.target)",
                max(vm0_onlined) - unit_start)
    log = section(out, "LOG")
    assert "keeping the configuration in force" in log and "ratio" in log, log
    assert "ActiveState=active" in re.search(r"E2E-RELOADED (.*)", out).group(1), out[-3000:]
    # The upgrade: installed, the daemon restarted, the administrator's block left offline, nothing else offline.
    assert re.search(r"E2E-UPGRADE-RC 0", out), out[-3000:]
    version, pid0, pid1, state40, offline = re.search(r"E2E-UPGRADED (\S+) (\d+) (\d+) (\S+) (\d+)", out).groups()
    assert version == "99.0" and pid0 != pid1, (version, pid0, pid1, section(out, "UPGRADE"), log)
    assert state40 == "offline" and offline == "1", (state40, offline, log)
    assert "leaving 1 offline blocks alone that were online before (offlined by an administrator): 40" in log, log
    assert re.search(r"E2E-AO-RUNNING offline", out), out[-5000:]
    restarted = re.search(r"E2E-AO-RESTARTED (\d+) (\S+)", out)
    assert restarted and int(restarted.group(1)) >= 1 and restarted.group(2) == "offline", (restarted, log)
    assert "aborted (SIGABRT" in log and "auto_online_blocks put back to online" in log, log
    assert re.search(r"E2E-AO-STOPPED online", out), (out[-3000:], log)
    assert re.search(r"E2E-RM-RUNNING offline", out), out[-3000:]
    assert re.search(r"E2E-RM 0 online inactive", out), out[-3000:]
    assert re.search(r"E2E-PURGE 0 0", out), out[-3000:]
    hog = re.search(r"E2E-HOG (\S+)(.*)", out)
    S.note_time(f"systemd unit guest [{suite}]: memory hog {hog.group(1)} after the hot-plug;{hog.group(2)}", 0)


@pytest.mark.oracle("systemd-default")
@pytest.mark.parametrize("suite", ["trixie"])
def test_debian_13_default_boot_the_kernel_onlines_then_memonlined_takes_over(suite, deb, oracles, e2e_ready):
    """Debian 13 as it boots by itself: its kernel onlines the cold-plugged DIMM. doctor says
    how to keep the kernel from racing memonlined at boot (GRUB); the take-over's layouts for
    memory plugged after start are the kernel policy's; a stop puts auto_online_blocks back."""
    out = boot_guest(root_for(suite), "default", deb, CHECK_DEFAULT)
    doctor = section(out, "DOCTOR")
    assert "memhp_default_state=offline" in doctor and "GRUB_CMDLINE_LINUX" in doctor \
        and "update-grub" in doctor, doctor
    zones = assert_kernel_layouts(out, oracles.result("systemd-default", suite), suite)
    S.note_time(f"systemd unit guest [{suite}, default boot]: the kernel's layout, met: {S.summary(zones)}", 0)
    assert_decisions(out, zones, [n for n in zones if n >= 48])
    log = section(out, "LOG")
    assert "memhp_default_state=offline" in log, log
    assert re.search(r"E2E-AO-RUNNING offline", out) and re.search(r"E2E-AO-STOPPED online", out), (out[-3000:], log)
