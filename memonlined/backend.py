"""The one object through which memonlined reads and writes the system.

A Backend is rooted at a directory: "/" for the live machine, or a tree with
the same relative paths (recorded by `memonlined capture`, or built by the
tests' fake kernel). Paths given to it are relative ("sys/...", "proc/...").
"""

from __future__ import annotations

import errno
import os
import stat

from .parse import PAGE_SIZE

MEMORY = "sys/devices/system/memory"
NODE = "sys/devices/system/node"
ACPI_DEVICES = "sys/bus/acpi/devices"
VIRTIO_DEVICES = "sys/bus/virtio/devices"
VIRTIO_MEM_DRIVER = "sys/bus/virtio/drivers/virtio_mem"
PARAMETERS = "sys/module/memory_hotplug/parameters"
BOOT_PARAMS = "sys/kernel/boot_params/data"
SETUP_DATA = "sys/kernel/boot_params/setup_data"  # E820 entries beyond the zero page's 128
FIRMWARE_MEMMAP = "sys/firmware/memmap"
ZONEINFO = "proc/zoneinfo"
IOMEM = "proc/iomem"
OSRELEASE = "proc/sys/kernel/osrelease"
KMSG = "dev/kmsg"
BOOT_ID = "proc/sys/kernel/random/boot_id"
MEMINFO = "proc/meminfo"
VMSTAT = "proc/vmstat"
# Balloon drivers, where each shows it is bound (virtio_balloon: the virtio
# devices' ids; vmw_balloon: its module, loaded only on VMware).
HV_BALLOON_DRIVER = "sys/bus/vmbus/drivers/hv_balloon"
XEN_BALLOON = "sys/devices/system/xen_memory/xen_memory0"
VMW_BALLOON = "sys/module/vmw_balloon"
# 7.3's dax devices have a state file that onlines a whole dax/kmem device.
DAX_DEVICES = "sys/bus/dax/devices"
AUTO_ONLINE = f"{MEMORY}/auto_online_blocks"
# The kernel settings memonlined may write (kernel mode and the auto-online take-over).
SETTINGS = (AUTO_ONLINE, f"{PARAMETERS}/online_policy", f"{PARAMETERS}/auto_movable_ratio",
            f"{PARAMETERS}/auto_movable_numa_aware")

# The files of a block directory memonlined reads, and the links it follows.
BLOCK_FILES = ("state", "online", "valid_zones", "phys_index", "phys_device", "removable")


def block_dir(index: int) -> str:
    return f"{MEMORY}/memory{index}"


def numbered(name: str, prefix: str) -> int | None:
    """N of a sysfs name PREFIX<N> (memory48, node1); None for any other name."""
    rest = name[len(prefix):]
    return int(rest) if name.startswith(prefix) and rest.isdigit() else None


class Backend:
    """Reads and writes beneath ROOT. The tests' KernelBackend is the same
    over a fake kernel; nothing else in memonlined reads or writes sysfs,
    procfs or the kernel log."""

    def __init__(self, root: str = "/"):
        self.root = os.path.abspath(root)
        self._prefix = self.root.rstrip("/") + "/"
        self._memory_fd: int | None = None  # sys/devices/system/memory, opened beneath the root

    def path(self, rel: str) -> str:
        return self._prefix + rel  # REL is relative: beneath the root (and cheaper than os.path.join)

    def read(self, rel: str) -> str:
        # os.read on a raw descriptor: discovery reads two files per block,
        # and a text-mode open() costs several times more.
        fd = os.open(self.path(rel), os.O_RDONLY)
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("ascii", "replace")

    def read_attribute(self, rel: str) -> str:
        """A sysfs attribute: its show() output (a page at most) comes in one
        read, so one read() call instead of a second one to see EOF."""
        fd = os.open(self.path(rel), os.O_RDONLY)
        try:
            return os.read(fd, 65536).decode("ascii", "replace")
        finally:
            os.close(fd)

    def read_bytes(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read()

    def readlink(self, rel: str) -> str | None:
        """The target of a symlink, or None where there is none."""
        try:
            return os.readlink(self.path(rel))
        except OSError:
            return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def block_indexes(self) -> list[int]:
        """The indexes of all memory block directories, ascending."""
        indexes = (numbered(name, "memory") for name in self.listdir(MEMORY))
        return sorted(i for i in indexes if i is not None)

    def block_node(self, index: int) -> int | None:
        """The node of a block, from its nodeK link (absent for a moment after add)."""
        nodes = (numbered(name, "node") for name in self.listdir(block_dir(index)))
        return next((n for n in nodes if n is not None), None)

    def node_blocks(self) -> dict[int, int]:
        """Block index -> node, from the nodeK/memoryN links: one listing per
        node instead of one per block. Blocks missing here (a tree recorded
        without node directories) are looked up with block_node()."""
        out = {}
        for name in self.listdir(NODE):
            node = numbered(name, "node")
            if node is not None:
                for entry in self.listdir(f"{NODE}/{name}"):
                    index = numbered(entry, "memory")
                    if index is not None:
                        out[index] = node
        return out

    def kernel_log(self) -> list[str]:
        """The kernel log's records. /dev/kmsg is read record by record until
        EAGAIN; in a captured tree it is a plain file, one record a line."""
        path = self.path(KMSG)
        try:
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    return f.read().splitlines()
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return []
        records = []
        try:
            while True:
                try:
                    chunk = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except BrokenPipeError:  # a record was overwritten: go on
                    continue
                if not chunk:
                    break
                records.append(chunk.decode("utf-8", "replace").rstrip("\n"))
        finally:
            os.close(fd)
        return records

    def instance(self, rel: str) -> int | None:
        """What tells one instance of a sysfs directory from the next one at the
        same path: its inode number (kernfs numbers nodes without reuse, on
        64-bit kernels for the whole boot). None when it is gone."""
        try:
            return os.stat(self.path(rel)).st_ino
        except OSError:
            return None

    def block_instance(self, index: int) -> int | None:
        return self.instance(block_dir(index))

    def page_size(self, zoneinfo=()) -> int:
        """The kernel's page size: this system's; for a recorded tree, MemTotal
        over the managed pages of ZONEINFO (both are totalram_pages()), else 4 KiB."""
        if self.root == "/":
            return os.sysconf("SC_PAGE_SIZE")
        managed = sum(z.managed for z in zoneinfo)
        try:
            for line in self.read(MEMINFO).splitlines():
                if line.startswith("MemTotal:") and managed:
                    size = int(line.split()[1]) * 1024 // managed
                    return next(p for p in (4096, 16384, 65536) if abs(size - p) * 8 < p)
        except (OSError, ValueError, IndexError, StopIteration):
            pass
        return PAGE_SIZE

    def boot_id(self) -> str | None:
        try:
            return self.read(BOOT_ID).strip() or None
        except OSError:
            return None

    def _open_beneath(self, rel: str, flags: int, dir_fd: int | None = None) -> int:
        """Open REL under the root (or under DIR_FD) following no symlink on
        the way: O_NOFOLLOW alone guards only the last component."""
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if dir_fd is None else os.dup(dir_fd)
        try:
            *dirs, name = rel.split("/")
            for part in dirs:
                if part in ("", ".", ".."):
                    raise OSError(errno.EINVAL, f"{rel}: not a plain relative path")
                next_fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = next_fd
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)

    def _open_attribute(self, rel: str, dir_fd: int | None = None) -> int:
        """A sysfs attribute for writing: a regular file beneath the root (a
        FIFO or device node planted in a tree would hang the daemon or take
        the write)."""
        fd = self._open_beneath(rel, os.O_WRONLY | os.O_NONBLOCK, dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{rel}: not a regular file")
        return fd

    def _write(self, fd: int, value: str) -> None:
        try:
            data = value.encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write")
        finally:
            os.close(fd)

    def write_block_state(self, index: int, value: str) -> None:
        """Write VALUE to a block's state file. Raises OSError as the kernel does.

        The path is built from an integer, never from text read off the
        system; the file must already exist (nothing is created) and no
        symlink is followed on the way from the root, so a write cannot land
        anywhere else, under --root too.
        """
        if self._memory_fd is None:
            self._memory_fd = self._open_beneath(MEMORY, os.O_PATH | os.O_DIRECTORY)
        self._write(self._open_attribute(f"memory{int(index)}/state", self._memory_fd), value)

    def write_setting(self, rel: str, value: str) -> None:
        """Write one of the kernel settings in SETTINGS; nothing else."""
        if rel not in SETTINGS:
            raise ValueError(f"{rel}: not a setting memonlined writes")
        self._write(self._open_attribute(rel), value)

    def close(self) -> None:
        if self._memory_fd is not None:
            os.close(self._memory_fd)
            self._memory_fd = None
