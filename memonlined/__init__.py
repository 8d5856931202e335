"""memonlined: online hot-plugged memory the way the kernel's auto-movable policy would."""

__version__ = "0.2.0"
