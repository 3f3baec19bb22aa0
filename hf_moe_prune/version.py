"""The library version (a leaf module: setup.cfg and plan checks read it without importing torch)."""

__version__ = "0.1.0"
