"""Run scenarios in real Linux guests (QEMU/TCG via virtme-ng), stdlib only.

A guest boots a Debian kernel with the host's root shared read-only, runs a
tiny agent (AGENT below) that executes numbered shell scripts dropped into a
writable shared directory, and is driven over QMP for memory hot-plug:

    with Guest(kernel("bookworm"), memory_mib=4096, append=[...]) as g:
        g.add_dimm("d0", 4 << 30)
        print(g.sh("ls /sys/devices/system/memory").stdout)

Needs tests/e2e/setup.sh to have run (QEMU, vng, kernels + host modules).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = "/var/cache/memonlined-e2e"
MiB, GiB = 1 << 20, 1 << 30

# Guest side. Results are written to a temp name and renamed, so the host
# never reads a half-written file; same for the host's command files.
AGENT = r'''
import json, os, subprocess, sys, time
d = sys.argv[1]
open(os.path.join(d, "ready"), "w").close()
n = 0
while not os.path.exists(os.path.join(d, "exit")):
    cmd = os.path.join(d, "cmd-%d.sh" % n)
    if not os.path.exists(cmd):
        time.sleep(0.05)
        continue
    p = subprocess.run(["/bin/sh", cmd], cwd=sys.argv[2], capture_output=True, text=True)
    res = os.path.join(d, "res-%d.json" % n)
    with open(res + ".tmp", "w") as f:
        json.dump({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}, f)
    os.rename(res + ".tmp", res)
    n += 1
'''


class GuestError(Exception):
    pass


def kernel(suite):
    """vmlinuz path prepared by setup.sh for a Debian suite (bullseye, bookworm, trixie)."""
    with open(os.path.join(CACHE, "kernels.json")) as f:
        return json.load(f)[suite]["vmlinuz"]


def virtio_mem_opts(dev_id, region, requested=0, node=None, block_size=None):
    """QEMU options adding a virtio-mem device at start (hot-plug it later by resizing)."""
    dev = f"virtio-mem-pci,id={dev_id},memdev={dev_id}-mem,requested-size={requested}"
    if node is not None:
        dev += f",node={node}"
    if block_size is not None:
        dev += f",block-size={block_size}"
    # reserve=off: the backend is only backed by host memory when touched.
    return [f"-object memory-backend-ram,id={dev_id}-mem,size={region},reserve=off", f"-device {dev}"]


class QMP:
    """Minimal QMP client: JSON lines over a unix socket, events skipped."""

    def __init__(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise GuestError(f"QMP socket {path} never came up")
                time.sleep(0.2)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rw")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        while True:
            line = self.file.readline()
            if not line:
                raise GuestError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command, **args):
        self.file.write(json.dumps({"execute": command, "arguments": args}) + "\n")
        self.file.flush()
        msg = self._read()
        if "error" in msg:
            raise GuestError(f"QMP {command} {args}: {msg['error']}")
        return msg["return"]

    def close(self):
        self.sock.close()


class Guest:
    """A running guest; use as a context manager so QEMU never outlives the test."""

    def __init__(self, vmlinuz, memory_mib=4096, slots=8, maxmem_mib=65536, numa=(),
                 append=(), qemu_opts=(), rwdirs=(), boot_timeout=240, cpus=None):
        self.vmlinuz = vmlinuz
        self.memory = f"{memory_mib},slots={slots},maxmem={maxmem_mib}"
        self.numa, self.append, self.qemu_opts, self.rwdirs = numa, append, qemu_opts, rwdirs
        self.boot_timeout = boot_timeout
        self.cpus = cpus
        self.proc = self.qmp = None
        self.seq = 0

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        if self.proc is not None:
            raise GuestError("guest already started")
        # Short path: QMP's unix socket path is limited to 108 bytes.
        self.workdir = tempfile.mkdtemp(prefix="memonlined-e2e-", dir="/tmp")
        self.share = os.path.join(self.workdir, "share")
        os.mkdir(self.share)
        sock = os.path.join(self.workdir, "qmp.sock")
        agent = os.path.join(self.share, "agent.py")
        with open(agent, "w") as f:
            f.write(AGENT)
        qemu_opts = [f"-qmp unix:{sock},server=on,wait=off", *self.qemu_opts]
        cmd = [os.path.join(REPO, ".venv/bin/vng"), "-r", self.vmlinuz, "--disable-kvm",
               "--memory", self.memory, "--rwdir", self.share,
               "--qemu-opts=" + " ".join(qemu_opts),
               "--append", " ".join(self.append),
               "--exec", f"python3 {agent} {self.share} {REPO}"]
        for n in self.numa:
            cmd += ["--numa", n]
        for d in self.rwdirs:
            cmd += ["--rwdir", d]
        if self.cpus is not None:
            cmd += ["--cpus", str(self.cpus)]
        env = dict(os.environ, PATH=os.path.join(REPO, ".venv/bin") + ":" + os.environ["PATH"])
        self.console = os.path.join(self.workdir, "console.log")
        self.t0 = time.monotonic()
        with open(self.console, "w") as log:
            # Own session: close() can kill vng and QEMU as one process group.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.qmp = QMP(sock)
        self._wait_file(os.path.join(self.share, "ready"), self.boot_timeout, "boot")
        self.boot_seconds = time.monotonic() - self.t0

    def _wait_file(self, path, timeout, what):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None:
                raise GuestError(f"guest exited ({self.proc.returncode}) during {what}:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"timeout after {timeout}s: {what}\n{self.console_tail()}")
            time.sleep(0.05)

    def console_tail(self, n=40):
        with open(self.console, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def sh(self, script, timeout=300, check=True):
        """Run a shell script in the guest (cwd: the repo); returns CompletedProcess."""
        n, self.seq = self.seq, self.seq + 1
        path = os.path.join(self.share, f"cmd-{n}.sh")
        with open(path + ".tmp", "w") as f:
            f.write(script)
        os.rename(path + ".tmp", path)
        res = os.path.join(self.share, f"res-{n}.json")
        self._wait_file(res, timeout, f"guest command {script!r}")
        with open(res) as f:
            r = json.load(f)
        p = subprocess.CompletedProcess(script, r["rc"], r["stdout"], r["stderr"])
        if check and p.returncode:
            raise GuestError(f"guest command failed ({p.returncode}): {script}\n{p.stdout}{p.stderr}")
        return p

    def add_dimm(self, dimm_id, size, node=None):
        self.qmp.execute("object-add", **{"qom-type": "memory-backend-ram", "id": f"{dimm_id}-mem",
                                          "size": size, "reserve": False})
        args = {"driver": "pc-dimm", "id": dimm_id, "memdev": f"{dimm_id}-mem"}
        if node is not None:
            args["node"] = node
        self.qmp.execute("device_add", **args)

    def memory_devices(self):
        """id -> data of query-memory-devices (data["size"] is what is plugged)."""
        return {d["data"]["id"]: d["data"] for d in self.qmp.execute("query-memory-devices")}

    def request_size(self, dev_id, size):
        """Ask a virtio-mem device for SIZE bytes (the guest plugs them in its own time)."""
        self.qmp.execute("qom-set", path=f"/machine/peripheral/{dev_id}", property="requested-size", value=size)

    def plugged(self, dev_id):
        """What a virtio-mem device has plugged, in bytes."""
        return self.memory_devices()[dev_id]["size"]

    def resize_virtio_mem(self, dev_id, size, timeout=120):
        """Ask a virtio-mem device for `size` bytes and wait until the guest plugged them."""
        self.request_size(dev_id, size)
        deadline = time.monotonic() + timeout
        while (plugged := self.plugged(dev_id)) != size:
            if time.monotonic() > deadline:
                raise GuestError(f"{dev_id}: plugged {plugged} of {size} after {timeout}s")
            time.sleep(0.2)

    def close(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                open(os.path.join(self.share, "exit"), "w").close()
                self.proc.wait(15)  # agent exits, vng powers the guest off
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:  # also reaps a QEMU left behind by vng
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self.qmp:
            self.qmp.close()
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)
