"""Fuzzing: parsers and discovery on hypothesis-generated garbage. No
exception escapes; no write is made from garbage."""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakekernel import FakeKernel
from kernelbackend import KernelBackend, memonlined
from memonlined import parse

TEXT_PARSERS = [parse.parse_zoneinfo, parse.parse_iomem, parse.parse_block_size, parse.parse_state,
                parse.parse_valid_zones, parse.parse_hex]
garbage = st.one_of(st.text(max_size=300), st.sampled_from([
    "", "\n", "0", "-1", "0x", "ffffffffffffffffffffffff", "Node 0, zone Normal\n", "online_movable",
    "Node 0, zone   Normal\n        present  -5\n", "  00-ff : x\n", "Normal Movable Movable"]))


@settings(max_examples=300)
@given(text=garbage)
def test_text_parsers_raise_only_parse_error(text):
    for parser in TEXT_PARSERS:
        try:
            parser(text)
        except parse.ParseError:
            pass
    parse.parse_virtio_mem_probes(text.splitlines())


@settings(max_examples=200)
@given(data=st.binary(max_size=5000))
def test_boot_params_parser_raises_only_parse_error(data):
    try:
        parse.parse_boot_e820(data)
    except parse.ParseError:
        pass


GLOBAL = ["proc/zoneinfo", "proc/iomem", "sys/devices/system/memory/block_size_bytes",
          "sys/devices/system/memory/auto_online_blocks", "sys/kernel/boot_params/data", "dev/kmsg",
          "sys/module/memory_hotplug/parameters/auto_movable_ratio"]
BLOCK_FILES = ["state", "valid_zones"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(st.tuples(st.one_of(st.sampled_from(GLOBAL),
                                           st.tuples(st.integers(0, 60), st.sampled_from(BLOCK_FILES))),
                                 garbage), min_size=1, max_size=4))
def test_discovery_on_damaged_trees(tmp_path_factory, damage):
    kernel = FakeKernel(tmp_path_factory.mktemp("k"), policy="contig-zones")
    kernel.add_dimm(1 << 30)
    kernel.add_virtio_mem(4 << 30)
    kernel.virtio_mem_plug("virtio5", 512 << 20)
    damaged_blocks, damaged_global = set(), False
    for where, text in damage:
        if isinstance(where, tuple):
            index, name = where
            where = f"sys/devices/system/memory/memory{index}/{name}"
            damaged_blocks.add(index)
        else:
            damaged_global = True
        path = os.path.join(kernel.root, where)
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write(text)
    backend = KernelBackend(kernel)
    for args in (["status"], ["online"]):
        rc = memonlined(kernel, *args, backend=backend)[0]
        assert rc in (0, 1, 4)
    assert not damaged_blocks & {index for index, _ in backend.writes}
    if rc == 4:
        assert damaged_global and backend.writes == []
