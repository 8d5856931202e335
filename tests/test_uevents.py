"""The kernel uevent source: parsing, and the real netlink socket of this machine."""

import os
import select
import socket

import pytest
from hypothesis import given, strategies as st

from memonlined.uevents import KERNEL_GROUP, NETLINK_KOBJECT_UEVENT, KernelMonitor, Uevent, parse_uevent

ADD = (b"add@/devices/system/memory/memory48\0ACTION=add\0DEVPATH=/devices/system/memory/memory48\0"
       b"SUBSYSTEM=memory\0SEQNUM=2345\0")


def test_a_memory_block_add():
    assert parse_uevent(ADD) == Uevent("add", "memory48")


def test_other_subsystems_and_udevd_messages_are_not_memory_events():
    assert parse_uevent(ADD.replace(b"SUBSYSTEM=memory", b"SUBSYSTEM=cpu")) is None
    assert parse_uevent(b"libudev\0" + ADD) is None
    assert parse_uevent(b"add@/devices/system/memory/memory48\0SUBSYSTEM=memory\0") is None  # no ACTION


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_ignored(data):
    event = parse_uevent(data)
    assert event is None or isinstance(event, Uevent)


REAL = "/sys/devices/system/memory/memory0/uevent"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(REAL),
                                reason="needs root and /sys/devices/system/memory (writes 'change' to a uevent file)")


def _next(monitor, timeout=5.0):
    while select.select([monitor], [], [], timeout)[0]:
        event = monitor.poll()
        if event is not None:
            return event
    return None


@needs_root
def test_a_real_kernel_uevent_arrives():
    monitor = KernelMonitor(1 << 20)
    monitor.start()
    with open(REAL, "w") as f:
        f.write("change")  # the kernel sends a change uevent for memory0
    assert _next(monitor) == Uevent("change", "memory0")
    monitor.sock.close()


@needs_root
def test_a_uevent_sent_from_user_space_is_ignored():
    monitor = KernelMonitor(1 << 20)
    monitor.start()
    forger = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    forger.bind((0, 0))
    forger.sendto(ADD, (0, KERNEL_GROUP))  # root may send to the group; the port id gives it away
    with open(REAL, "w") as f:
        f.write("change")
    assert _next(monitor) == Uevent("change", "memory0")  # the forged add was skipped
    forger.close()
    monitor.sock.close()
