"""Carrying out decisions: the only place that writes to the kernel (block
state, the memory_hotplug parameters, auto_online_blocks).

A batch is decided and written one block at a time in ascending order; the
planner is told what really happened before it decides the next block, so a
fallback or someone else's onlining is taken into account. Dry-run is the
same path with every write replaced by a log line: a Writer is made dry once.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import time
from collections.abc import Callable

from .backend import AUTO_ONLINE, Backend, PARAMETERS, block_dir
from .parse import MOVABLE, ParseError, parse_state, parse_valid_zones
from .planner import Planner
from .policy import Decision

log = logging.getLogger(__name__)

# Results of one block.
ONLINED, FALLBACK, ALREADY_ONLINE, VANISHED, FAILED, DRY_RUN = (
    "onlined", "fallback", "already-online", "vanished", "failed", "dry-run")

# How long the decision lines of a batch may wait for its writes.
TELL_EVERY = 0.25
# A journal MESSAGE_ID for every decision, and one for conflicts with other onliners.
DECISION_MESSAGE_ID = "3f0b6c2e8d4a4f5bb1c9e7a2d5f81c40"
CONFLICT_MESSAGE_ID = "9a7d2e41c6b84d0f8e3a5b1c7f2d6e93"
# A device's figures after a batch (report.py).
FIGURES_MESSAGE_ID = "c4e81f0a9b2d47e6a35f6d7b8e9c0a12"


class Writer:
    """Every write memonlined makes, through the backend; DRY_RUN: log them instead."""

    def __init__(self, backend: Backend, dry_run: bool = False):
        self.backend = backend
        self.dry_run = dry_run

    def block_state(self, index: int, value: str) -> None:
        if self.dry_run:
            log.info("memory%d: would write %s to state", index, value)
            return
        self.backend.write_block_state(index, value)

    def setting(self, rel: str, value: str) -> None:
        if self.dry_run:
            log.info("would write %s to /%s", value, rel)
            return
        self.backend.write_setting(rel, value)


class Outcome(collections.namedtuple("Outcome", "decision zone result")):
    """What became of a DECISION: ZONE, where the block is now (the
    prediction in a dry-run), and the RESULT (None: not written)."""
    __slots__ = ()

    def as_json(self) -> dict:
        d = self.decision
        out = {"block": d.block, "zone": self.zone, "device": d.device, "reason": d.reason}
        if self.result is not None:
            out["result"] = self.result
        out["checks"] = [c._asdict() for c in d.checks]
        return out


def _fields(decision: Decision, zone: str | None, result: str, message_id=DECISION_MESSAGE_ID) -> dict:
    """Structured journal fields (the journal handler sends extra= keys as fields)."""
    return {"MESSAGE_ID": message_id, "BLOCK": decision.block, "DEVICE": decision.device,
            "ZONE": zone or "", "REASON": decision.reason, "RESULT": result}


def _reread(backend: Backend, index: int):
    """(state, valid_zones) of a block as it is now; None when it is gone."""
    d = block_dir(index)
    try:
        return parse_state(backend.read(f"{d}/state")), parse_valid_zones(backend.read(f"{d}/valid_zones"))
    except (OSError, ParseError):
        return None


def online_block(writer: Writer, decision: Decision, kernel_zone: str) -> "tuple[str | None, str]":
    """Write the decision. Returns (zone now, result)."""
    index = decision.block
    backend = writer.backend
    attempts = ["online_movable", "online_kernel"] if decision.movable else ["online_kernel"]
    for attempt in attempts:
        try:
            writer.block_state(index, attempt)
        except FileNotFoundError:
            return None, VANISHED
        except OSError as e:
            now = _reread(backend, index)
            if now is None:
                return None, VANISHED
            if now[0] != "offline":
                zone = now[1][0]
                log.warning("memory%d: onlined by someone else, to %s", index, zone,
                            extra=_fields(decision, zone, ALREADY_ONLINE, CONFLICT_MESSAGE_ID))
                return zone, ALREADY_ONLINE
            reason = (errno.errorcode.get(e.errno) or os.strerror(e.errno)) if e.errno else str(e)
            if attempt == "online_movable":
                log.warning("memory%d: online_movable failed (%s); falling back to online_kernel "
                            "(online memory beats wasted memory)", index, reason)
                continue
            log.error("memory%d: %s failed (%s); the block stays offline", index, attempt, reason,
                      extra=_fields(decision, None, FAILED))
            return None, FAILED
        # A write that succeeded onlined the block to Movable, or to the kernel
        # zone its valid_zones named (a block online already fails with EINVAL).
        zone = MOVABLE if attempt == "online_movable" else kernel_zone
        return zone, (ONLINED if attempt == attempts[0] else FALLBACK)
    return None, FAILED


def _tell(outcomes: "list[Outcome]") -> None:
    """The decision lines of blocks onlined (or, in a dry run, to be)."""
    if not log.isEnabledFor(logging.INFO):
        return  # the fields of 16384 lines nobody sees cost 2% of planning them
    for o in outcomes:
        d = o.decision
        if o.result in (ONLINED, FALLBACK):
            log.info("memory%d: onlined to %s (%s): %s", d.block, o.zone, d.device, d.reason,
                     extra=_fields(d, o.zone, o.result))
        elif o.result == DRY_RUN:
            log.info("memory%d: would online to %s (%s): %s", d.block, o.zone, d.device, d.reason,
                     extra=_fields(d, o.zone, o.result))


def online_blocks(writer: Writer, planner: Planner, indexes: list[int],
                  go_on: Callable[[object], bool] | None = None) -> list[Outcome]:
    """Decide and online INDEXES (offline blocks) in ascending order. GO_ON is
    asked before each block (the daemon pings its watchdog there, and says
    False to stop early)."""
    machine = planner.machine
    outcomes: list[Outcome] = []
    told, told_at = 0, time.monotonic()
    try:
        for index in sorted(indexes):
            block = machine.blocks.get(index)
            if block is None or block.online:
                continue
            if go_on is not None and not go_on(block):
                break
            decision = planner.decide(index)
            if writer.dry_run:
                zone, result = decision.zone, DRY_RUN
            else:
                zone, result = online_block(writer, decision, block.kernel_zone)
            if result == VANISHED:
                del machine.blocks[index]
                continue
            planner.commit(index, zone)
            outcomes.append(Outcome(decision, zone, result))
            # The lines wait for the batch's last write (TELL_EVERY in a long one):
            # what comes between two writes delays the next one, and a growing
            # virtio-mem device waits for its blocks to be online.
            if time.monotonic() - told_at >= TELL_EVERY:
                chunk, told, told_at = outcomes[told:], len(outcomes), time.monotonic()
                _tell(chunk)
    finally:
        _tell(outcomes[told:])
    return outcomes


def online_by_kernel(writer: Writer, indexes: list[int], go_on: Callable[[object], bool], refresh,
                     blocks) -> list[tuple[int, str | None, str]]:
    """Kernel mode: a plain `online` for each of INDEXES (offline blocks of
    BLOCKS, the model's) lets the kernel's own policy pick the zone; REFRESH
    re-reads a block after its write. Returns (block, zone, result) of each
    block tried."""
    results = []
    for index in indexes:
        if not go_on(blocks[index]):
            break
        try:
            writer.block_state(index, "online")
        except OSError as e:
            log.error("memory%d: online failed (%s); the block stays offline", index,
                      errno.errorcode.get(e.errno) or str(e))
            results.append((index, None, FAILED))
            continue
        block = blocks.get(index) if writer.dry_run else refresh(index)
        zone = block.zone if block is not None else None
        log.info("memory%d: the kernel onlined it to %s", index, zone or "?")
        results.append((index, zone, DRY_RUN if writer.dry_run else ONLINED))
    return results


def configure_kernel(writer: Writer, settings, params: "dict[str, str]") -> None:
    """Kernel mode: the cover letter's target usage, steps 2 and 3. PARAMS:
    the memory_hotplug parameters the kernel has. auto_movable_numa_aware
    exists only with CONFIG_NUMA, where it matters. Auto-onlining is turned
    on last, once the policy is in place. Raises OSError, having changed
    nothing that onlines memory."""
    writes = [("auto_movable_ratio", str(settings.ratio)),
              ("auto_movable_numa_aware", "Y" if settings.numa_aware else "N"),
              ("online_policy", "auto-movable")]
    for name, value in writes:
        if name not in params:
            if name == "auto_movable_numa_aware":
                continue
            raise OSError(errno.ENOENT, f"/{PARAMETERS}/{name} does not exist")
        if params[name] != value:
            writer.setting(f"{PARAMETERS}/{name}", value)
            log.info("kernel mode: wrote %s to /%s/%s", value, PARAMETERS, name)
    writer.setting(AUTO_ONLINE, "online")
    log.info("kernel mode: wrote online to /%s", AUTO_ONLINE)
