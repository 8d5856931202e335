"""What the daemon tells of report.py's figures (Reporter): a journal line
per device after each batch, the balloon warning, and the Prometheus text
file for node_exporter's textfile collector ([daemon] metrics_file): per
device and per node what is in ZONE_MOVABLE, in kernel zones and offline,
what could be given back, the decisions so far, the balloons. The file is
replaced whole (a temporary file beside it, renamed), so a scrape never
reads half of it; it carries no timestamp (node_exporter exports the
file's mtime).
"""

from __future__ import annotations

import logging
import os
import time

from . import report
from .discover import memory_now
from .model import Machine
from .parse import MOVABLE
from .writer import FIGURES_MESSAGE_ID

log = logging.getLogger(__name__)

# How often the metrics file is brought up to date with what changes
# without a uevent (MemAvailable, balloons): a wake-up only with a file.
REFRESH = 10.0


def _labels(**labels) -> str:
    def escape(value) -> str:
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


class _Text:
    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples) -> None:
        """SAMPLES: (labels dict, value); a family without samples is left out."""
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{_labels(**labels)} {value}" for labels, value in samples]


def render(machine: Machine, counts, available: int | None, running: bool = True) -> str:
    devices = report.device_figures(machine)
    nodes = report.node_figures(devices, available)
    node = lambda nid: "" if nid is None else str(nid)  # noqa: E731
    t = _Text()
    t.family("memonlined_running", "gauge", "1 while memonlined's daemon runs, 0 after it stopped.",
             [({}, int(running))])
    online = sum(1 for b in machine.blocks.values() if b.online)
    t.family("memonlined_blocks", "gauge", "Memory blocks by state.",
             [({"state": "online"}, online), ({"state": "offline"}, len(machine.blocks) - online)])
    t.family("memonlined_device_bytes", "gauge",
             "A hot-plugged device's memory: in ZONE_MOVABLE (movable), in kernel zones (kernel), offline.",
             [({"device": d.device, "kind": d.kind, "node": node(d.node), "state": state}, value)
              for d in devices for state, value in (("movable", d.movable), ("kernel", d.kernel),
                                                    ("offline", d.offline))])
    t.family("memonlined_device_removable_bytes", "gauge",
             "What of a device could be unplugged, given free memory elsewhere for what is in use in it.",
             [({"device": d.device, "kind": d.kind, "node": node(d.node)}, d.removable) for d in devices])
    t.family("memonlined_node_bytes", "gauge", "A node's hot-plugged memory by state.",
             [({"node": node(n.node), "state": state}, value)
              for n in nodes for state, value in (("movable", n.movable), ("kernel", n.kernel),
                                                  ("offline", n.offline))])
    t.family("memonlined_node_unpluggable_now_bytes", "gauge",
             "An estimate of what could be unplugged from a node now (removable, within the system's "
             "MemAvailable: do not add nodes up).",
             [({"node": node(n.node)}, n.unpluggable_now) for n in nodes])
    t.family("memonlined_unpluggable_now_bytes", "gauge",
             "An estimate of what could be unplugged from the whole system now.",
             [({}, report.unpluggable_now(devices, available) if devices else None)])
    t.family("memonlined_memory_available_bytes", "gauge", "MemAvailable of /proc/meminfo.", [({}, available)])
    t.family("memonlined_blocks_onlined_total", "counter", "Blocks memonlined onlined since it started.",
             [({}, counts["onlined"])])
    t.family("memonlined_online_failures_total", "counter", "Blocks whose onlining failed since start.",
             [({}, counts["failed"])])
    t.family("memonlined_conflicts_total", "counter", "Blocks found onlined by someone else since start.",
             [({}, counts["conflicts"])])
    t.family("memonlined_balloon_info", "gauge", "A bound balloon driver; migrates: whether its pages can move.",
             [({"driver": b.driver, "device": b.device,
                "migrates": {True: "yes", False: "no", None: "unknown"}[b.migrates]}, 1)
              for b in machine.balloons])
    t.family("memonlined_balloon_inflated_bytes", "gauge", "Memory in a balloon, where /proc/vmstat counts it.",
             [({"driver": b.driver, "device": b.device},
               None if b.inflated_pages is None else b.inflated_pages * machine.page_size)
              for b in machine.balloons])
    return "\n".join(t.lines) + "\n"


def _create(directory: str) -> "tuple[int, str]":
    """A new file in DIRECTORY for the next text, never one that is there
    already (in a shared directory, anyone's): a random name, and another on
    a clash. The tempfile module would do, at a megabyte of the daemon's memory."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(3):
        path = os.path.join(directory, f".memonlined-{os.getpid()}-{os.urandom(4).hex()}.prom.tmp")
        try:
            return os.open(path, flags, 0o644), path
        except FileExistsError:
            if attempt == 2:
                raise


class MetricsFile:
    """PATH rewritten whenever the text changes; None: no metrics. A write
    that fails is logged once until one succeeds again: metrics never stop
    the daemon."""

    def __init__(self, path: str | None):
        self.path = path
        self._written: str | None = None
        self._failing = False

    def update(self, text: str) -> None:
        if not self.path or text == self._written:
            return
        try:
            fd, tmp = _create(os.path.dirname(self.path))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    os.fchmod(f.fileno(), 0o644)
                    f.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            if not self._failing:
                log.error("%s: cannot write the metrics file: %s", self.path, e.strerror or e)
            self._failing = True
            return
        self._failing = False
        self._written = text


class Reporter:
    """The daemon's figures told: the journal after a batch, the balloon
    warning once per balloon, the metrics file (PATH; None: none)."""

    def __init__(self, backend, path: str | None, counts):
        self.backend, self.counts = backend, counts
        self.file = MetricsFile(path)
        self.due_at: float | None = None  # the next refresh of the file
        self.balloon_said: str | None = None

    def due(self, now: float) -> bool:
        return self.due_at is not None and now >= self.due_at

    def batch_done(self, machine: Machine, indexes) -> None:
        """The figures of the devices INDEXES belong to, as journal fields too;
        the balloon warning when memory went Movable."""
        blocks = machine.blocks
        names = {blocks[i].group.name for i in indexes if i in blocks and blocks[i].group is not None}
        for d in report.device_figures(machine, names) if names else ():
            log.info("%s", d.line(), extra={"MESSAGE_ID": FIGURES_MESSAGE_ID, "DEVICE": d.device,
                                             "MOVABLE_BYTES": d.movable, "KERNEL_BYTES": d.kernel,
                                             "OFFLINE_BYTES": d.offline, "REMOVABLE_BYTES": d.removable})
        if any(i in blocks and blocks[i].zone == MOVABLE for i in indexes):
            self.balloon_check(machine)

    def balloon_check(self, machine: Machine) -> None:
        """The balloon warning when it first applies, and again for another balloon."""
        balloon = machine.unmovable_balloon()
        if balloon is not None and balloon.name != self.balloon_said:
            log.warning("%s", report.balloon_warning(machine))
        self.balloon_said = balloon.name if balloon is not None else None

    def update(self, machine: Machine, running: bool = True) -> None:
        if self.file.path is None:
            return
        self.file.update(render(machine, self.counts, memory_now(self.backend).get("memory_available"), running))
        self.due_at = time.monotonic() + REFRESH if running else None

    def move(self, machine: Machine, path: str | None) -> None:
        """A reload named another file (or none): the old one says memonlined stopped writing it."""
        if path != self.file.path:
            self.update(machine, running=False)
            self.file, self.due_at = MetricsFile(path), None

