"""Other onliners: udev rules that write memory block state."""

import os

from memonlined.backend import Backend
from memonlined.conflicts import find_udev_rules

REDHAT = '''# Memory hotadd request
SUBSYSTEM!="memory", GOTO="memory_hotplug_end"
ACTION!="add", GOTO="memory_hotplug_end"
CONST{arch}=="s390*", GOTO="memory_hotplug_end"
ENV{.state}="online"
CONST{virt}=="none", ENV{.state}="online_movable"
ATTR{state}=="offline", ATTR{state}="$env{.state}"
LABEL="memory_hotplug_end"
'''
SIMPLE = 'SUBSYSTEM=="memory", ACTION=="add", ATTR{state}=="offline", ATTR{state}="online"\n'
CPU_ONLY = 'SUBSYSTEM=="cpu", ACTION=="add", ATTR{online}="1"\n'


def tree(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            os.symlink("/dev/null", path)
        else:
            path.write_text(text)
    return Backend(str(tmp_path))


def test_finds_distribution_rules(tmp_path):
    found = find_udev_rules(tree(tmp_path, {
        "usr/lib/udev/rules.d/80-hotplug-cpu-mem.rules": SIMPLE,
        "usr/lib/udev/rules.d/50-cpu.rules": CPU_ONLY,
        "etc/udev/rules.d/40-vm-hotadd.rules": SIMPLE,
    }))
    assert [(c.path, c.line, c.value) for c in found] == [
        ("/etc/udev/rules.d/40-vm-hotadd.rules", 1, "online"),
        ("/usr/lib/udev/rules.d/80-hotplug-cpu-mem.rules", 1, "online")]
    assert found[0].advice().endswith("ln -s /dev/null /etc/udev/rules.d/40-vm-hotadd.rules")


def test_the_redhat_rule_writes_state_through_a_variable(tmp_path):
    (c,) = find_udev_rules(tree(tmp_path, {"usr/lib/udev/rules.d/40-redhat.rules": REDHAT}))
    assert (c.path, c.line) == ("/usr/lib/udev/rules.d/40-redhat.rules", 7)


def test_masked_and_overridden_rules_are_not_reported(tmp_path):
    assert find_udev_rules(tree(tmp_path, {
        "usr/lib/udev/rules.d/40-redhat.rules": REDHAT,
        "etc/udev/rules.d/40-redhat.rules": None,          # masked
        "lib/udev/rules.d/80-hotplug-cpu-mem.rules": SIMPLE,
        "etc/udev/rules.d/80-hotplug-cpu-mem.rules": "# emptied by the administrator\n",
    })) == []
