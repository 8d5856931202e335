"""The state directory (/run/memonlined): what one daemon of a boot hands on
to the next one of the same boot (a restart, a crash, an upgrade).

- `lock`: one daemon at a time (an flock).
- `handled.json`: the block instances memonlined onlined or saw online. An
  offline block recorded here was offlined by an administrator: leave it.
  A block is one instance of a sysfs directory: a block removed and added
  again at the same index (virtio-mem re-plugging, a DIMM replaced) is a
  new directory with a new inode number (kernfs numbers its nodes without
  reuse), so it is new memory to online.
- `auto_online_blocks.json`: the value the take-over replaced, written
  before the change, so that whoever stops last puts it back.
- `facts.json`: what discovery learned in this boot and cannot read again:
  virtio-mem units from the kernel log, which wraps; without an E820
  table, which blocks are boot memory.

Every record names the boot it belongs to (/proc/sys/kernel/random/boot_id);
a record of another boot (a state directory that is not on tmpfs) is ignored.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

log = logging.getLogger(__name__)

HANDLED = "handled.json"
TAKE_OVER = "auto_online_blocks.json"
AUTO_ONLINE_VALUES = ("offline", "online", "online_kernel", "online_movable")
LEGACY_HANDLED = "handled"  # memonlined 0.1: block indexes, one a line, no boot


class StateError(Exception):
    """The state directory cannot be used (one line, naming it)."""


class StateDir:
    """PATH None: remember nothing (a dry run, or tests that want none)."""

    def __init__(self, path: str | None, boot_id: str | None):
        self.path = path
        self.boot_id = boot_id
        self._lock_fd: int | None = None
        self._failed_saves = set()

    def lock(self) -> bool:
        """Take the instance lock; False when another daemon holds it."""
        if self.path is None:
            return True
        try:
            os.makedirs(self.path, mode=0o755, exist_ok=True)
            fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise StateError(f"{self.path}: cannot use as the state directory: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def load(self, name: str) -> dict | None:
        """The record NAME if it belongs to this boot; None otherwise."""
        if self.path is None:
            return None
        try:
            with open(self._file(name), encoding="utf-8") as f:
                import json  # here: the one-shot commands need no state
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.warning("%s: unreadable (%s); ignored", self._file(name), getattr(e, "strerror", None) or e)
            return None
        if not isinstance(record, dict):
            log.warning("%s: not a memonlined record; ignored", self._file(name))
            return None
        if record.get("boot_id") != self.boot_id:
            log.info("%s: from an earlier boot; ignored", self._file(name))
            return None
        return record

    def taken_over(self) -> str | None:
        """What auto_online_blocks was before a memonlined of this boot set it
        to offline and has not put back yet (daemon.TakeOver; doctor)."""
        record = self.load(TAKE_OVER)
        original = record.get("original") if record else None
        return original if original in AUTO_ONLINE_VALUES[1:] else None

    def save(self, name: str, record: dict) -> bool:
        """Write the record atomically. A failure (ENOSPC on /run, say) is
        logged once per record and returns False: the daemon goes on onlining."""
        if self.path is None:
            return True
        path = self._file(name)
        tmp = path + ".tmp"
        try:
            # dumps, not dump: dump takes the pure-Python encoder and writes
            # piece by piece (under TCG, the daemon's biggest cost per batch).
            import json
            data = json.dumps({"boot_id": self.boot_id, **record}).encode()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            if name not in self._failed_saves:
                self._failed_saves.add(name)
                log.error("%s: cannot save: %s; a restarted memonlined may take blocks offlined "
                          "by an administrator for new ones", path, e.strerror or e)
            return False
        self._failed_saves.discard(name)
        return True

    def remove(self, name: str) -> None:
        if self.path is None:
            return
        try:
            os.unlink(self._file(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("%s: cannot remove: %s", self._file(name), e.strerror)

    def legacy_handled(self) -> dict[int, int | None] | None:
        """The handled blocks of memonlined 0.1 (kept in /run, so of this boot;
        instances unknown). Read on the upgrade; removed once handled.json
        is saved (Handled.save)."""
        if self.path is None:
            return None
        path = self._file(LEGACY_HANDLED)
        try:
            with open(path, encoding="ascii") as f:
                blocks = {int(w): None for w in f.read().split()}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            log.warning("%s: unreadable; ignored", path)
            return None
        log.info("%s: read the handled blocks of an earlier memonlined", path)
        return blocks


class Handled:
    """Block index -> the instance (inode number) memonlined saw online; None:
    an instance not known (an earlier version's record), taken as the same."""

    def __init__(self, state: StateDir):
        self.state = state
        self.blocks: dict[int, int | None] = {}
        self.dirty = False       # changed since the last save
        self._legacy = False     # read from memonlined 0.1's file, to remove once saved
        record = state.load(HANDLED)
        if record is not None:
            try:
                self.blocks = {int(k): (None if v is None else int(v)) for k, v in record["blocks"].items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("%s: garbled; treating every offline block as not yet handled",
                            state._file(HANDLED))
        else:
            legacy = state.legacy_handled()
            self.blocks, self._legacy = legacy or {}, legacy is not None

    def same(self, index: int, instance: int | None) -> bool:
        """Is INDEX, as it is now (INSTANCE), the block memonlined saw online?"""
        if index not in self.blocks:
            return False
        known = self.blocks[index]
        return known is None or instance is None or known == instance

    def mark(self, index: int, instance: int | None) -> None:
        if index not in self.blocks or self.blocks[index] != instance:
            self.blocks[index] = instance
            self.dirty = True

    def forget(self, index: int) -> None:
        if self.blocks.pop(index, False) is not False:
            self.dirty = True

    def save(self) -> None:
        if self.state.save(HANDLED, {"blocks": {str(k): v for k, v in sorted(self.blocks.items())}}):
            self.dirty = False
            if self._legacy:
                self.state.remove(LEGACY_HANDLED)
                self._legacy = False

