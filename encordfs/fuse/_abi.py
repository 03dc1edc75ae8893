"""The FUSE kernel ABI the kernel binding speaks: message layouts, opcodes, flags and ioctls.

Written from libfuse's ``include/fuse_kernel.h`` (protocol 7.45; the header Debian ships in
``/usr/include/linux/fuse.h`` is 7.38 and predates passthrough). Only what ``encordfs.fuse.kernel``
uses is here. Every layout is native byte order with the header's explicit padding, so ``=`` (no
implicit alignment) gives the kernel's sizes; the sizes are asserted at import.

Replies that the binding sends often are one ``struct.Struct`` each, the out header included
(``ENTRY_REPLY``, ``ATTR_REPLY``, ``OPEN_REPLY``), so a reply is one ``pack`` and one ``write``.
"""

from __future__ import annotations

import struct
from enum import IntEnum

KERNEL_MAJOR = 7
KERNEL_MINOR = 45  # the newest protocol this module knows
MIN_MINOR = 23  # 64-byte fuse_init_out, 128-byte fuse_entry_out: Linux 3.15 and later

ROOT_ID = 1
UNKNOWN_INO = 0xFFFFFFFF  # libfuse's FUSE_UNKNOWN_INO: d_ino of ".." in a listing

# -- opcodes ------------------------------------------------------------------------------------


class Op(IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52
    COPY_FILE_RANGE_64 = 53


# -- notifications (unique = 0, code in the error field) -----------------------------------------
NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3

# -- INIT flags (flags | flags2 << 32) -------------------------------------------------------------
ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
FLOCK_LOCKS = 1 << 10
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
EXPLICIT_INVAL_DATA = 1 << 25
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36
PASSTHROUGH = 1 << 37

INIT_FLAG_NAMES = {
    ASYNC_READ: "ASYNC_READ",
    ATOMIC_O_TRUNC: "ATOMIC_O_TRUNC",
    BIG_WRITES: "BIG_WRITES",
    AUTO_INVAL_DATA: "AUTO_INVAL_DATA",
    DO_READDIRPLUS: "DO_READDIRPLUS",
    READDIRPLUS_AUTO: "READDIRPLUS_AUTO",
    ASYNC_DIO: "ASYNC_DIO",
    PARALLEL_DIROPS: "PARALLEL_DIROPS",
    MAX_PAGES: "MAX_PAGES",
    SETXATTR_EXT: "SETXATTR_EXT",
    INIT_EXT: "INIT_EXT",
    DIRECT_IO_ALLOW_MMAP: "DIRECT_IO_ALLOW_MMAP",
    PASSTHROUGH: "PASSTHROUGH",
}

# -- OPEN reply flags ------------------------------------------------------------------------------
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_NOFLUSH = 1 << 5
FOPEN_PASSTHROUGH = 1 << 7

# -- SETATTR valid bits that change something --------------------------------------------------------
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_CTIME = 1 << 10
FATTR_CHANGES = (
    FATTR_MODE
    | FATTR_UID
    | FATTR_GID
    | FATTR_SIZE
    | FATTR_ATIME
    | FATTR_MTIME
    | FATTR_ATIME_NOW
    | FATTR_MTIME_NOW
    | FATTR_CTIME
)

# renameat2 flags
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

# -- ioctls on /dev/fuse ---------------------------------------------------------------------------
FUSE_DEV_IOC_CLONE = 0x8004E500  # _IOR(229, 0, uint32_t)
FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501  # _IOW(229, 1, struct fuse_backing_map)
FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502  # _IOW(229, 2, uint32_t)

# -- layouts -----------------------------------------------------------------------------------------
IN_HEADER = struct.Struct("=IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("=IiQ")  # len, error, unique
_ATTR = "QQQqqqIIIIIIIIII"  # ino size blocks atime mtime ctime (signed: before 1970), *nsec x3, mode nlink uid gid rdev blksize flags
ATTR = struct.Struct("=" + _ATTR)
ENTRY_OUT = struct.Struct("=QQQQII" + _ATTR)  # nodeid generation entry_valid attr_valid *_nsec, attr
ATTR_OUT = struct.Struct("=QII" + _ATTR)  # attr_valid attr_valid_nsec dummy, attr
ENTRY_REPLY = struct.Struct("=IiQ" + "QQQQII" + _ATTR)
ATTR_REPLY = struct.Struct("=IiQ" + "QII" + _ATTR)
OPEN_REPLY = struct.Struct("=IiQ" + "QIi")  # fh open_flags backing_id
GETXATTR_REPLY = struct.Struct("=IiQ" + "II")  # size padding
STATFS_REPLY = struct.Struct("=IiQ" + "QQQQQIIII" + "6I")  # blocks bfree bavail files ffree bsize namelen frsize

INIT_IN = struct.Struct("=IIII")  # major minor max_readahead flags (flags2 follows from 7.36)
INIT_IN_FLAGS2 = struct.Struct("=I")
INIT_OUT = struct.Struct("=IIIIHHIIHHIIH22x")
# major minor max_readahead flags max_background congestion_threshold max_write time_gran max_pages
# map_alignment flags2 max_stack_depth request_timeout unused[11]
FORGET_IN = struct.Struct("=Q")
BATCH_FORGET_IN = struct.Struct("=II")
FORGET_ONE = struct.Struct("=QQ")
GETATTR_IN = struct.Struct("=IIQ")
SETATTR_IN = struct.Struct("=IIQQ")  # valid padding fh size (the rest is not needed)
OPEN_IN = struct.Struct("=II")  # flags open_flags
READ_IN = struct.Struct("=QQII")  # fh offset size read_flags (lock_owner flags padding follow)
RELEASE_IN = struct.Struct("=QII")  # fh flags release_flags
WRITE_IN = struct.Struct("=QQIIQII")  # fh offset size write_flags lock_owner flags padding (data follows)
WRITE_REPLY = struct.Struct("=IiQ" + "II")  # size padding
FSYNC_IN = struct.Struct("=QII")
GETXATTR_IN = struct.Struct("=II")  # size padding
SETXATTR_IN = struct.Struct("=II")  # size flags
SETXATTR_EXT_IN = struct.Struct("=IIII")  # size flags setxattr_flags padding
RENAME_IN = struct.Struct("=Q")
RENAME2_IN = struct.Struct("=QII")
INTERRUPT_IN = struct.Struct("=Q")
DIRENT = struct.Struct("=QQII")  # ino off namelen type
DIRENTPLUS = struct.Struct("=QQQQII" + _ATTR + "QQII")  # entry_out, dirent
NOTIFY_INVAL_INODE_OUT = struct.Struct("=IiQ" + "Qqq")  # ino off len
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("=IiQ" + "QII")  # parent namelen flags
BACKING_MAP = struct.Struct("=iIQ")  # fd flags padding
U32 = struct.Struct("=I")

assert IN_HEADER.size == 40 and OUT_HEADER.size == 16 and ATTR.size == 88
assert ENTRY_OUT.size == 128 and ATTR_OUT.size == 104 and INIT_OUT.size == 64
assert DIRENT.size == 24 and DIRENTPLUS.size == 152 and BACKING_MAP.size == 16
assert STATFS_REPLY.size == 16 + 80 and OPEN_REPLY.size == 32
assert WRITE_IN.size == 40 and WRITE_REPLY.size == 24


def align8(n: int) -> int:
    """FUSE_DIRENT_ALIGN: variable-length records are padded to 8 bytes."""
    return (n + 7) & ~7
