"""``mount.encordfs``: the helper mount(8) runs for ``mount -t fuse.encordfs`` and ``/etc/fstab`` lines.

mount(8) (util-linux) looks for ``/sbin/mount.fuse.encordfs`` (then ``mount.fuse``, whose
``mount.fuse3`` would run a program named ``encordfs`` as ``encordfs SOURCE MOUNTPOINT -o OPTS``, which is not our
command line) and calls it as::

    mount.fuse.encordfs SOURCE MOUNTPOINT [-sfnv] -o OPTS [-t fuse.encordfs]

``contrib/install-mount-helper`` installs ``contrib/mount.encordfs`` there (and as ``mount.encordfs``
for ``-t encordfs``). This module turns that call into ``encordfs mount MOUNTPOINT --daemon ...``:
``key=value`` options become ``--key value`` (``ssh_key_file``, ``domain``, ``cache_dir``, ``config``,
``uid``, ``gid``, ``file_mode``, ``dir_mode``, ``metadata_ttl``, ``cache_size``, ``log_file``,
``log_format``, ``metrics_port``, ``max_metadata_bytes``, ``http_client``, ``ca_file``),
``ro``/``read_only``, ``allow_other`` and ``include_org_access`` become flags, generic mount options
(``rw``, ``noauto``, ``_netdev``, ``nofail``, ``x-systemd.*``, ...) are ignored, anything else is an
error. SOURCE is free text (``encord``), except that an ``http(s)://`` SOURCE is the domain when
``domain=`` is not given. It returns once the mount serves, as mount(8) expects.
"""

from __future__ import annotations

import sys

VALUE_OPTIONS = {
    "domain",
    "ssh_key_file",
    "cache_dir",
    "config",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
    "metadata_ttl",
    "cache_size",
    "log_file",
    "log_format",
    "metrics_port",
    "max_metadata_bytes",
    "http_client",
    "ca_file",
}
FLAG_OPTIONS = {
    "ro": "read_only",
    "read_only": "read_only",
    "allow_other": "allow_other",
    "include_org_access": "include_org_access",
}
# Options mount(8) and fstab use for themselves; they mean nothing to the filesystem.
IGNORED = {
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "sync",
    "async",
    "dirsync",
    "loud",
    "silent",
}
IGNORED_PREFIXES = ("x-", "comment=", "helper=")


class UsageError(ValueError):
    pass


def parse(argv: list[str]) -> tuple[bool, list[str]]:
    """mount(8)'s helper arguments → (fake, ``encordfs`` argv)."""
    positional: list[str] = []
    opts: list[str] = []
    fake = verbose = False
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            opts.extend(next(it, "").split(","))
        elif arg.startswith("-o"):
            opts.extend(arg[2:].split(","))
        elif arg in ("-t", "-N"):
            next(it, None)
        elif arg.startswith("-") and len(arg) > 1:
            fake = fake or "f" in arg[1:]
            verbose = verbose or "v" in arg[1:]  # -s (sloppy) and -n (no mtab) need nothing
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError("usage: mount.encordfs SOURCE MOUNTPOINT [-o OPTIONS]")
    source, mountpoint = positional
    out = ["mount", mountpoint, "--daemon"]
    given: set[str] = set()
    for opt in filter(None, (o.strip() for o in opts)):
        key, eq, value = opt.partition("=")
        key = key.replace("-", "_")
        if key in VALUE_OPTIONS and eq:
            out += ["--" + key.replace("_", "-"), value]
            given.add(key)
        elif key in FLAG_OPTIONS and not eq:
            out.append("--" + FLAG_OPTIONS[key].replace("_", "-"))
        elif opt in IGNORED or opt.startswith(IGNORED_PREFIXES):
            continue
        else:
            raise UsageError(f"unknown option {opt!r}")
    if "domain" not in given and source.startswith(("http://", "https://")):
        out += ["--domain", source]
    if verbose:
        out.append("-v")
    return fake, out


def main(argv: list[str] | None = None) -> int:
    try:
        fake, args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"mount.encordfs: {exc}", file=sys.stderr)
        return 1  # mount(8)'s "incorrect invocation"
    if fake:
        return 0
    from encordfs import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
