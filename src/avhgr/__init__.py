"""avhgr: audio-visual emotion recognition with the Soft-HGR correlation loss."""

__version__ = "0.1.0"
