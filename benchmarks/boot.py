"""Start-up and one-shot figures in the systemd guest, with the Debian package.

    .venv/bin/python benchmarks/boot.py [--reps N] [--cases a,b,...]

Needs root and `bash tests/e2e/setup.sh`. The bookworm root of
tests/e2e/systemd_image.sh (Debian 12: its kernel 6.1, Python 3.11, systemd)
gets this checkout's package as tests/e2e/test_systemd.py installs it, and a
check unit; one disk image serves every guest (QEMU -snapshot: nothing a boot
writes stays). TCG, 2 vCPUs, the kernel's default boot options but for who
onlines memory. Cases, interleaved, N guests each:

- ready-empty: 4 GiB, nothing offline: the unit's start to READY=1, and
  the daemon's resident memory once ready (VmRSS);
- ready-offline: 4 GiB plus 32 GiB of cold-plugged DIMMs (4 x 8 GiB) and a
  virtio-mem device asked for 4 GiB at boot, memhp_default_state=offline:
  the unit's start to READY=1 and to its last block write (the journal);
- floor: the same memory, memonlined masked, the kernel's auto-movable
  policy: a shell loop writing `online` to every offline block until all
  288 hot-plugged blocks are online, timed (the kernel's own work);
- oneshot: 1 GiB with a 1 GiB DIMM and 1 GiB of virtio-mem offline at boot,
  memonlined masked: `memonlined online` for the 16 blocks, its first run in
  the boot, timed; then `python3 -c pass` (the interpreter's own start).

Prints medians with their range, writes benchmarks/boot-results.json.
BOOT_JOURNAL=1 also prints where the time went: the ready cases' journal
lines (monotonic time), and for the one-shot a cold `python3 -c pass`,
`-X importtime` of memonlined.cli cold and warm, and a cProfile of
`memonlined online --dry-run`.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))

from guest import GiB, virtio_mem_opts
import test_systemd as T

CASES = ("ready-empty", "ready-offline", "floor", "oneshot")
HOTPLUGGED = 4 * 8 * GiB // (128 << 20) + 4 * GiB // (128 << 20)  # ready-offline's blocks: 288

CHECK = r"""#!/bin/sh
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=
case=$(sed -n 's/.* e2e\.case=\([a-z-]*\).*/\1/p' /proc/cmdline)
want=$(sed -n 's/.* e2e\.offline=\([0-9]*\).*/\1/p' /proc/cmdline)  # offline before anything is onlined
total=$(sed -n 's/.* e2e\.total=\([0-9]*\).*/\1/p' /proc/cmdline)   # to online in all
cd /sys/devices/system/memory
now() { date +%s.%N; }
offline() { cat memory[0-9]*/state | grep -c offline; }
until_offline() {  # until $1 blocks are offline (the drivers added them), 120 s at most
    i=0; while [ "$(offline)" -lt "$1" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
}
case $case in
ready-*)
    i=0; while ! systemctl is-active -q memonlined && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
    echo "E2E-UNIT $(systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic memonlined | tr '\n' ' ')"
    echo "E2E-RSS $(awk '/^VmRSS:/ {print $2}' /proc/$(systemctl show -p MainPID --value memonlined)/status)"
    i=0; while [ "$(offline)" != 0 ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
    echo "E2E-LAST $(journalctl -u memonlined -o short-monotonic --no-pager | grep -E 'memory[0-9]+: onlined' | tail -n 1)"
    echo "E2E-COUNT $(journalctl -u memonlined --no-pager | grep -cE 'memory[0-9]+: onlined') $(offline)"
    echo "E2E-JOURNAL-BEGIN"
    journalctl -b -o short-monotonic --no-pager | grep -E 'memonlined\[|: (Starting|Started) memonlined' | grep -vE 'memory[0-9]+: onlined' | head -n 60
    echo "E2E-JOURNAL-END"
    ;;
floor)
    until_offline "$want"
    t0=$(now)
    n=0
    while [ $n -lt "$total" ]; do  # ascending, as the kernel's policy would see them; no fork per block
        for i in $(ls -d memory[0-9]* | sed s/memory// | sort -n); do
            read s < memory$i/state
            [ "$s" = offline ] && echo online > memory$i/state && n=$((n + 1))
        done
    done
    echo "E2E-FLOOR $t0 $(now) $n $(offline)"
    ;;
oneshot)
    until_offline "$want"
    t0=$(now)
    memonlined online >/run/oneshot.log 2>&1
    rc=$?
    t1=$(now)
    python3 -c pass
    t2=$(now)
    echo "E2E-ONESHOT $t0 $t1 $t2 $rc $(offline) $(grep -c '	onlined	' /run/oneshot.log)"
    echo "E2E-JOURNAL-BEGIN"  # where the time goes: cold and warm imports, then the command itself
    sync; echo 3 > /proc/sys/vm/drop_caches
    a=$(now); python3 -c pass; b=$(now)
    echo "cold python3 -c pass: $a $b"
    sync; echo 3 > /proc/sys/vm/drop_caches
    INVOCATION_ID=x python3 -X importtime -c 'import memonlined.cli, memonlined.notify' 2>&1 | sort -t'|' -k1.13,1.24n | tail -n 40
    python3 -X importtime -c 'import memonlined.cli' 2>&1 | sort -t'|' -k2 -n | tail -n 12
    python3 -c 'import cProfile, sys; from memonlined.cli import main; sys.argv[1:] = ["online", "--dry-run"]; cProfile.run("main()", sort="cumtime")' 2>/dev/null | head -n 45
    echo "E2E-JOURNAL-END"
    ;;
esac
echo "E2E-ZONES $(cat memory[0-9]*/valid_zones | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
"""


def guest_memory(case):
    """(-m MiB, QEMU options, kernel options, blocks offline before anything
    is onlined, blocks to online) of CASE. virtio-mem adds blocks while its
    offline memory is below 1 GiB (offline_threshold), the rest once they
    are online."""
    dimm = lambda i, size: [f"-object memory-backend-ram,id=c{i}-mem,size={size},reserve=off",  # noqa: E731
                            f"-device pc-dimm,id=c{i},memdev=c{i}-mem"]
    if case == "ready-empty":
        return 4096, [], [], 0, 0
    if case == "oneshot":
        return 1024, [*dimm(0, "1G"), *virtio_mem_opts("vm0", 2 * GiB, requested=GiB)], \
            ["memhp_default_state=offline", "systemd.mask=memonlined.service"], 16, 16
    opts = [o for i in range(4) for o in dimm(i, "8G")] + virtio_mem_opts("vm0", 8 * GiB, requested=4 * GiB)
    append = ["memhp_default_state=offline"]
    if case == "floor":
        append += ["memory_hotplug.online_policy=auto-movable", "systemd.mask=memonlined.service"]
    return 4096, opts, append, 4 * 8 * GiB // (128 << 20) + 8, HOTPLUGGED


def boot(image, vmlinuz, initrd, case, log):
    memory, opts, append, offline, total = guest_memory(case)
    work = tempfile.mkdtemp(prefix="memonlined-bench-boot-", dir="/tmp")
    console = os.path.join(work, "console.log")
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "2",
           "-m", f"{memory}M,slots=8,maxmem=65536M", *" ".join(opts).split(),
           "-nographic", "-no-reboot", "-snapshot", "-kernel", vmlinuz, "-initrd", initrd,
           "-append", " ".join(["root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 loglevel=3",
                                f"e2e.case={case}", f"e2e.offline={offline}", f"e2e.total={total}", *append]),
           "-drive", f"file={image},if=virtio,format=raw"]
    proc = None
    try:
        with open(console, "w") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        proc.wait(600)
        with open(console, errors="replace") as f:
            text = f.read().replace("\r", "")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return figures(case, text, log)


def figures(case, text, log):
    """The case's figures (seconds) from the console; raises on a guest that did not do the work."""
    def line(mark):
        m = re.search(rf"E2E-{mark} (.*)", text)
        if not m:
            raise RuntimeError(f"{case}: no E2E-{mark} line:\n{text[-3000:]}")
        return m.group(1)
    zones = line("ZONES")
    if case.startswith("ready"):
        unit = dict(kv.split("=", 1) for kv in line("UNIT").split())
        start, ready = int(unit["ExecMainStartTimestampMonotonic"]), int(unit["ActiveEnterTimestampMonotonic"])
        count, left = map(int, line("COUNT").split())
        res = {"start to READY s": (ready - start) / 1e6, "resident MiB": round(int(line("RSS")) / 1024, 2),
               "blocks onlined": count, "offline after": left}
        if case == "ready-offline":
            last = float(re.match(r"\[\s*([0-9.]+)\]", line("LAST")).group(1))
            res["start to last write s"] = last - start / 1e6
            if count != HOTPLUGGED or left:
                raise RuntimeError(f"{case}: memonlined onlined {count} of {HOTPLUGGED} blocks, {left} offline")
    elif case == "floor":
        t0, t1, n, left = line("FLOOR").split()
        res = {"shell loop s": float(t1) - float(t0), "blocks onlined": int(n), "offline after": int(left)}
        if int(n) != HOTPLUGGED or int(left):
            raise RuntimeError(f"floor: the loop onlined {n} of {HOTPLUGGED} blocks, {left} offline")
    else:
        t0, t1, t2, rc, left, n = line("ONESHOT").split()
        res = {"memonlined online s": float(t1) - float(t0), "python3 -c pass s": float(t2) - float(t1),
               "rc": int(rc), "blocks onlined": int(n), "offline after": int(left)}
        if int(rc) or int(n) != 16 or int(left):
            raise RuntimeError(f"oneshot: rc {rc}, {n} of 16 blocks onlined, {left} offline")
    res["zones"] = zones
    journal = re.search(r"E2E-JOURNAL-BEGIN\n(.*?)E2E-JOURNAL-END", text, re.S)
    if journal and os.environ.get("BOOT_JOURNAL"):
        log(journal.group(1))
    log(f"  {case}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5, help="guests per case (default 5)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", default=os.path.join(HERE, "boot-results.json"))
    p.add_argument("--dropin", default="", metavar="TEXT",
                   help="experiments: a drop-in for memonlined.service, e.g. '[Service]\\nNice=-5'")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root (chroot, mkfs, QEMU)")
    log = lambda s: print(s, flush=True)  # noqa: E731
    cases = [c for c in args.cases.split(",") if c]
    root = T.root_for("bookworm")
    debs = T.build_deb()
    T.install(root, (debs, debs), CHECK)
    work = tempfile.mkdtemp(prefix="memonlined-bench-img-", dir="/tmp")
    dropin = os.path.join(root, "etc/systemd/system/memonlined.service.d/bench.conf")
    try:
        image = os.path.join(work, "root.img")
        if args.dropin:
            os.makedirs(os.path.dirname(dropin), exist_ok=True)
            with open(dropin, "w") as f:
                f.write(args.dropin.replace("\\n", "\n") + "\n")
        try:
            subprocess.run(["mkfs.ext4", "-q", "-d", root, image, "2000M"], check=True)
        finally:  # the root is the tests' cached one
            if os.path.exists(dropin):
                os.unlink(dropin)
        vmlinuz = sorted(glob.glob(os.path.join(root, "boot/vmlinuz-*")))[-1]
        initrd = sorted(glob.glob(os.path.join(root, "boot/initrd.img-*")))[-1]
        runs = {c: [] for c in cases}
        for rep in range(args.reps):
            for c in cases:
                log(f"{c}, guest {rep + 1}/{args.reps}:")
                try:
                    runs[c].append(boot(image, vmlinuz, initrd, c, log))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    log(f"  {c}: FAILED: {str(e)[-1500:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for c, rs in runs.items():
        for key in (k for k in (rs[0] if rs else {}) if k.endswith((" s", " MiB"))):
            vals = [r[key] for r in rs]
            summary[f"{c}: {key}"] = {"median": round(statistics.median(vals), 3),
                                      "min": round(min(vals), 3), "max": round(max(vals), 3), "n": len(vals)}
    if "ready-offline: start to last write s" in summary and "floor: shell loop s" in summary:
        summary["ready-offline last write / floor (medians)"] = round(
            summary["ready-offline: start to last write s"]["median"] / summary["floor: shell loop s"]["median"], 2)
    with open(args.out, "w") as f:
        json.dump({"conditions": {"root": "Debian 12 (bookworm), its 6.1 kernel and Python 3.11, the package",
                                  "drop-in": args.dropin or None,
                                  "guest": "TCG, 2 vCPUs", "host cores": os.cpu_count(), "guests per case": args.reps},
                   "summary": summary, "guests": runs}, f, indent=1)
    log("")
    for k, v in summary.items():
        unit = k.rsplit(" ", 1)[-1]
        log(f"{k}: " + (f"median {v['median']:.2f} {unit} (min {v['min']:.2f}, max {v['max']:.2f}, {v['n']} guests)"
                        if isinstance(v, dict) else f"{v}"))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
