"""Local Encord emulator: a real HTTP server speaking the subset of Encord\x27s API the SDK uses.

Never imports the filesystem core (encordfs.core, encordfs.backend, encordfs.fuse).
"""
