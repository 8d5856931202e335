"""Scenario 8: the shipped systemd unit in a guest with systemd as init.

A debootstrap'ed Debian root: bookworm (6.1, Python 3.11), trixie (6.12, 3.13), bullseye (5.10,
Python 3.9, no memory_hotplug parameters: the unit must start there too)
(tests/e2e/systemd_image.sh, cached under /var/cache/memonlined-e2e/systemd-root-SUITE)
gets this checkout's Debian package (packaging/build-deb.sh), installed with
apt in a chroot (Debian's python3-pyudev, -psutil, -systemd are in the root
already), which enables the shipped unit, and a oneshot check unit that
reports on the serial console. QEMU boots it
directly (TCG); the test hot-plugs a 4 GiB DIMM over QMP once the check unit
says memonlined is active. The heaviest e2e test (first run: about 1.5 min
more to build the root); MEMONLINED_E2E_SYSTEMD=0 leaves it out.

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

CHECK = r"""#!/bin/sh
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=
cd /sys/devices/system/memory
show() { systemctl show -p ActiveState -p SubState -p StatusText -p NRestarts memonlined | tr '\n' ' '; }
echo "E2E-STATUS $(show)"
echo "E2E-EXPOSURE $(systemd-analyze security memonlined.service --no-pager 2>&1 | grep -o 'exposure level for memonlined.service: [0-9.]*')"
# Memory pressure: a process holding most of the guest's memory while the DIMM comes.
python3 -c 'import time; b = b"x" * (3000 << 20); open("/run/hog.ready", "w").close(); time.sleep(900)' &
hog=$!
i=0; while [ ! -e /run/hog.ready ] && [ $i -lt 240 ] && kill -0 $hog 2>/dev/null; do sleep 0.5; i=$((i + 1)); done
n0=$(ls -d memory[0-9]* | wc -l)
echo "E2E-READY $n0"
want=$((n0 + 32)); i=0
while [ $i -lt 600 ]; do
    n=$(ls -d memory[0-9]* | wc -l)
    off=$(cat memory[0-9]*/state | grep -c offline)
    [ "$n" -ge "$want" ] && [ "$off" = 0 ] && break
    sleep 0.5; i=$((i + 1))
done
echo "E2E-LAYOUT-BEGIN"
%s
echo "E2E-LAYOUT-END"
echo "E2E-STATUS2 $(show)"
echo "E2E-HOG $(kill -0 $hog 2>/dev/null && echo alive || echo gone) $(grep -E '^(MemTotal|MemAvailable)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
kill $hog 2>/dev/null; wait $hog 2>/dev/null
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
echo "E2E-JOURNAL-BEGIN"
journalctl -u memonlined -o verbose MESSAGE_ID=%s --no-pager
echo "E2E-JOURNAL-END"
echo "E2E-LOG-BEGIN"
journalctl -u memonlined --no-pager | tail -n 100
echo "E2E-LOG-END"
echo "E2E-BOOT-BEGIN"
journalctl -b -o short-monotonic --no-pager | grep -E "memonlined\[[0-9]+\]: (ready:|memory(3[2-9]|4[0-7]): onlined)|Reached target.*System Initialization|Starting (memonlined.service|Online hot-plugged)" | head -n 20
echo "E2E-BOOT-END"
""" % (S.LAYOUT, DECISION_ID)

@pytest.fixture(scope="session", params=["bookworm", "bullseye", "trixie"])
def systemd_root(request, e2e_ready):
    suite = request.param
    p = subprocess.run(["bash", os.path.join(HERE, "systemd_image.sh"), suite], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if p.returncode:
        pytest.fail(f"tests/e2e/systemd_image.sh {suite} failed:\n{p.stdout[-3000:]}", pytrace=False)
    return os.path.join(CACHE, f"systemd-root-{suite}")


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


def install(root, debs):
    """The package, with apt in a chroot (its dependencies are in the root
    already: no network), and the check unit into ROOT."""
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
    files = {"usr/local/bin/e2e-check": (CHECK, 0o755), "etc/systemd/system/e2e-check.service": (CHECK_UNIT, 0o644)}
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


def test_systemd_unit_onlines_a_hot_plugged_dimm(systemd_root, deb):
    t0 = time.monotonic()
    install(systemd_root, deb)
    work = tempfile.mkdtemp(prefix="memonlined-e2e-sd-", dir="/tmp")
    proc = None
    try:
        img = os.path.join(work, "root.img")
        subprocess.run(["mkfs.ext4", "-q", "-d", systemd_root, img, "2000M"], check=True)
        vmlinuz = sorted(glob.glob(os.path.join(systemd_root, "boot/vmlinuz-*")))[-1]
        initrd = sorted(glob.glob(os.path.join(systemd_root, "boot/initrd.img-*")))[-1]
        sock, console = os.path.join(work, "qmp.sock"), os.path.join(work, "console.log")
        # A 2 GiB DIMM cold-plugged (offline at boot: memhp_default_state=offline), blocks 32-47.
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "2G,slots=4,maxmem=16G",
               "-object", "memory-backend-ram,id=c0-mem,size=2G,reserve=off", "-device", "pc-dimm,id=c0,memdev=c0-mem",
               "-nographic", "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
               "-append", "root=/dev/vda rw console=ttyS0 memhp_default_state=offline quiet "
                          "systemd.show_status=0 loglevel=3",
               "-drive", f"file={img},if=virtio,format=raw", "-qmp", f"unix:{sock},server=on,wait=off"]
        with open(console, "w") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        qmp = QMP(sock)

        def text():
            with open(console, errors="replace") as f:
                return f.read()

        deadline = time.monotonic() + 300
        while "E2E-READY" not in text():
            assert proc.poll() is None, f"guest exited before the check ran:\n{text()[-5000:]}"
            assert time.monotonic() < deadline, f"no E2E-READY after 300 s:\n{text()[-5000:]}"
            time.sleep(0.5)
        ready = time.monotonic() - t0
        status = re.search(r"E2E-STATUS (.*)", text()).group(1)
        assert "ActiveState=active" in status and "SubState=running" in status, \
            f"memonlined.service is not active (READY) when multi-user is reached: {status}\n{text()[-5000:]}"
        qmp.execute("object-add", **{"qom-type": "memory-backend-ram", "id": "d0-mem", "size": 4 * GiB,
                                     "reserve": False})
        qmp.execute("device_add", driver="pc-dimm", id="d0", memdev="d0-mem")
        proc.wait(400)
        out = text()
        if os.environ.get("MEMONLINED_E2E_KEEP"):
            shutil.copy(console, os.environ["MEMONLINED_E2E_KEEP"])
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    suite = os.path.basename(systemd_root).rsplit("-", 1)[-1]
    S.note_time(f"systemd unit guest [{suite}]: boot to memonlined active (incl. image)", ready)
    S.note_time(f"systemd unit guest [{suite}]: total", time.monotonic() - t0)

    zones = S.parse_layout(section(out, "LAYOUT"))
    # 2 GiB at boot and 4 GiB hot-plugged fit 301% of the 2047 MiB of boot memory: all Movable, as the kernel's policy has it.
    dimm = [n for n in zones if n >= 32]
    assert len(dimm) == 48 and all(zones[n] == "Movable" for n in dimm), \
        f"the DIMM was not onlined to Movable: {S.summary(zones)}\n{section(out, 'LOG')}"
    exposure = float(re.search(r"E2E-EXPOSURE exposure level for memonlined.service: ([\d.]+)", out).group(1))
    suite = os.path.basename(systemd_root).rsplit("-", 1)[-1]
    S.note_time(f"systemd unit guest [{suite}]: systemd-analyze security exposure {exposure}", 0)
    assert exposure <= 2.5, exposure
    status2 = re.search(r"E2E-STATUS2 (.*)", out).group(1)
    assert "ActiveState=active" in status2 and "NRestarts=0" in status2, status2
    entries = [e for e in journal_entries(section(out, "JOURNAL")) if "BLOCK" in e]
    by_block = {int(e["BLOCK"]): e for e in entries}
    assert sorted(by_block) == sorted(dimm), f"journal decisions for {sorted(by_block)}\n{section(out, 'JOURNAL')[-3000:]}"
    for n in dimm:
        e = by_block[n]
        assert e.get("ZONE") == "Movable" and e.get("DEVICE", "").startswith("PNP0C80:") and e.get("REASON"), e
        assert e.get("RESULT") == "onlined", e

    # The boot-offline DIMM was onlined by the start-up scan, before sysinit.target
    # (which READY=1 lets systemd reach; the "ready:" line is logged just after it).
    boot = section(out, "BOOT")
    stamps = lambda pattern: [float(t) for t in re.findall(r"\[\s*([\d.]+)\][^\n]*" + pattern, boot)]  # noqa: E731
    onlined, sysinit = stamps(r"memory\d+: onlined"), stamps(r"Reached target.*System Initialization")
    assert len(onlined) == 16 and sysinit and max(onlined) < sysinit[0], boot
    # systemd 247 (Debian 11) names the unit by its Description only.
    unit_start, unit_ready = stamps(r"Starting (?:memonlined\.service|Online hot-plugged)")[0], stamps(r"ready:")[0]
    suite = os.path.basename(systemd_root).rsplit("-", 1)[-1]
    S.note_time(f"systemd unit guest [{suite}]: unit start to READY (16 blocks onlined)", unit_ready - unit_start)
    S.note_time(f"systemd unit guest [{suite}]: unit start to sysinit.target", sysinit[0] - unit_start)
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
