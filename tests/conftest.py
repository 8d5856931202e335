import os
import sys

# The tests import the fake kernel as a plain module next to them.
sys.path.insert(0, os.path.dirname(__file__))
