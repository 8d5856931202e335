"""The command line: the composition root. It builds the backend and the
settings, hands them to discovery, the planner and the writer, and prints.

Exit codes: 0 success; 1 partial failure (some block could not be onlined);
2 usage error; 3 configuration error; 4 system data error (global data such
as /proc/zoneinfo missing or garbled: nothing was written).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys

from . import __version__
from .backend import DAX_DEVICES, Backend, PARAMETERS
from . import config
from .config import resolve_mode
from .conflicts import BOOT_OFFLINE_ADVICE, KERNEL_ONLINES, RuleConflict, find_conflicts
from .discover import SystemDataError, discover, memory_now
from .model import DAX, Machine
from .parse import format_size
from .planner import Planner
from .policy import Settings, movable_headroom
from . import report
from .state import StateDir, StateError
from .writer import CONFLICT_MESSAGE_ID, FAILED, Outcome, Writer, online_blocks

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
    run = sub.add_parser("run", help="the daemon: online blocks offline at start, then every added block")
    run.add_argument("--dry-run", action="store_true", help="decide and log, write nothing")
    run.add_argument("--state-dir", default="/run/memonlined", metavar="DIR",
                     help="where the blocks handled in this boot are remembered (default /run/memonlined)")
    doctor = sub.add_parser("doctor", help="everything worth knowing: kernel, policy, config, devices, other onliners")
    doctor.add_argument("--state-dir", metavar="DIR",
                        help="the running daemon's state directory (default: run/memonlined under the root)")
    return p


def stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("memonlined: %(levelname)s: %(message)s"))
    return handler


def setup_logging(level: str) -> None:
    """The journal with structured fields under systemd; stderr otherwise."""
    handler = None
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        from .notify import JournalHandler
        try:
            handler = JournalHandler("memonlined", stderr_handler())
        except OSError:  # no journald listening
            pass
    if handler is None:
        handler = stderr_handler()
    # On memonlined's own logger, replacing the one an earlier main() set up
    # (the tests call main() many times); records still reach the root.
    logger = logging.getLogger("memonlined")
    for old in [h for h in logger.handlers if getattr(h, "memonlined", False)]:
        logger.removeHandler(old)
        old.close()
    handler.memonlined = True
    logger.addHandler(handler)
    logger.setLevel(level.upper())


def main(argv: list[str] | None = None, backend: Backend | None = None, monitor=None,
         notifier=None) -> int:
    """The composition root. BACKEND replaces the one --root would build (the
    tests' fake kernel), MONITOR the uevent source, NOTIFIER systemd's."""
    try:
        return _main(argv, backend, monitor, notifier)
    except BrokenPipeError:  # `memonlined status | head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


def _main(argv, backend, monitor, notifier) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    backend = backend or Backend(args.root)
    if args.command == "capture":
        from .capture import CaptureError, capture
        try:
            count = capture(backend, args.out)
        except CaptureError as e:
            log.error("%s", e)
            return EXIT_USAGE
        except OSError as e:
            log.error("%s: capture failed: %s", e.filename or args.out, e.strerror or e)
            return EXIT_SYSTEM
        print(f"captured {count} files into {args.out}")
        return EXIT_OK
    cli_values = {name: getattr(args, "key_" + name) for name in config.KEYS
                  if getattr(args, "key_" + name) is not None}

    def load_settings():
        return config.load(args.config, cli_values, args.override)

    try:
        settings = load_settings()
    except config.ConfigError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    if args.command == "run":
        try:
            return run_daemon(backend, settings, load_settings, args, monitor, notifier)
        except (SystemDataError, StateError) as e:
            log.error("%s", e)
            return EXIT_SYSTEM
    try:
        machine = discover(backend).machine
    except SystemDataError as e:
        log.error("%s", e)
        return EXIT_SYSTEM
    for warning in machine.warnings:
        log.warning("%s", warning)
    if args.command == "online":
        return cmd_online(backend, machine, settings, args.dry_run, args.json)
    if args.command == "status":
        return cmd_status(backend, machine, settings, args.json)
    if args.command == "doctor":
        taken_over = StateDir(args.state_dir or backend.path("run/memonlined"), backend.boot_id()).taken_over()
        return cmd_doctor(backend, machine, settings, args.config, taken_over)
    return cmd_explain(machine, settings, args.block, args.json)


def _auto_online_note(machine: Machine) -> None:
    if machine.auto_online_blocks not in (None, "offline"):
        log.warning(KERNEL_ONLINES + " (auto_online_blocks=%s): "
                    "new blocks are online before memonlined sees them", machine.auto_online_blocks)


def cmd_online(backend: Backend, machine: Machine, settings: Settings, dry_run: bool, as_json: bool) -> int:
    _auto_online_note(machine)
    planner = Planner(machine, settings)
    outcomes = online_blocks(Writer(backend, dry_run), planner, planner.offline_blocks())
    if not outcomes:
        log.info("no offline memory blocks: nothing to do")
    if as_json:
        import json  # only here: `online` at boot need not load it
        # One decision a line, from one call of the C encoder (a call per
        # decision costs as much again): '}, {"block": ' can only fall between
        # two decisions ("block" is their first key; quotes in strings are escaped).
        text = json.dumps({"decisions": [o.as_json() for o in outcomes]})
        print(text.replace('}, {"block": ', '},\n {"block": '))
    else:
        for o in outcomes:
            print(f"memory{o.decision.block}\t{o.zone or '-'}\t{o.result}\t{o.decision.device}\t{o.decision.reason}")
    return EXIT_PARTIAL if any(o.result == FAILED for o in outcomes) else EXIT_OK


def _ranges(machine: Machine, choices: dict) -> list[dict]:
    """Blocks merged into lsmem-style ranges of equal state, zone, node and device."""
    rows: list[dict] = []
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


def _nodes(machine: Machine, settings: Settings, devices, available: int | None) -> list[dict]:
    """Per node: the ratio's counters as they are (before the planner's
    what-if) and what of its hot-plugged memory could be given back."""
    mib = lambda pages: pages * machine.page_size >> 20  # noqa: E731
    nodes = []
    for h in report.node_figures(devices, available, machine.nodes):
        nid, n = h.node, machine.node(h.node)
        nodes.append({"node": nid, "early_kernel_mib": mib(n.kernel_early), "movable_mib": mib(n.movable),
                      "hotplugged_kernel_mib": mib(n.hotplugged_kernel), "ratio": settings.ratio,
                      "numa_aware": settings.numa_aware,
                      "movable_headroom_mib": mib(movable_headroom(machine, settings, nid)),
                      "hotplugged_bytes": {"movable": h.movable, "kernel": h.kernel, "offline": h.offline},
                      "removable_bytes": h.removable, "unpluggable_now_bytes": h.unpluggable_now})
    return nodes


def _dax_state(backend: Backend, group) -> str:
    """7.3's dax state file, which onlines a whole dax/kmem device in one
    write: memonlined does not use it, and takes what it onlined for
    memory onlined by someone else."""
    if group.kind != DAX:
        return ""
    try:
        state = backend.read(f"{DAX_DEVICES}/{group.name}/state").strip()
    except OSError:
        return ""
    return f"; dax state file: {state} (a write to it onlines the whole device, memonlined leaves it be)"


def _balloon_line(machine: Machine, b) -> str:
    inflated = "" if b.inflated_pages is None else f", {format_size(b.inflated_pages * machine.page_size)} inflated"
    migrates = {True: "migrate", False: "cannot migrate", None: "may migrate or not (no balloon counters in "
                "/proc/vmstat)"}[b.migrates]
    return f"{b.name}, pages {migrates}{inflated}"


def cmd_status(backend: Backend, machine: Machine, settings: Settings, as_json: bool) -> int:
    import json
    _auto_online_note(machine)
    usage = memory_now(backend)
    available = usage.get("memory_available")
    devices = report.device_figures(machine)
    nodes = _nodes(machine, settings, devices, available)
    # The planner's what-if runs on a copy: the table shows what is.
    choices = {d.block: d.zone for d in Planner(copy.deepcopy(machine), settings).plan()}
    ranges = _ranges(machine, choices)
    now = report.unpluggable_now(devices, available)
    balloon = report.balloon_warning(machine)
    if balloon:
        log.warning("%s", balloon)
    if as_json:
        print(json.dumps({"memory": ranges, "nodes": nodes, "block_size": machine.block_size, **usage,
                          "devices": [{"device": d.device, "kind": d.kind, "node": d.node,
                                       "movable_bytes": d.movable, "kernel_bytes": d.kernel,
                                       "offline_bytes": d.offline, "removable_bytes": d.removable}
                                      for d in devices],
                          "unpluggable_now_bytes": now, "balloons": report.balloons_json(machine),
                          "auto_online_blocks": machine.auto_online_blocks,
                          "kernel_params": machine.kernel_params}, indent=1))
        return EXIT_OK
    _print_table(ranges)
    print(f"Memory block size: {format_size(machine.block_size)}; "
          f"auto_online_blocks: {machine.auto_online_blocks or 'unknown'}; ratio {settings.ratio}%, "
          f"numa-aware {'yes' if settings.numa_aware else 'no'}, policy {settings.policy}"
          + (f"; memmap_on_memory: {machine.kernel_params['memmap_on_memory']}"
             if "memmap_on_memory" in machine.kernel_params else ""))
    if usage:
        print(f"Memory: total {format_size(usage['memory_total'])}, available {format_size(available)}")
    for n in nodes:
        print(f"Node {n['node']}: early kernel {n['early_kernel_mib']}M, movable {n['movable_mib']}M, "
              f"hot-plugged kernel {n['hotplugged_kernel_mib']}M, could take {n['movable_headroom_mib']}M "
              f"more Movable")
    for d in devices:
        print(f"Device {d.line()}")
    if devices and now is not None:
        print(f"Could be given back now: {format_size(now)} of {format_size(sum(d.removable for d in devices))} "
              f"removable (MemAvailable {format_size(available)}; an estimate: see memonlined(8))")
    for b in machine.balloons:
        print(f"Balloon {_balloon_line(machine, b)}")
    return EXIT_OK


def _print_table(ranges: list[dict]) -> None:
    header = ("RANGE", "SIZE", "STATE", "BLOCK", "ZONE", "NODE", "DEVICE", "WOULD GET")
    rows = [(r["range"], r["size"], r["state"], r["block"], r["zones"] or "-", str(r["node"]),
             r["device"], r["choice"] or "") for r in ranges]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print()


def cmd_explain(machine: Machine, settings: Settings, index: int, as_json: bool) -> int:
    import json
    block = machine.blocks.get(index)
    if block is None:
        log.error("memory%d: no such block (or it was skipped)", index)
        return EXIT_USAGE
    figures = next((d for d in report.device_figures(machine) if block.group and d.device == block.group.name),
                   None)
    if block.online:
        text = f"memory{index} is {block.state} in {block.zone} ({block.device})"
        if figures is not None:
            text += f"\n  device {figures.line()}"
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
    if figures is not None:
        print(f"  device {figures.line()}")
    for c in decision.checks:
        where = "system" if c.node is None else f"node {c.node}"
        print(f"  {where}: early kernel {c.kernel_early} pages, movable {c.movable}, other dynamic groups "
              f"need {c.req_kernel_early} early kernel pages and hold {c.dyn_movable} Movable, "
              f"own kernel {c.group_kernel}, asking {c.nr_pages}, limit {c.limit}: {'ok' if c.ok else 'no'}")
    return EXIT_OK


def run_daemon(backend: Backend, settings: config.Config, load_settings, args, monitor=None, notifier=None) -> int:
    from .daemon import Daemon
    from .notify import Systemd
    from .uevents import make_monitor

    # The daemon's own start-up reads everything; the mode needs one file.
    mode, why = resolve_mode(backend.exists(f"{PARAMETERS}/online_policy"), settings)
    log.info("mode %s: %s", mode, why)
    for conflict in find_conflicts(backend):
        log.warning("%s", conflict.advice(), extra={"MESSAGE_ID": CONFLICT_MESSAGE_ID, "RULE": conflict.path})
    if monitor is None:
        try:
            monitor = make_monitor(settings.event_source, settings.receive_buffer_mib)
        except ImportError:
            log.error("event_source = udev needs pyudev: pip install 'memonlined[daemon]'")
            return EXIT_CONFIG
        except OSError as e:
            log.error("cannot open the kernel's uevent socket (%s): %s", settings.event_source, e.strerror)
            return EXIT_SYSTEM
    daemon = Daemon(backend, settings, monitor, reload=load_settings, notifier=notifier or Systemd(),
                    state_dir=args.state_dir, dry_run=args.dry_run, kernel_mode=mode == "kernel")
    return daemon.run()


def cmd_doctor(backend: Backend, machine: Machine, settings: config.Config, config_path: str | None,
               taken_over: str | None = None) -> int:
    """TAKEN_OVER: what auto_online_blocks was before a memonlined of this boot set it to offline."""
    params = machine.kernel_params
    mode, why = resolve_mode("online_policy" in params, settings)
    print(f"kernel: {machine.kernel_release or 'unknown'}; in-kernel auto-movable policy: "
          + ("yes (online_policy={}, ratio={}, numa_aware={})".format(
              params.get("online_policy"), params.get("auto_movable_ratio"), params.get("auto_movable_numa_aware"))
             if "online_policy" in params else "no (before 5.15)"))
    print(f"auto_online_blocks: {machine.auto_online_blocks or 'unknown'}"
          + ("  <- " + KERNEL_ONLINES if machine.auto_online_blocks not in
             (None, "offline") else ""))
    if taken_over is not None and machine.auto_online_blocks == "offline":
        # After the take-over the file says offline, yet the kernel onlined what came before it.
        print(f"  set by a memonlined of this boot, which took it over from {taken_over}: {KERNEL_ONLINES} "
              "until memonlined starts (memory present at boot was placed by the kernel)")
    if machine.auto_online_blocks not in (None, "offline") or taken_over is not None:
        print("  " + BOOT_OFFLINE_ADVICE)
    print(f"configuration: {config_path or config.DEFAULT_PATH}"
          + ("" if config_path or os.path.exists(config.DEFAULT_PATH) else " (absent: built-in defaults)"))
    for name in config.KEYS:
        print(f"  {name} = {getattr(settings, name)}")
    for key, value in sorted(settings.overrides.items()):
        print(f"  override {key} = {value}")
    print(f"mode in force: {mode} ({why})")
    print(f"memory blocks: {len(machine.blocks)} of {format_size(machine.block_size)}, "
          f"{sum(not b.online for b in machine.blocks.values())} offline")
    for name, group in sorted(machine.groups.items()):
        blocks = [b.index for b in machine.blocks.values() if b.group is group]
        size = (f"unit {format_size(group.unit_pages * machine.page_size)}" if group.dynamic
                else f"size {format_size(group.max_pages * machine.page_size)}")
        print(f"device {name}: {group.kind}, node {group.node}, {size}, {len(blocks)} blocks, "
              f"kernel {format_size(group.kernel_pages * machine.page_size)}, "
              f"movable {format_size(group.movable_pages * machine.page_size)}" + _dax_state(backend, group))
    for b in machine.balloons:
        print(f"balloon: {_balloon_line(machine, b)}")
    if not machine.balloons:
        print("no balloon driver is bound")
    balloon = report.balloon_warning(machine)
    if balloon:
        print(f"warning: {balloon} (unmovable_balloon = {settings.unmovable_balloon}"
              + ("; no effect in kernel mode" if mode == "kernel" and settings.unmovable_balloon == "kernel" else "")
              + ")")
    conflicts = find_conflicts(backend)
    for conflict in conflicts:
        print("conflict: " + conflict.advice())
    if not any(isinstance(c, RuleConflict) for c in conflicts):
        print("no udev rule onlines memory blocks")
    for warning in machine.warnings:
        print("warning: " + warning)
    return EXIT_OK
