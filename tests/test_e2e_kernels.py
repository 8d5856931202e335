"""tests/e2e/kernel-debs.sh, the e2e setup's kernel from Debian's packages:
the one-package layout of Debian's 5.10-6.x kernels and the split of its 7.x
kernels (linux-binary-V with /usr/lib/modules/V/vmlinuz, linux-modules-V).
Packages built with dpkg-deb in the layouts of Debian's real ones (7.3's as
trixie-backports has it)."""

import os
import shutil
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "e2e", "kernel-debs.sh")

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")


def sh(command, stdin=""):
    # As setup.sh runs it: errexit and pipefail.
    p = subprocess.run(["bash", "-c", f'set -euo pipefail; . "{SCRIPT}"; {command}'], input=stdin, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def deb(tmp_path, name, files):
    """A package NAME holding FILES {path: text}, in tmp_path/debs."""
    tree = tmp_path / "trees" / name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1\nArchitecture: amd64\n"
                                         "Maintainer: t <t@localhost>\nDescription: t\n")
    for path, text in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    (tmp_path / "debs").mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(tree), str(tmp_path / "debs" / f"{name}.deb")],
                   check=True, capture_output=True)


def test_the_packages_of_a_split_kernel_and_of_one_package():
    # trixie-backports' 7.3, as apt-cache depends printed it
    split = ("linux-image-7.3.4+deb13-amd64\n  PreDepends: linux-base\n |Depends: <dracut>\n"
             " |Depends: <initramfs-tools>\n  Depends: <linux-initramfs-tool>\n"
             "  Depends: linux-base-7.3.4+deb13-amd64\n  Depends: linux-binary-7.3.4+deb13-amd64\n"
             "  Depends: linux-modules-7.3.4+deb13-amd64\n  Suggests: linux-doc-7.3\n")
    assert sh("kernel_packages", split)[1].split() == [
        "linux-image-7.3.4+deb13-amd64", "linux-base-7.3.4+deb13-amd64", "linux-binary-7.3.4+deb13-amd64",
        "linux-modules-7.3.4+deb13-amd64"]
    whole = ("linux-image-6.12.117+deb13-amd64\n  PreDepends: linux-base\n  Depends: kmod\n"
             " |Depends: initramfs-tools\n  Depends: <linux-initramfs-tool>\n    dracut\n")
    assert sh("kernel_packages", whole)[1].split() == ["linux-image-6.12.117+deb13-amd64"]


@pytest.mark.parametrize("layout", ["6.1", "6.12", "7.x"])
def test_the_kernel_is_found_in_each_layout(tmp_path, layout):
    ko = "kernel/drivers/virtio/virtio_mem.ko"
    if layout == "6.1":      # /boot and /lib/modules
        version = "6.1.0-50-amd64"
        deb(tmp_path, f"linux-image-{version}", {f"boot/vmlinuz-{version}": "image",
                                                 f"lib/modules/{version}/{ko}": "module"})
        image, modules = f"boot/vmlinuz-{version}", f"lib/modules/{version}"
    elif layout == "6.12":   # merged /usr
        version = "6.12.117+deb13-amd64"
        deb(tmp_path, f"linux-image-{version}", {f"boot/vmlinuz-{version}": "image",
                                                 f"usr/lib/modules/{version}/{ko}": "module"})
        image, modules = f"boot/vmlinuz-{version}", f"usr/lib/modules/{version}"
    else:                    # the image beside its modules, in packages of their own
        version = "7.0.1-amd64"
        deb(tmp_path, f"linux-image-{version}", {f"usr/share/doc/linux-image-{version}/README": "meta"})
        deb(tmp_path, f"linux-binary-{version}", {f"usr/lib/modules/{version}/vmlinuz": "image"})
        deb(tmp_path, f"linux-base-{version}", {f"usr/lib/modules/{version}/modules.builtin": ""})
        deb(tmp_path, f"linux-modules-{version}", {f"usr/lib/modules/{version}/{ko}": "module"})
        image, modules = f"usr/lib/modules/{version}/vmlinuz", f"usr/lib/modules/{version}"
    out = tmp_path / "extract"
    rc, stdout, stderr = sh(f'kernel_from_debs "{tmp_path}/debs" "{out}"')
    assert rc == 0, stderr
    assert stdout.split() == [version, f"{out}/{image}", f"{out}/{modules}"]
    assert (out / modules / ko).read_text() == "module" and (out / image).read_text() == "image"
    # Extracted once: a second call reads the tree, even with the packages gone.
    shutil.rmtree(tmp_path / "debs")
    os.makedirs(tmp_path / "debs")
    assert sh(f'kernel_from_debs "{tmp_path}/debs" "{out}"')[1] == stdout


def test_a_package_without_a_kernel_image_is_an_error(tmp_path):
    deb(tmp_path, "linux-modules-7.0.1-amd64", {"usr/lib/modules/7.0.1-amd64/kernel/x.ko": ""})
    rc, stdout, stderr = sh(f'kernel_from_debs "{tmp_path}/debs" "{tmp_path}/x"')
    assert rc != 0 and stdout == "" and "no kernel image" in stderr
