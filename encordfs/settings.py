"""Every option of a mount, defined once: its type, its default and the reason for that default.

``Settings`` is the one settings object. The command line, the environment (``ENCORDFS_<OPTION>``;
the key also from the SDK's own ``ENCORD_SSH_KEY_FILE``), a TOML file (``--config FILE`` or
``ENCORDFS_CONFIG``; keys are the long options with underscores) and ``encordfs.mount(...)`` all fill
it through ``resolve``: command line > environment > file > default. The CLI's mount options are
generated from the fields (``CLI_OPTIONS``; the help text is the field's description), the
``mount.encordfs`` helper's ``-o`` names too, and ``mount_argv`` turns a resolved object back into the
command line of a detached mount process. The core takes what it needs from it (``app.build``).

Values are checked here, once, with one-line messages: sizes (``10G``), TTLs (``minimal``, seconds,
``indefinite``), octal modes (bits outside 0777 refused), uid/gid (0 .. 2**32-2), the domain's scheme.
Paths are made absolute at resolution, in the process where the user typed them.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from encordfs import errors
from encordfs.options import BY_NAME, NAMES

CONFIG_ENV = "ENCORDFS_CONFIG"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TTL_PRESETS = {"minimal": 1.0, "indefinite": float(365 * 24 * 3600)}
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown(2): not an owner
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}


def _opt(name: str, **constraints: Any) -> Any:
    """A field for the option ``name``: default and description from ``encordfs.options``."""
    option = BY_NAME[name]
    return Field(option.default, description=option.help, **constraints)


class Settings(BaseSettings):
    """Every mount option (defaults and help from ``encordfs.options``), and tuning knobs."""

    model_config = SettingsConfigDict(env_prefix="ENCORDFS_", extra="forbid", populate_by_name=True)

    domain: str = _opt("domain")
    # The SDK's variable is accepted too: it is what users of the encord SDK already have set.
    ssh_key_file: str | None = _opt(
        "ssh_key_file", validation_alias=AliasChoices("ssh_key_file", "ENCORD_SSH_KEY_FILE", "ENCORDFS_SSH_KEY_FILE")
    )
    # caches and freshness
    cache_dir: str | None = _opt("cache_dir")
    cache_size: int = _opt("cache_size")
    metadata_ttl: float = _opt("metadata_ttl")
    max_metadata_bytes: int = _opt("max_metadata_bytes", gt=0)
    # who may do what
    read_only: bool = _opt("read_only")
    allow_other: bool = _opt("allow_other")
    include_org_access: bool = _opt("include_org_access")
    # owner and modes shown
    uid: int | None = _opt("uid")
    gid: int | None = _opt("gid")
    file_mode: int = _opt("file_mode")
    dir_mode: int = _opt("dir_mode")
    # logs and metrics
    log_file: str | None = _opt("log_file")
    log_format: str = _opt("log_format")
    verbose: int = _opt("verbose", ge=0)
    metrics_port: int | None = _opt("metrics_port", ge=1, le=65535)
    # the data path: FUSE binding, HTTP client, prefetch
    binding: str = _opt("binding")
    passthrough: bool = _opt("passthrough")
    direct_io_min: int = _opt("direct_io_min", ge=0)
    http_client: str = _opt("http_client")
    ca_file: str | None = _opt("ca_file")
    prefetch: bool = _opt("prefetch")
    # cluster mode
    shared: str | None = _opt("shared")
    shared_blocks: bool = _opt("shared_blocks")
    shared_block_limit: int = _opt("shared_block_limit", ge=0)

    # -- not options: tuning with a reason, settable from the environment or the file only
    # Recent blocks of open and recently read files, in memory, beside the disk cache.
    memory_cache_bytes: int = Field(256 * MiB, ge=0)
    # Keep this much free on the cache's filesystem whatever the cap says, so a full disk never follows
    # from a mount (mountpoint-s3 has the same floor).
    cache_min_free_bytes: int = Field(1 * GiB, ge=0)
    # How long a stopping mount waits for queued metadata changes before leaving them in the journal
    # (``encordfs unmount --timeout`` overrides it for that stop).
    unmount_flush_timeout_s: float = Field(10.0, ge=0)
    # Files prefetched at once (sequential lookahead, order hints) whatever the link: behind 25 ms of
    # first-byte latency 32 in flight serve ~1,300 files/s, about what the mount opens and reads on 2
    # cores. Behind slower first bytes the prefetcher allows more, as far as the link's measured
    # bandwidth carries them (``core.prefetch.PrefetchConfig.max_parallel``).
    prefetch_parallel: int = Field(32, ge=1, le=256)
    # Bytes fetched ahead of their readers at most (also capped at a quarter of --cache-size and half
    # the memory cache, so prefetched files are still cached when they are opened).
    prefetch_ahead_bytes: int = Field(128 * MiB, ge=0)
    # How long one API call may wait for its reply (None: the SDK backend's 120 s); tests shorten it.
    api_timeout_s: float | None = Field(None, gt=0)
    # After a push of unknown outcome, its row's final state is pushed once more this much later
    # (None: the write queue's default, longer than the API timeout; see core.writes "Late duplicates").
    write_reassert_after_s: float | None = Field(None, ge=0)
    # The Redis password of ``--shared`` (``ENCORDFS_REDIS_PASSWORD``) when the URL has none: a secret kept
    # off command lines. A detached mount gets it through its environment (``mount_env``).
    redis_password: SecretStr | None = None
    # The longest one Redis command may take before the mount stops waiting and carries on against Encord
    # directly (``encordfs.cluster``): long enough for an 8 MiB value over a slow link, short enough that a
    # stalled Redis costs a read a couple of seconds once, not the 30 s read budget.
    shared_timeout_s: float = Field(2.0, gt=0, le=60)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    # -- checks ---------------------------------------------------------------------------------------
    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} has no scheme: add http:// or https:// (e.g. https://{value})")
        return value

    @field_validator("log_format", "binding", "http_client")
    @classmethod
    def _choice(cls, value: str, info: ValidationInfo) -> str:
        choices = BY_NAME[str(info.field_name)].choices or ()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    @field_validator("ssh_key_file", "cache_dir", "log_file", "ca_file")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value in (None, "") else os.path.abspath(os.path.expanduser(str(value)))

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        """A bad --ca-file is a one-line error before anything is mounted (never silently insecure)."""
        if value is None:
            return None
        from encordfs.core.fetch import ca_file_problem

        problem = ca_file_problem(value)
        if problem is not None:
            raise ValueError(f"{value} {problem}")
        return value

    @field_validator("cache_size", "shared_block_limit", "direct_io_min", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("cache_size")
    @classmethod
    def _size_range(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("shared")
    @classmethod
    def _shared(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        check_redis_url(value.strip())
        return value.strip()

    @model_validator(mode="after")
    def _shared_blocks_need_shared(self) -> Settings:
        if self.shared_blocks and not self.shared:
            raise ValueError("--shared-blocks needs --shared URL (the Redis the blocks go to)")
        return self

    @field_validator("metadata_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value in TTL_PRESETS:
                return TTL_PRESETS[value]
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"must be minimal, indefinite or seconds, not {value!r}") from None
        if isinstance(value, int | float) and (math.isnan(value) or value < 0 or math.isinf(value)):
            raise ValueError("must be minimal, indefinite or a number of seconds >= 0")
        return value

    @field_validator("file_mode", "dir_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise ValueError(f"must be an octal mode like 0444, not {value!r}") from None
        if isinstance(value, int) and not 0 <= value <= 0o777:
            raise ValueError(f"{value:o} has bits outside 0777 (setuid, setgid and sticky bits are not shown)")
        return value

    @field_validator("uid", "gid")
    @classmethod
    def _id(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_ID:
            raise ValueError(f"must be between 0 and {MAX_ID}, not {value}")
        return value

    # -- derived ----------------------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir(self.domain)

    @property
    def owner(self) -> tuple[int, int]:
        """(uid, gid) shown for every file."""
        return (os.getuid() if self.uid is None else self.uid, os.getgid() if self.gid is None else self.gid)

    def detached_log_path(self) -> Path:
        """Where a detached mount logs: ``log_file``, else ``CACHE_DIR/mount.log``."""
        return Path(self.log_file) if self.log_file else self.cache_path / "mount.log"


REDIS_SCHEMES = ("redis", "rediss")


def check_redis_url(url: str) -> None:
    """Refuse a ``--shared`` URL that is not ``redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]``. Messages
    never repeat the URL: it may hold a password."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError("must be a redis://HOST:PORT/DB or rediss://HOST:PORT/DB URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number between 1 and 65535") from None
    if not parts.hostname:
        raise ValueError("names no host (redis://HOST:PORT/DB)")
    if port == 0:
        raise ValueError("has port 0")
    db = parts.path.strip("/")
    if db and (not db.isdigit() or int(db) > 1 << 20):
        raise ValueError("has a database that is not a number (redis://HOST:PORT/0)")
    if parts.query or parts.fragment:
        raise ValueError("has a query or fragment; encordfs takes only redis[s]://[:PASSWORD@]HOST:PORT/DB")


def redact_redis_url(url: str) -> str:
    """``scheme://HOST:PORT/DB`` without user or password: what logs and the status may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{where}{f':{port}' if port else ''}/{parts.path.strip('/') or '0'}"


def default_cache_dir(domain: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "encordfs" / hashlib.sha256(domain.encode()).hexdigest()[:12]


def parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        size = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        size = math.nan
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"must be a size like 10G or 512M, not {text!r}")
    return int(size)


FIELDS = tuple(Settings.model_fields)
CLI_OPTIONS = NAMES  # the options of ``encordfs mount``, in --help order


def default(name: str) -> Any:
    """The default of a setting, for code that takes one value of it (the core's ``Options``)."""
    return Settings.model_fields[name].default


def resolve(given: dict[str, Any] | None = None, config_file: str | Path | None = None) -> Settings:
    """Merge ``given`` (``None`` values = not given) over the environment over ``config_file``
    (default ``$ENCORDFS_CONFIG``) over the defaults; any problem is one ``InvalidValue`` line."""
    path = config_file or os.environ.get(CONFIG_ENV)
    cls: type[Settings] = Settings
    if path:
        toml = Path(path).expanduser()
        if not toml.is_file():
            raise errors.NotFound(f"config file {toml} does not exist")
        cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": toml}})
    kwargs = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(kwargs) - set(FIELDS))
    if unknown:
        raise errors.InvalidValue(f"unknown option {unknown[0]!r}")
    try:
        return cls(**kwargs)
    except ValidationError as exc:
        raise errors.InvalidValue("; ".join(_describe(e) for e in exc.errors())) from None
    except ValueError as exc:  # TOML syntax errors
        raise errors.InvalidValue(f"config file {path}: {exc}") from None


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "value"
    if error.get("type") == "extra_forbidden":
        return f"unknown option {where!r}"
    option = BY_NAME[where].flag if where in BY_NAME else where
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"{option}: {message}" if error.get("loc") else message  # a check across options names them itself


def mount_argv(settings: Settings, mountpoint: Path) -> list[str]:
    """The command line of a foreground mount process serving ``settings`` at ``mountpoint``: every
    option with a value written out (paths are already absolute), defaults included, so the child, which
    inherits the environment, cannot resolve an ``ENCORDFS_*`` variable the command line overrode."""
    argv = [sys.executable, "-m", "encordfs", "mount", str(mountpoint), "--foreground"]
    for option in BY_NAME.values():
        value = getattr(settings, option.name)
        if value is None or option.secret or (option.is_flag and value == option.default):
            continue
        if option.is_flag:
            argv.append(option.flag)
        elif option.count:
            argv += ["-v"] * int(value)
        elif option.octal:
            argv += [option.flag, f"{value:04o}"]
        else:
            argv += [option.flag, str(value)]
    return argv


def mount_env(settings: Settings) -> dict[str, str]:
    """What a detached mount process gets through its environment rather than ``mount_argv``: the
    options that may hold a secret, and the Redis password (any local user can read a command line)."""
    env = {f"ENCORDFS_{o.name.upper()}": str(getattr(settings, o.name)) for o in BY_NAME.values()
           if o.secret and getattr(settings, o.name) is not None}  # fmt: skip
    if settings.redis_password is not None:
        env["ENCORDFS_REDIS_PASSWORD"] = settings.redis_password.get_secret_value()
    return env
