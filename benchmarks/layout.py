"""Draw block layouts (zone per memory block) side by side as a PNG.

    python3 benchmarks/layout.py OUT.png NAME=LAYOUT.json [NAME=LAYOUT.json ...]

A LAYOUT.json maps block indexes to zone names ("zones" key of the
kernel-layout.json files, or a plain object); blocks absent or null are
drawn as offline/absent. Used by benchmarks/guests.py for the README picture.
"""

import json
import sys
from typing import Dict, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

COLOURS = {"Movable": "#2a9d8f", "Normal": "#e76f51", "DMA32": "#f4a261", "DMA": "#e9c46a",
           "none": "#f4a261", None: "#e0e0e0"}
LABELS = {"Movable": "ZONE_MOVABLE", "Normal": "ZONE_NORMAL", "DMA32": "ZONE_DMA32 / boot", None: "offline or absent"}


def draw(layouts: Dict[str, Dict[int, Optional[str]]], out: str, block_mib: int = 128, title: str = "") -> None:
    last = max(max(layout) for layout in layouts.values())
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.7 * len(layouts)), dpi=110)
    for row, (name, layout) in enumerate(layouts.items()):
        runs, start, zone = [], 0, layout.get(0)
        for index in range(1, last + 2):
            z = layout.get(index) if index <= last else object()
            if z != zone:
                runs.append((start, index - start, zone))
                start, zone = index, z
        for first, length, z in runs:
            ax.broken_barh([(first * block_mib / 1024, length * block_mib / 1024)], (row - 0.35, 0.7),
                           facecolors=COLOURS.get(z, "#999999"), edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(layouts)), list(layouts))
    ax.invert_yaxis()
    ax.set_xlabel("physical address (GiB); one bar segment per run of memory blocks in the same zone")
    ax.set_xlim(0, (last + 1) * block_mib / 1024)
    ax.legend(handles=[Patch(color=COLOURS[z], label=label) for z, label in LABELS.items()],
              loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(layouts) < 4 else -0.2), ncol=4, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def load(path: str) -> Dict[int, Optional[str]]:
    with open(path) as f:
        data = json.load(f)
    return {int(k): v for k, v in data.get("zones", data).items()}


if __name__ == "__main__":
    draw({arg.split("=", 1)[0]: load(arg.split("=", 1)[1]) for arg in sys.argv[2:]}, sys.argv[1])
