"""Trees recorded in real guests (tests/data/record.py): memonlined's dry-run
prediction must equal what the real kernel's auto-movable policy then did in
that guest, block for block."""

import json
import os

import pytest

from kernelbackend import DATA, memonlined
from memonlined.backend import Backend
from memonlined.discover import discover


def scenarios(policy):
    out = []
    for name in sorted(os.listdir(DATA)):
        path = os.path.join(DATA, name, "kernel-layout.json")
        if os.path.exists(path) and os.path.exists(os.path.join(DATA, name, "proc", "zoneinfo")):
            with open(path) as f:
                meta = json.load(f)
            if meta.get("policy") == policy:
                out.append(pytest.param(name, meta, id=name))
    return out


@pytest.mark.parametrize("name, meta", scenarios("auto-movable"))
def test_prediction_equals_the_real_kernel(name, meta):
    root = os.path.join(DATA, name)
    rc, out = memonlined(root, "--ratio", str(meta["ratio"]), "--numa-aware", "yes" if meta["numa_aware"] else "no",
                         "online", "--dry-run", "--json")
    assert rc == 0
    predicted = {str(d["block"]): d["zone"] for d in json.loads(out)["decisions"]}
    offline = {str(i) for i, b in discover(Backend(root)).machine.blocks.items() if b.state == "offline"}
    assert predicted.keys() == offline and offline
    assert predicted == {i: meta["zones"][i] for i in offline}


@pytest.mark.parametrize("name, meta", scenarios("contig-zones"))
def test_discovery_of_kernels_without_the_policy(name, meta):
    machine = discover(Backend(os.path.join(DATA, name))).machine
    assert not machine.warnings
    assert "online_policy" not in machine.kernel_params
    hotplugged = [b for b in machine.blocks.values() if not b.early]
    assert hotplugged and all(b.group is not None and b.state == "offline" for b in hotplugged)
