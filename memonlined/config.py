"""The configuration: an INI file (etc/memonlined.conf documents every key)
whose keys can each be overridden on the command line.

Errors are ConfigError with one line naming the file, the key and what was expected.
"""

from __future__ import annotations

import collections
import configparser
import logging
import os
import stat
from collections.abc import Callable

from .model import DAX, DIMM, VIRTIO_MEM
from .policy import OTHER, SETTINGS, ZONE_POLICIES, needs_userspace

MODES = ("userspace", "kernel", "auto")

log = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/memonlined/memonlined.conf"
OVERRIDE_KINDS = (DIMM, VIRTIO_MEM, DAX, OTHER)


class ConfigError(Exception):
    pass


# The whole configuration: the decision's Settings (policy.SETTINGS) and the
# daemon's keys (memonlined run), which change no decision.
DEFAULTS = {**SETTINGS, "mode": "userspace", "settle_ms": 0, "take_over_auto_online": True,
            "event_source": "kernel", "receive_buffer_mib": 16, "metrics_file": "off"}
Config = collections.namedtuple("Config", DEFAULTS, defaults=DEFAULTS.values())


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError("expected " + " | ".join(choices))
        return text
    return parse


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value
    return parse


def _metrics_path(text: str) -> str:
    if text != "off" and not os.path.isabs(text):
        raise ValueError("expected off or an absolute path")
    return text


def _bool(text: str) -> bool:
    value = configparser.ConfigParser.BOOLEAN_STATES.get(text.lower())
    if value is None:
        raise ValueError("expected yes or no")
    return value


# A key of the file: its [section], the parser of its value (raises
# ValueError), and the command-line option's metavar and help.
Key = collections.namedtuple("Key", "section parse metavar help")


# Every key of the file; each is also a command-line option (--numa-aware for numa_aware).
KEYS: dict[str, Key] = {
    "policy": Key("policy", _choice(*ZONE_POLICIES), "|".join(ZONE_POLICIES),
                  "how to pick the zone: the kernel's ratio policy, or all Movable, or all kernel"),
    "ratio": Key("policy", _int_range(0, 100000), "PERCENT",
                 "the largest MOVABLE:KERNEL ratio in percent (auto_movable_ratio); 0 = all kernel"),
    "numa_aware": Key("policy", _bool, "yes|no",
                      "also keep the ratio on each node (auto_movable_numa_aware)"),
    "kernel_floor_mib": Key("policy", _int_range(0, 1 << 30), "MIB",
                            "per node: hot-plugged memory goes to a kernel zone until the node has this much "
                            "hot-plugged kernel memory"),
    "unmovable_balloon": Key("policy", _choice("warn", "kernel"), "warn|kernel",
                             "while a balloon driver whose pages cannot migrate is bound (hv_balloon, Xen's, or "
                             "without balloon compaction): warn only, or hot-plugged memory to kernel zones"),
    "mode": Key("daemon", _choice(*MODES), "|".join(MODES),
                "userspace: memonlined decides and writes; kernel: configure the kernel's own policy "
                "(5.15+); auto: kernel mode where the kernel can do what the configuration asks"),
    "settle_ms": Key("daemon", _int_range(0, 10000), "MS",
                     "gather add events this long before deciding, so a device is decided as a whole"),
    "take_over_auto_online": Key("daemon", _bool, "yes|no",
                                 "set auto_online_blocks to offline at start (put back at stop)"),
    "event_source": Key("daemon", _choice("udev", "kernel"), "udev|kernel",
                        "uevents from udevd, or straight from the kernel (systems without udevd)"),
    "receive_buffer_mib": Key("daemon", _int_range(1, 1024), "MIB",
                              "uevent socket receive buffer; too small loses events in a burst"),
    "metrics_file": Key("daemon", _metrics_path, "off|PATH",
                        "write the figures in the Prometheus text format to PATH (node_exporter's textfile "
                        "collector), replaced on every change"),
}


def parse_override(key: str, value: str, where: str) -> "tuple[str, str]":
    """One [overrides] line: a device kind or device name = a zone policy."""
    if not key or any(c.isspace() for c in key):
        raise ConfigError(f"{where}: invalid override key {key!r}: expected a device kind "
                          f"({', '.join(OVERRIDE_KINDS)}) or a device name such as PNP0C80:00, virtio5, dax0.0")
    if value not in ZONE_POLICIES:
        raise ConfigError(f"{where}: invalid value {value!r} for override {key}: expected "
                          + " | ".join(ZONE_POLICIES))
    return key, value


def load(path: str | None, cli: dict[str, str], cli_overrides=()) -> Config:
    """The configuration from the file at PATH (None: the default path, which may be missing)
    with the command line's values on top."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    values: dict[str, object] = {}
    overrides: dict[str, str] = {}
    if os.path.exists(path) or explicit:
        _read_file(path, values, overrides)
    for name, text in cli.items():
        try:
            values[name] = KEYS[name].parse(text)
        except ValueError as e:
            raise ConfigError(f"--{name.replace('_', '-')}: invalid value {text!r}: {e}") from None
    for item in cli_overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--override: invalid value {item!r}: expected KIND-OR-DEVICE=POLICY")
        k, v = parse_override(key.strip(), value.strip(), "--override")
        overrides[k] = v
    return Config(overrides=overrides, **values)


def _read_file(path: str, values: dict[str, object], overrides: dict[str, str]) -> None:
    # ":" appears in device names (PNP0C80:00), so only "=" separates; keep case.
    # "value  # why" is a comment after the value (no value holds a "#").
    parser = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=("#", ";"), interpolation=None,
                                       default_section="\0none")
    parser.optionxform = str
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except configparser.Error as e:
        raise ConfigError(f"{path}: {' '.join(str(e).split())}") from None
    # default_section is no name: a [DEFAULT] section is an unknown section below.
    if stat.S_ISREG(mode) and mode & stat.S_IWOTH:
        log.warning("%s: writable by every user; anyone could change how memory is onlined", path)
    for section in parser.sections():
        if section == "overrides":
            for key, value in parser.items(section):
                k, v = parse_override(key, value.strip(), f"{path}: [overrides]")
                overrides[k] = v
            continue
        if section not in {k.section for k in KEYS.values()}:
            raise ConfigError(f"{path}: invalid section [{section}]: expected "
                              + ", ".join(f"[{s}]" for s in sorted({k.section for k in KEYS.values()} | {"overrides"})))
        for key, value in parser.items(section):
            spec = KEYS.get(key)
            if spec is None or spec.section != section:
                raise ConfigError(f"{path}: invalid key {key} in [{section}]")
            try:
                values[key] = spec.parse(value.strip())
            except ValueError as e:
                raise ConfigError(f"{path}: invalid value {value.strip()!r} for {key} in [{section}]: {e}") from None


def resolve_mode(has_policy: bool, settings: Config) -> "tuple[str, str]":
    """The mode in force and why. HAS_POLICY: the kernel has the auto-movable policy (5.15+)."""
    if settings.mode == "kernel":
        if not has_policy:
            return "userspace", "mode kernel asked for, but this kernel has no auto-movable policy (before 5.15)"
        return "kernel", "mode kernel configured"
    if settings.mode == "auto":
        if not has_policy:
            return "userspace", "mode auto: this kernel has no auto-movable policy (before 5.15)"
        if needs_userspace(settings):
            return "userspace", ("mode auto: the configuration asks for what only memonlined can do "
                                 "(a policy other than auto-movable, a kernel floor, overrides or "
                                 "unmovable_balloon = kernel)")
        return "kernel", "mode auto: the kernel has the auto-movable policy and the configuration needs nothing more"
    return "userspace", "mode userspace configured"
