"""The filesystem core: no FUSE imports here (see docs and style.md)."""
