"""Where memory block uevents come from.

A uevent only tells the daemon which block to read again; sysfs is the truth.
Two sources, one interface (start, fileno, poll -> Uevent or None):

- kernel (the default): the kernel's own uevent netlink group, read with the
  standard library. No udevd needed (minimal VMs, initramfs, udevd
  restarting), and no per-event cost in udevd: a growing virtio-mem device
  waits for every block to be onlined before it adds more.
- udev: events after udevd processed them, through pyudev.
"""

from __future__ import annotations

import collections
import logging
import socket

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1            # udevd re-sends on group 2
SO_RCVBUFFORCE = 33         # not in the socket module; asm-generic/socket.h
MAX_UEVENT = 8192           # UEVENT_BUFFER_SIZE is 2048


Uevent = collections.namedtuple("Uevent", "action sys_name")


def parse_uevent(data: bytes) -> Uevent | None:
    """A kernel uevent ("add@/devices/...\\0ACTION=add\\0DEVPATH=...\\0SUBSYSTEM=memory\\0...")
    as (action, sys_name) when it is about a memory block; None otherwise
    (another subsystem, or not a kernel uevent at all)."""
    fields = data.split(b"\0")
    if b"@" not in fields[0]:
        return None  # libudev's messages start with "libudev\0"
    env = dict(f.split(b"=", 1) for f in fields[1:] if b"=" in f)
    if env.get(b"SUBSYSTEM") != b"memory" or b"ACTION" not in env or b"DEVPATH" not in env:
        return None
    try:
        return Uevent(env[b"ACTION"].decode("ascii"), env[b"DEVPATH"].rsplit(b"/", 1)[-1].decode("ascii"))
    except UnicodeDecodeError:
        return None


class KernelMonitor:
    """The kernel's uevents, memory subsystem only, from an AF_NETLINK socket."""

    def __init__(self, receive_buffer: int):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                  NETLINK_KOBJECT_UEVENT)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
        except PermissionError:  # needs CAP_NET_ADMIN beyond rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            _small_buffer(receive_buffer >> 20, "no CAP_NET_ADMIN")

    def start(self) -> None:
        self.sock.bind((0, KERNEL_GROUP))

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout=0) -> Uevent | None:
        """The next memory block uevent already received, or None. Raises
        OSError (ENOBUFS) when the kernel had to drop events."""
        while True:
            try:
                data, (pid, _groups) = self.sock.recvfrom(MAX_UEVENT)
            except BlockingIOError:
                return None
            if pid != 0:
                continue  # only the kernel sends with port id 0; anything else could be forged
            event = parse_uevent(data)
            if event is not None:
                return event


def make_monitor(event_source: str, receive_buffer_mib: int):
    """A monitor of memory block uevents from EVENT_SOURCE (kernel or udev)."""
    if event_source == "kernel":
        return KernelMonitor(receive_buffer_mib << 20)
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    monitor.filter_by("memory")
    try:
        monitor.set_receive_buffer_size(receive_buffer_mib << 20)
    except OSError as e:  # needs CAP_NET_ADMIN beyond rmem_max
        _small_buffer(receive_buffer_mib, e)
    return monitor


def _small_buffer(mib: int, why) -> None:
    log.warning("could not set the uevent receive buffer to %d MiB (%s); bursts may lose events, "
                "which makes memonlined rescan", mib, why)
