"""pyflakes over the package, the tests and the benchmarks: no undefined or
unused names (an undefined name in a rarely taken path is an exception in
production, found by no other test)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyflakes_finds_nothing():
    # tests/*.py, not tests/: tests/data holds thousands of recorded files.
    tests = [os.path.join("tests", f) for f in os.listdir(os.path.join(ROOT, "tests")) if f.endswith(".py")]
    p = subprocess.run([sys.executable, "-m", "pyflakes", "memonlined", "tests/e2e", "benchmarks", *tests],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and not p.stdout, p.stdout + p.stderr
