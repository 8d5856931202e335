"""Other onliners: udev rules that write memory block state."""

import os

from memonlined.backend import Backend
from memonlined.conflicts import find_conflicts, find_udev_rules

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


DAXCTL_RULE = ('ACTION=="add", SUBSYSTEM=="dax", TAG+="systemd",\\\n'  # upstream ndctl's
               '  PROGRAM="/usr/bin/systemd-escape -p --template=daxdev-reconfigure@.service $env{DEVNAME}",\\\n'
               '  ENV{SYSTEMD_WANTS}="$result"\n')
# Debian 12's: daxctl 76 rejects -C as a top-level option (seen in a bookworm guest).
DEBIAN_DAXCTL_RULE = 'ACTION=="add", SUBSYSTEM=="dax",\\\n  RUN+="/usr/bin/daxctl -C $env{DEVNAME}"\n'
DAXCTL_CONF = '''# daxctl.conf.d example
[reconfigure-device pmem0]
nvdimm.uuid = ed93e918-e165-49d8-921d-383d7b9660c5
mode = system-ram
%s
[reconfigure-device pmem1]
nvdimm.uuid = 0b7a5f3e-0000-4000-8000-000000000001
mode = devdax
'''


def test_daxctl_set_up_to_online_dax_memory_itself(tmp_path):
    found = find_conflicts(tree(tmp_path, {"lib/udev/rules.d/90-daxctl-device.rules": DAXCTL_RULE,
                                           "etc/daxctl.conf.d/pmem.conf": DAXCTL_CONF % "movable = false"}))
    assert [(c.path, c.line, c.section) for c in found] == [
        ("/etc/daxctl.conf.d/pmem.conf", 2, "reconfigure-device pmem0")]  # online is daxctl's default
    assert "online = false" in found[0].advice()


def test_daxctl_told_not_to_online_or_not_run_by_udev_is_no_conflict(tmp_path):
    for online in ("online = false", "online = no", "online=0"):
        conf = {"etc/daxctl.conf.d/pmem.conf": DAXCTL_CONF % online}
        assert find_conflicts(tree(tmp_path / online, {"lib/udev/rules.d/90-daxctl-device.rules": DAXCTL_RULE,
                                                       **conf})) == []
    conf = {"etc/daxctl.conf.d/pmem.conf": DAXCTL_CONF % "online = true"}
    assert len(find_conflicts(tree(tmp_path / "on", {"lib/udev/rules.d/90-daxctl-device.rules": DAXCTL_RULE,
                                                     **conf}))) == 1
    # A rule that runs reconfigure-device -C itself counts; Debian 12's broken one does not.
    rule = 'SUBSYSTEM=="dax", ACTION=="add", RUN+="/usr/bin/daxctl reconfigure-device -C $kernel"\n'
    assert len(find_conflicts(tree(tmp_path / "direct", {"etc/udev/rules.d/90-dax.rules": rule, **conf}))) == 1
    assert find_conflicts(tree(tmp_path / "debian", {"lib/udev/rules.d/90-daxctl-device.rules": DEBIAN_DAXCTL_RULE,
                                                     **conf})) == []
    # The rule masked: nothing runs daxctl -C.
    assert find_conflicts(tree(tmp_path / "masked", {"lib/udev/rules.d/90-daxctl-device.rules": DAXCTL_RULE,
                                                     "etc/udev/rules.d/90-daxctl-device.rules": None,
                                                     **conf})) == []
