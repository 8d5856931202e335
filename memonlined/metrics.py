"""The daemon's figures in the Prometheus text format, for node_exporter's
textfile collector ([daemon] metrics_file): per device and per node what
is in ZONE_MOVABLE, in kernel zones and offline, what could be given back
(report.py), the decisions so far, the balloons. The file is replaced
whole (a temporary file beside it, renamed), so a scrape never reads half
of it; it carries no timestamp (node_exporter exports the file's mtime).
"""

import logging
import os
import tempfile
from typing import List, Optional

from . import report
from .model import Machine

log = logging.getLogger(__name__)


def _labels(**labels) -> str:
    def escape(value) -> str:
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


class _Text:
    def __init__(self):
        self.lines: List[str] = []

    def family(self, name: str, kind: str, help_text: str, samples) -> None:
        """SAMPLES: (labels dict, value); a family without samples is left out."""
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{_labels(**labels)} {value}" for labels, value in samples]


def render(machine: Machine, counts, available: Optional[int], running: bool = True) -> str:
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


class MetricsFile:
    """PATH rewritten whenever the text changes; None: no metrics. A write
    that fails is logged once until one succeeds again: metrics never stop
    the daemon."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._written: Optional[str] = None
        self._failing = False

    def update(self, text_of) -> None:
        """TEXT_OF(): the text, made only when there is a file to write."""
        if not self.path:
            return
        text = text_of()
        if text == self._written:
            return
        directory = os.path.dirname(self.path) or "."
        try:
            fd, tmp = tempfile.mkstemp(prefix=".memonlined-", suffix=".prom.tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.chmod(tmp, 0o644)
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
