"""The mount options as plain data: name, default (and the reason for it), help, how each looks on the
command line. This table is the one place an option's default is written.

``encordfs.settings.Settings`` takes its fields' defaults and descriptions from here and adds types
and checks; ``encordfs mount``'s options and the ``mount.encordfs`` helper's ``-o`` names are built
from it. It imports nothing heavy, so ``encordfs mount --help`` or ``encordfs status`` cost little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MiB, GiB = 1 << 20, 1 << 30


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    shown: str | None = None  # the default as --help shows it, when not str(default)
    octal: bool = False
    count: bool = False  # -v, -vv
    off_help: str | None = None  # a boolean that defaults to true: the help of its --no-X flag
    # May hold a secret (a password in a URL): a detached mount gets it through its environment,
    # never on its command line, where any local user could read it (``settings.mount_env``).
    secret: bool = False

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    @property
    def flag(self) -> str:
        """``--cache-size``; a boolean that defaults to true is turned off: ``--no-passthrough``."""
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.default is True else f"--{dashed}"

    @property
    def default_text(self) -> str | None:
        if self.default is None or self.is_flag or self.count:
            return None
        return self.shown or (f"{self.default:04o}" if self.octal else str(self.default))


BINDINGS = ("kernel", "mfusepy")
HTTP_CLIENTS = ("curl", "httpx")

OPTIONS: tuple[Option, ...] = (
    # Encord's API; the US region is https://api.us.encord.com, the emulator http://127.0.0.1:PORT.
    Option("domain", "https://api.encord.com", "Encord API domain", metavar="URL"),
    Option(
        "ssh_key_file",
        None,
        "OpenSSH Ed25519 private key registered with Encord (default: $ENCORD_SSH_KEY_FILE)",
        metavar="FILE",
    ),  # fmt: skip
    Option(
        "cache_dir", None, "catalog, journal and file cache (default: ~/.cache/encordfs/<domain hash>)", metavar="DIR"
    ),  # fmt: skip
    # 10 GiB holds an epoch of a mid-sized image dataset and is small next to a training machine's disk.
    Option("cache_size", 10 * GiB, "disk cache cap, e.g. 10G or 512M", metavar="SIZE", shown="10G"),
    # 60 s, like mountpoint-s3's metadata TTL for mutable buckets: fresh enough for interactive use, while
    # an epoch over a folder costs one listing call per minute, not one per file.
    Option(
        "metadata_ttl",
        60.0,
        "how long listings and attributes are trusted: minimal | SECONDS | indefinite",
        metavar="TTL",
        shown="60",
    ),  # fmt: skip
    # What the emulator answers 413 to; Encord's own limit is undocumented.
    Option("max_metadata_bytes", 65536, "refuse client metadata larger than this", metavar="BYTES"),
    Option("read_only", False, "mount read-only (no metadata writes)"),
    Option("allow_other", False, "let other users see the mount (adds default_permissions)"),
    Option("include_org_access", False, "also show datasets the key sees through its organisation"),
    Option("uid", None, "owner shown for every file (default: the mounting user)"),
    Option("gid", None, "group shown for every file (default: the mounting user's)"),
    # Encord is the authority on access; modes only matter to other local users of an --allow-other mount.
    Option("file_mode", 0o444, "permission bits of files, octal", metavar="MODE", octal=True),
    Option("dir_mode", 0o555, "permission bits of folders, octal", metavar="MODE", octal=True),
    Option(
        "log_file", None, "log here (default: stderr in the foreground, CACHE_DIR/mount.log detached)", metavar="FILE"
    ),  # fmt: skip
    Option("log_format", "text", "log lines as text or JSON", choices=("text", "json")),
    Option("verbose", 0, "-v info, -vv debug", count=True),
    Option("metrics_port", None, "serve Prometheus /metrics on 127.0.0.1:PORT", metavar="PORT"),
    # The kernel binding speaks /dev/fuse itself: 2-3x less CPU per operation than libfuse's high-level
    # API through mfusepy, kernel invalidations, passthrough. mfusepy stays the portable fallback.
    Option(
        "binding",
        "kernel",
        "FUSE binding: kernel (speaks /dev/fuse itself, passthrough) or mfusepy (libfuse 3)",
        choices=BINDINGS,
    ),  # fmt: skip
    # On wherever the kernel allows it: cached files are then read by the kernel without reaching Python.
    Option(
        "passthrough",
        True,
        "let the kernel read cached files directly (kernel binding)",
        off_help="never let the kernel read cached files directly (--binding kernel)",
    ),  # fmt: skip
    # 64 MiB: a cold big file read through the kernel's page cache is copied twice, and on a VM whose free
    # memory went back to its host, filling new page cache ran at a third of the direct path's speed (a
    # cold 1 GiB read, fresh mounts with and without). Below it the page cache's readahead serves small
    # readers better.
    Option(
        "direct_io_min",
        64 * MiB,
        "files of at least SIZE not yet whole in the disk cache are read past the kernel's page cache "
        "(kernel binding); 0: never",
        metavar="SIZE",
        shown="64M",
    ),  # fmt: skip
    # libcurl's multi interface measured 3-4x cheaper per request than the stdlib client here.
    Option(
        "http_client", "curl", "HTTP client for file bytes: curl (libcurl) or httpx (pure Python)", choices=HTTP_CLIENTS
    ),  # fmt: skip
    Option("ca_file", None, "PEM bundle of CAs to trust for Encord and storage (corporate proxies)", metavar="FILE"),
    # Cluster mode (issue 15, ``encordfs.cluster``): mounts of one account on many nodes share listings and
    # signed URLs through one Redis (or Valkey). Off unless given: a mount alone needs no Redis.
    Option(
        "shared",
        None,
        "share listings and signed URLs with the other nodes through Redis: redis://HOST:PORT/DB or rediss://...; "
        "a password from the URL or $ENCORDFS_REDIS_PASSWORD",
        metavar="URL",
        secret=True,
    ),  # fmt: skip
    Option("shared_blocks", False, "also share file contents (blocks up to --shared-block-limit) through that Redis"),
    # 8 MiB: the reader's part size, so every whole small file and every part of a big one can be shared;
    # Redis takes values up to 512 MB, but one big value blocks its single thread while it is copied.
    Option(
        "shared_block_limit", 8 * MiB, "largest block put into Redis with --shared-blocks", metavar="SIZE", shown="8M"
    ),  # fmt: skip
    # On: behind tens of ms of latency a reader of files one after another waits one round trip per file
    # without it; it only fetches what a sequential reader or an order hint says comes next, a bounded
    # window ahead, with background connections and the readahead share of the memory budget.
    Option(
        "prefetch",
        True,
        "fetch files ahead of readers that follow a folder's listing, and in the order of hints",
        off_help="never fetch files before they are opened (no lookahead, hints ignored)",
    ),  # fmt: skip
)

BY_NAME = {o.name: o for o in OPTIONS}
NAMES = tuple(BY_NAME)


def default(name: str) -> Any:
    return BY_NAME[name].default
