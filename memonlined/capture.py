"""memonlined capture: record what memonlined reads into a tree that
`--root` reads back (bug reports, the tests' recorded guests).

OUT must be new or an empty directory of the caller's: every file and
directory is created afresh (O_EXCL, no symlink followed), so nothing
planted in OUT can turn a capture by root into a write elsewhere.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from .backend import (ACPI_DEVICES, AUTO_ONLINE, BLOCK_FILES, BOOT_ID, BOOT_PARAMS, DAX_DEVICES, Backend,
                      FIRMWARE_MEMMAP, HV_BALLOON_DRIVER, IOMEM, KMSG, MEMINFO, MEMORY, NODE, OSRELEASE,
                      PARAMETERS, SETUP_DATA, VIRTIO_DEVICES, VIRTIO_MEM_DRIVER, VMSTAT, VMW_BALLOON,
                      XEN_BALLOON, ZONEINFO, block_dir, numbered)
from .conflicts import DAXCTL_CONF_DIR, RULES_DIRS


class CaptureError(Exception):
    """OUT cannot be used (one line, naming it)."""


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
                continue  # reading it before the node is set oopses the kernel (discover.read_block_files)
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
    for node in backend.listdir(SETUP_DATA):
        yield f"{SETUP_DATA}/{node}/type"
        yield f"{SETUP_DATA}/{node}/data"
    for entry in backend.listdir(FIRMWARE_MEMMAP):
        for name in ("start", "end", "type"):
            yield f"{FIRMWARE_MEMMAP}/{entry}/{name}"
    # The virtio devices (virtio-mem's driver wait, virtio_balloon), the other
    # balloons, 7.3's dax state files.
    for name in backend.listdir(VIRTIO_DEVICES):
        yield f"{VIRTIO_DEVICES}/{name}/device"
        yield f"{VIRTIO_DEVICES}/{name}/driver"
    yield f"{VIRTIO_MEM_DRIVER}/module"
    yield VMSTAT
    for name in backend.listdir(HV_BALLOON_DRIVER):
        yield f"{HV_BALLOON_DRIVER}/{name}"
    yield f"{XEN_BALLOON}/target_kb"
    yield f"{VMW_BALLOON}/initstate"
    for name in backend.listdir(DAX_DEVICES):
        yield f"{DAX_DEVICES}/{name}/state"
    # What doctor reads: the udev rules in effect and daxctl's configuration.
    for d in RULES_DIRS:
        for name in sorted(backend.listdir(d)):
            if name.endswith(".rules"):
                yield f"{d}/{name}"
    for name in sorted(backend.listdir(DAXCTL_CONF_DIR)):
        yield f"{DAXCTL_CONF_DIR}/{name}"
    yield ZONEINFO
    yield IOMEM
    yield MEMINFO
    yield OSRELEASE
    yield BOOT_ID


def _prepare(out: str) -> int:
    """A descriptor of OUT, created here or an empty directory of ours."""
    try:
        os.mkdir(out, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise CaptureError(f"{out}: cannot create: {e.strerror}") from None
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise CaptureError(f"{out}: not a directory to capture into: {e.strerror}") from None
    st = os.fstat(fd)
    if os.listdir(fd) or st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise CaptureError(f"{out}: expected a new or empty directory, owned by this user and "
                           "writable by nobody else")
    return fd


def _dir(top: int, rel_dir: str) -> int:
    """A descriptor of REL_DIR under TOP, making each directory on the way
    (never following a link); the caller closes it."""
    fd = os.dup(top)
    for name in rel_dir.split("/") if rel_dir else ():
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        except FileExistsError:
            pass  # made by this capture: every directory here is ours
        next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        os.close(fd)
        fd = next_fd
    return fd


def capture(backend: Backend, out: str) -> int:
    """Record what memonlined reads into OUT at the same relative paths.

    Links are kept as the relative links they are; the kernel log is kept as
    a plain file holding only the virtio_mem records. Returns the file count.
    Raises CaptureError for an unusable OUT, OSError for a failed write.
    """
    top = _prepare(out)
    count = 0

    # Owner-only: the tree holds what only root may read (real /proc/iomem
    # addresses, the kernel log).
    def create(rel: str, data: bytes) -> None:
        parent, _, name = rel.rpartition("/")
        dfd = _dir(top, parent)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
        finally:
            os.close(dfd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    try:
        for rel in capture_paths(backend):
            src = backend.path(rel)
            if not os.path.lexists(src):
                continue
            if os.path.islink(src):
                parent, _, name = rel.rpartition("/")
                dfd = _dir(top, parent)
                try:
                    os.symlink(os.readlink(src), name, dir_fd=dfd)
                finally:
                    os.close(dfd)
            else:
                try:
                    data = backend.read_bytes(rel)
                except OSError:
                    continue  # unreadable (e.g. a write-only parameter): not needed
                create(rel, data)
            count += 1
        records = [r for r in backend.kernel_log() if "virtio_mem" in r]
        create(KMSG, "".join(r + "\n" for r in records).encode())
    finally:
        os.close(top)
    return count + 1
