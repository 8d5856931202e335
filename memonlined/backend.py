"""The one object through which memonlined reads and writes the system.

A Backend is rooted at a directory: "/" for the live machine, or a tree with
the same relative paths (recorded by `memonlined capture`, or built by the
tests' fake kernel). Paths given to it are relative ("sys/...", "proc/...").
"""

import errno
import os
from typing import Dict, Iterator, List, Optional

MEMORY = "sys/devices/system/memory"
NODE = "sys/devices/system/node"
ACPI_DEVICES = "sys/bus/acpi/devices"
PARAMETERS = "sys/module/memory_hotplug/parameters"
BOOT_PARAMS = "sys/kernel/boot_params/data"
FIRMWARE_MEMMAP = "sys/firmware/memmap"
ZONEINFO = "proc/zoneinfo"
IOMEM = "proc/iomem"
OSRELEASE = "proc/sys/kernel/osrelease"
KMSG = "dev/kmsg"
AUTO_ONLINE = f"{MEMORY}/auto_online_blocks"
# The kernel settings memonlined may write (kernel mode and the auto-online take-over).
SETTINGS = (AUTO_ONLINE, f"{PARAMETERS}/online_policy", f"{PARAMETERS}/auto_movable_ratio",
            f"{PARAMETERS}/auto_movable_numa_aware")

# The files of a block directory memonlined reads, and the links it follows.
BLOCK_FILES = ("state", "online", "valid_zones", "phys_index", "phys_device", "removable")


def block_dir(index: int) -> str:
    return f"{MEMORY}/memory{index}"


def numbered(name: str, prefix: str) -> Optional[int]:
    """N of a sysfs name PREFIX<N> (memory48, node1); None for any other name."""
    rest = name[len(prefix):]
    return int(rest) if name.startswith(prefix) and rest.isdigit() else None


class Backend:
    def __init__(self, root: str = "/"):
        self.root = os.path.abspath(root)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

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

    def read_bytes(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read()

    def readlink(self, rel: str) -> Optional[str]:
        """The target of a symlink, or None where there is none."""
        try:
            return os.readlink(self.path(rel))
        except OSError:
            return None

    def listdir(self, rel: str) -> List[str]:
        try:
            return os.listdir(self.path(rel))
        except FileNotFoundError:
            return []

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def block_indexes(self) -> List[int]:
        """The indexes of all memory block directories, ascending."""
        indexes = (numbered(name, "memory") for name in self.listdir(MEMORY))
        return sorted(i for i in indexes if i is not None)

    def block_node(self, index: int) -> Optional[int]:
        """The node of a block, from its nodeK link (absent for a moment after add)."""
        nodes = (numbered(name, "node") for name in self.listdir(block_dir(index)))
        return next((n for n in nodes if n is not None), None)

    def node_blocks(self) -> Dict[int, int]:
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

    def kernel_log(self) -> List[str]:
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

    def write_block_state(self, index: int, value: str) -> None:
        """Write VALUE to a block's state file. Raises OSError as the kernel does.

        The path is built from an integer, never from text read off the
        system, and the file must already exist: nothing is ever created and
        a symlink is never followed, so a write cannot land anywhere else.
        """
        fd = os.open(self.path(f"{block_dir(int(index))}/state"), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            data = value.encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write")
        finally:
            os.close(fd)

    def write_setting(self, rel: str, value: str) -> None:
        """Write one of the kernel settings in SETTINGS; nothing else."""
        if rel not in SETTINGS:
            raise ValueError(f"{rel}: not a setting memonlined writes")
        fd = os.open(self.path(rel), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def capture_paths(backend: Backend) -> Iterator[str]:
    """Every file and link memonlined reads, as relative paths."""
    yield f"{MEMORY}/block_size_bytes"
    yield AUTO_ONLINE
    for index in backend.block_indexes():
        d = block_dir(index)
        names = backend.listdir(d)
        links = [name for name in names if numbered(name, "node") is not None]
        for name in names:
            if name == "valid_zones" and not links:
                continue  # reading it before the node is set oopses the kernel (discover.read_block)
            if name in BLOCK_FILES or name == "firmware_node" or name in links:
                yield f"{d}/{name}"
    for name in backend.listdir(NODE):
        if numbered(name, "node") is not None:
            for entry in backend.listdir(f"{NODE}/{name}"):
                if numbered(entry, "memory") is not None:
                    yield f"{NODE}/{name}/{entry}"
    for name in backend.listdir(ACPI_DEVICES):
        if name.startswith("PNP0C80:"):
            yield f"{ACPI_DEVICES}/{name}"
    for name in backend.listdir(PARAMETERS):
        yield f"{PARAMETERS}/{name}"
    yield BOOT_PARAMS
    for entry in backend.listdir(FIRMWARE_MEMMAP):
        for name in ("start", "end", "type"):
            yield f"{FIRMWARE_MEMMAP}/{entry}/{name}"
    yield ZONEINFO
    yield IOMEM
    yield OSRELEASE


def capture(backend: Backend, out: str) -> int:
    """Record what memonlined reads into OUT at the same relative paths.

    Links are kept as the relative links they are; the kernel log is kept as
    a plain file holding only the virtio_mem records. Returns the file count.
    """
    count = 0
    for rel in capture_paths(backend):
        src = backend.path(rel)
        dst = os.path.join(out, rel)
        if not os.path.lexists(src):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            if os.path.lexists(dst):
                os.unlink(dst)
            os.symlink(os.readlink(src), dst)
        else:
            try:
                data = backend.read_bytes(rel)
            except OSError:
                continue  # unreadable (e.g. a write-only parameter): not needed
            with open(dst, "wb") as f:
                f.write(data)
        count += 1
    records = [r for r in backend.kernel_log() if "virtio_mem" in r]
    os.makedirs(os.path.join(out, "dev"), exist_ok=True)
    with open(os.path.join(out, KMSG), "w", encoding="utf-8") as f:
        f.writelines(r + "\n" for r in records)
    return count + 1
