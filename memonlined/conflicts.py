"""Other onliners: udev rules that write memory block state (KERNEL-NOTES 5),
and daxctl set up to online the memory of the dax devices it reconfigures."""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator

from .backend import Backend

# The kernel itself is the first other onliner: auto_online_blocks other than offline.
KERNEL_ONLINES = "the kernel onlines hot-plugged memory itself"
BOOT_OFFLINE_ADVICE = ("to keep the kernel from onlining memory itself before memonlined starts, boot with "
                       "memhp_default_state=offline: add it to GRUB_CMDLINE_LINUX in /etc/default/grub, "
                       "then run update-grub")

RULES_DIRS = ("usr/lib/udev/rules.d", "lib/udev/rules.d", "run/udev/rules.d", "etc/udev/rules.d")

# A line that assigns a block's state (ATTR{state}="online", or a variable as
# in RHEL's 40-redhat.rules) in a file about the memory subsystem: the
# distributions' rules skip other subsystems with SUBSYSTEM!="memory", GOTO=.
_ASSIGN_STATE = re.compile(r'ATTR\{state\}\s*=\s*"([^"]*)"')
_MEMORY = re.compile(r'SUBSYSTEM\s*[!=]=\s*"memory"')


class RuleConflict(collections.namedtuple("RuleConflict", "path line value")):
    """A udev rule that onlines memory: PATH as seen on the system
    (/etc/udev/rules.d/...), its LINE, the VALUE it writes."""
    __slots__ = ()

    def advice(self) -> str:
        name = os.path.basename(self.path)
        return (f"{self.path}:{self.line} onlines memory blocks ({self.value}) and races memonlined; "
                f"disable it with: ln -s /dev/null /etc/udev/rules.d/{name}")


def _effective_rules(backend: Backend) -> Iterator[tuple[str, str]]:
    """(path, text) of the udev rule files in effect. A file in /etc or /run
    masks one of the same name in /usr/lib or /lib, as udev does; a link to
    /dev/null disables it."""
    effective = {}
    for d in RULES_DIRS:  # later directories take precedence
        for name in backend.listdir(d):
            if name.endswith(".rules"):
                effective[name] = f"{d}/{name}"
    for name, rel in sorted(effective.items()):
        if backend.readlink(rel) == "/dev/null":
            continue
        try:
            yield rel, backend.read(rel)
        except OSError:
            continue


def find_udev_rules(backend: Backend) -> list[RuleConflict]:
    """Rules in effect that write memory block state."""
    return _rule_conflicts(_effective_rules(backend))


def _rule_conflicts(rules) -> list[RuleConflict]:
    found = []
    for rel, text in rules:
        about_memory = bool(_MEMORY.search(text))
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            m = _ASSIGN_STATE.search(line)
            if m and about_memory:
                found.append(RuleConflict("/" + rel, lineno, m.group(1)))
    return found


# daxctl's udev rule (90-daxctl-device.rules) has `daxctl reconfigure-device
# -C` run for every new dax device (upstream through daxdev-reconfigure@.service):
# it reconfigures the devices named in daxctl.conf.d, and onlines their memory
# itself (to Movable) unless a section says `online = false`. Debian 12's rule
# runs `daxctl -C`, which daxctl 76 refuses (unknown option): no conflict.
DAXCTL_CONF_DIR = "etc/daxctl.conf.d"
_DAXCTL_CHECK_CONFIG = re.compile(r"daxctl reconfigure-device\b[^\n]*\s(-C|--check-config)\b|daxdev-reconfigure@")


class DaxctlConflict(collections.namedtuple("DaxctlConflict", "path line section")):
    """A daxctl configuration file (PATH) whose [reconfigure-device ...]
    SECTION, at LINE, onlines a dax device's memory."""
    __slots__ = ()

    def advice(self) -> str:
        return (f"{self.path}:{self.line} [{self.section}] has daxctl online the dax device's memory itself "
                f"and race memonlined; add 'online = false' to that section")


def _false(value: str) -> bool:
    # daxctl's conf_string_to_bool(): only the first character counts.
    return value[:1] in ("f", "F", "n", "N", "0")


def _daxctl_conflicts(backend: Backend, rules) -> list[DaxctlConflict]:
    """daxctl configuration sections that turn a dax device into system RAM
    and online it, when a udev rule in RULES has daxctl act on them."""
    if not any(_DAXCTL_CHECK_CONFIG.search(text) for _, text in rules):
        return []
    found = []
    for name in sorted(backend.listdir(DAXCTL_CONF_DIR)):
        if not name.endswith(".conf"):
            continue
        rel = f"{DAXCTL_CONF_DIR}/{name}"
        try:
            text = backend.read(rel)
        except OSError:
            continue
        sections = []  # [line, name, {key: value}]
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                sections.append([lineno, line[1:-1].strip(), {}])
            elif "=" in line and sections:
                key, value = line.split("=", 1)
                sections[-1][2][key.strip().lower()] = value.strip().strip('"')
        for lineno, section, keys in sections:
            if (section.split()[:1] == ["reconfigure-device"] and keys.get("mode") == "system-ram"
                    and not _false(keys.get("online", "true"))):
                found.append(DaxctlConflict("/" + rel, lineno, section))
    return found


def find_conflicts(backend: Backend) -> list[RuleConflict | DaxctlConflict]:
    """Every other onliner: udev rules, then daxctl configuration."""
    rules = list(_effective_rules(backend))  # each rule file read once
    return [*_rule_conflicts(rules), *_daxctl_conflicts(backend, rules)]
