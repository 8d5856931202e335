"""The command line: the composition root. It builds the backend and the
settings, hands them to discovery, the planner and the writer, and prints.

Exit codes: 0 success; 1 partial failure (some block could not be onlined);
2 usage error; 3 configuration error; 4 system data error (global data such
as /proc/zoneinfo missing or garbled: nothing was written).
"""

import argparse
import json
import logging
import sys
from typing import List, Optional

from . import __version__
from . import backend as B
from . import config
from .discover import SystemDataError, discover
from .model import Machine
from .parse import format_size
from .planner import Planner
from .policy import Settings, movable_headroom
from .writer import FAILED, Outcome, online_blocks

log = logging.getLogger("memonlined")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_CONFIG, EXIT_SYSTEM = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memonlined", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Online hot-plugged memory blocks the way the kernel's auto-movable policy would.",
        epilog="exit codes: 0 success, 1 some block could not be onlined, 2 usage error,\n"
               "3 configuration error, 4 system data missing or garbled (nothing written)")
    p.add_argument("--version", action="version", version=f"memonlined {__version__}")
    p.add_argument("--config", metavar="PATH", help=f"configuration file (default {config.DEFAULT_PATH})")
    p.add_argument("--root", metavar="DIR", default="/", help="read (and write) the tree at DIR instead of /")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    for name, key in config.KEYS.items():
        p.add_argument("--" + name.replace("_", "-"), dest="key_" + name, metavar=key.metavar, help=key.help)
    p.add_argument("--override", action="append", default=[], metavar="KIND-OR-DEVICE=POLICY",
                   help="zone policy for a device kind (dimm, virtio-mem, dax, other) or one device")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    online = sub.add_parser("online", help="online every offline block by the policy (one shot)")
    online.add_argument("--dry-run", action="store_true", help="decide and report, write nothing")
    online.add_argument("--json", action="store_true", help="print the decisions as JSON")
    status = sub.add_parser("status", help="the memory layout, the ratio per node, and what offline blocks would get")
    status.add_argument("--json", action="store_true")
    explain = sub.add_parser("explain", help="the decision for one block with every number behind it")
    explain.add_argument("block", type=int, metavar="BLOCK")
    explain.add_argument("--json", action="store_true")
    capture = sub.add_parser("capture", help="record everything memonlined reads into a tree at OUT")
    capture.add_argument("out", metavar="OUT")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="memonlined: %(levelname)s: %(message)s",
                        stream=sys.stderr)
    backend = B.Backend(args.root)
    if args.command == "capture":
        count = B.capture(backend, args.out)
        print(f"captured {count} files into {args.out}")
        return EXIT_OK
    try:
        cli_values = {name: getattr(args, "key_" + name) for name in config.KEYS
                      if getattr(args, "key_" + name) is not None}
        settings = config.load(args.config, cli_values, args.override)
    except config.ConfigError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    try:
        machine = discover(backend)
    except SystemDataError as e:
        log.error("%s", e)
        return EXIT_SYSTEM
    for warning in machine.warnings:
        log.warning("%s", warning)
    if args.command == "online":
        return cmd_online(backend, machine, settings, args.dry_run, args.json)
    if args.command == "status":
        return cmd_status(machine, settings, args.json)
    return cmd_explain(machine, settings, args.block, args.json)


def _auto_online_note(machine: Machine) -> None:
    if machine.auto_online_blocks not in (None, "offline"):
        log.warning("the kernel onlines hot-plugged memory itself (auto_online_blocks=%s): "
                    "new blocks are online before memonlined sees them", machine.auto_online_blocks)


def cmd_online(backend: B.Backend, machine: Machine, settings: Settings, dry_run: bool, as_json: bool) -> int:
    _auto_online_note(machine)
    planner = Planner(machine, settings)
    outcomes = online_blocks(backend, planner, planner.offline_blocks(), dry_run)
    if not outcomes:
        log.info("no offline memory blocks: nothing to do")
    if as_json:
        print(json.dumps({"decisions": [o.as_json() for o in outcomes]}, indent=1))
    else:
        for o in outcomes:
            print(f"memory{o.decision.block}\t{o.zone or '-'}\t{o.result}\t{o.decision.device}\t{o.decision.reason}")
    return EXIT_PARTIAL if any(o.result == FAILED for o in outcomes) else EXIT_OK


def _ranges(machine: Machine, choices: dict) -> List[dict]:
    """Blocks merged into lsmem-style ranges of equal state, zone, node and device."""
    rows: List[dict] = []
    for index in sorted(machine.blocks):
        b = machine.blocks[index]
        key = (b.state, b.zone, b.node, b.device, choices.get(index))
        if rows and rows[-1]["_key"] == key and rows[-1]["_last"] == index - 1:
            rows[-1]["_last"] = index
            continue
        rows.append({"_key": key, "_first": index, "_last": index})
    out = []
    for r in rows:
        state, zone, node, device, choice = r["_key"]
        first, last = r["_first"], r["_last"]
        start, end = first * machine.block_size, (last + 1) * machine.block_size - 1
        out.append({"range": f"0x{start:016x}-0x{end:016x}", "size": format_size(end - start + 1),
                    "state": state, "block": f"{first}-{last}" if last > first else str(first),
                    "node": node, "zones": zone, "device": device, "choice": choice})
    return out


def cmd_status(machine: Machine, settings: Settings, as_json: bool) -> int:
    _auto_online_note(machine)
    # The node summary is of the machine as it is, before the planner's what-if.
    mib = lambda pages: pages * 4096 >> 20  # noqa: E731
    nodes = [{"node": nid, "early_kernel_mib": mib(n.kernel_early), "movable_mib": mib(n.movable),
              "hotplugged_kernel_mib": mib(n.hotplugged_kernel), "ratio": settings.ratio,
              "numa_aware": settings.numa_aware,
              "movable_headroom_mib": mib(movable_headroom(machine, settings, nid))}
             for nid, n in sorted(machine.nodes.items())]
    choices = {d.block: d.zone for d in Planner(machine, settings).plan()}
    # plan() moved the model forward; undo it so the table shows what is.
    for index in choices:
        machine.remove_online(machine.blocks[index])
    ranges = _ranges(machine, choices)
    if as_json:
        print(json.dumps({"memory": ranges, "nodes": nodes, "block_size": machine.block_size,
                          "auto_online_blocks": machine.auto_online_blocks,
                          "kernel_params": machine.kernel_params}, indent=1))
        return EXIT_OK
    header = ("RANGE", "SIZE", "STATE", "BLOCK", "ZONE", "NODE", "DEVICE", "WOULD GET")
    rows = [(r["range"], r["size"], r["state"], r["block"], r["zones"] or "-", str(r["node"]),
             r["device"], r["choice"] or "") for r in ranges]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    print(f"Memory block size: {format_size(machine.block_size)}; "
          f"auto_online_blocks: {machine.auto_online_blocks or 'unknown'}; ratio {settings.ratio}%, "
          f"numa-aware {'yes' if settings.numa_aware else 'no'}, policy {settings.policy}")
    for n in nodes:
        print(f"Node {n['node']}: early kernel {n['early_kernel_mib']}M, movable {n['movable_mib']}M, "
              f"hot-plugged kernel {n['hotplugged_kernel_mib']}M, could take {n['movable_headroom_mib']}M "
              f"more Movable")
    return EXIT_OK


def cmd_explain(machine: Machine, settings: Settings, index: int, as_json: bool) -> int:
    block = machine.blocks.get(index)
    if block is None:
        log.error("memory%d: no such block (or it was skipped)", index)
        return EXIT_USAGE
    if block.state != "offline":
        text = f"memory{index} is {block.state} in {block.zone} ({block.device})"
        print(json.dumps({"block": index, "state": block.state, "zone": block.zone, "device": block.device})
              if as_json else text)
        return EXIT_OK
    planner = Planner(machine, settings)
    before = [i for i in planner.offline_blocks() if i < index]
    planner.plan(before)
    decision = planner.decide(index)
    if as_json:
        print(json.dumps(Outcome(decision, decision.zone, None).as_json(), indent=1))
        return EXIT_OK
    print(f"memory{index} ({decision.device}, node {block.node}) -> {decision.zone}")
    if before:
        print(f"  (after the {len(before)} offline blocks below it, as `online` would do them first)")
    print(f"  {decision.reason}")
    for c in decision.checks:
        where = "system" if c.node is None else f"node {c.node}"
        print(f"  {where}: early kernel {c.kernel_early} pages, movable {c.movable}, other dynamic groups "
              f"need {c.req_kernel_early} early kernel pages and hold {c.dyn_movable} Movable, "
              f"own kernel {c.group_kernel}, asking {c.nr_pages}, limit {c.limit}: {'ok' if c.ok else 'no'}")
    return EXIT_OK
