"""Local Encord emulator: a real HTTP server speaking the subset of Encord's API that the SDK uses.

It never imports the filesystem core (``encordfs.core``, ``encordfs.backend``, ``encordfs.fuse``):
it is a stand-in for api.encord.com and the cloud bucket behind it, nothing more.
"""
