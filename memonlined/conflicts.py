"""Other onliners: udev rules that write memory block state (KERNEL-NOTES 5)."""

import os
import re
from dataclasses import dataclass
from typing import List

from . import backend as B

RULES_DIRS = ("usr/lib/udev/rules.d", "lib/udev/rules.d", "run/udev/rules.d", "etc/udev/rules.d")

# A line that assigns a block's state (ATTR{state}="online", or a variable as
# in RHEL's 40-redhat.rules) in a file about the memory subsystem: the
# distributions' rules skip other subsystems with SUBSYSTEM!="memory", GOTO=.
_ASSIGN_STATE = re.compile(r'ATTR\{state\}\s*=\s*"([^"]*)"')
_MEMORY = re.compile(r'SUBSYSTEM\s*[!=]=\s*"memory"')


@dataclass
class RuleConflict:
    path: str       # the rule file as seen on the system (/etc/udev/rules.d/...)
    line: int
    value: str      # what it writes

    def advice(self) -> str:
        name = os.path.basename(self.path)
        return (f"{self.path}:{self.line} onlines memory blocks ({self.value}) and races memonlined; "
                f"disable it with: ln -s /dev/null /etc/udev/rules.d/{name}")


def find_udev_rules(backend: B.Backend) -> List[RuleConflict]:
    """Rules that write memory block state. A file in /etc or /run masks one
    of the same name in /usr/lib or /lib, as udev does; a link to /dev/null
    disables it."""
    effective = {}
    for d in RULES_DIRS:  # later directories take precedence
        for name in backend.listdir(d):
            if name.endswith(".rules"):
                effective[name] = f"{d}/{name}"
    found = []
    for name, rel in sorted(effective.items()):
        target = backend.readlink(rel)
        if target == "/dev/null":
            continue
        try:
            text = backend.read(rel)
        except OSError:
            continue
        about_memory = bool(_MEMORY.search(text))
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            m = _ASSIGN_STATE.search(line)
            if m and about_memory:
                found.append(RuleConflict("/" + rel, lineno, m.group(1)))
    return found
