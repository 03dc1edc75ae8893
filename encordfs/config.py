"""Mount configuration from three places, merged once: command line > environment > TOML file > defaults.

Owns ``MountConfig`` (every option a mount takes, with its default) and ``resolve``, which the CLI,
the ``mount.encordfs`` helper and ``encordfs.mount`` call with what the user typed. The result is
plain values; nothing downstream knows where a value came from.

Sources (pydantic-settings, highest first):

- command line: the options the user gave (argparse defaults are ``None``, so "not given" is visible);
- environment: ``ENCORDFS_<OPTION>`` (``ENCORDFS_DOMAIN``, ``ENCORDFS_CACHE_DIR``, ``ENCORDFS_READ_ONLY``,
  ``ENCORDFS_METRICS_PORT``, ...); the key also from the SDK's own ``ENCORD_SSH_KEY_FILE``;
- file: ``--config FILE`` (or ``ENCORDFS_CONFIG``), TOML, keys named like the long options with
  underscores (``ssh_key_file = "~/.ssh/encord"``); an unknown key is an error, so a typo never
  passes silently.

Modes are octal text (``"0440"``) or integers; sizes and TTLs stay text and are parsed by the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from encordfs import errors

DEFAULT_DOMAIN = "https://api.encord.com"
CONFIG_ENV = "ENCORDFS_CONFIG"


class MountConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENCORDFS_", extra="forbid", populate_by_name=True)

    domain: str = DEFAULT_DOMAIN
    # The SDK's variable first: it is what users of the encord SDK already have set.
    ssh_key_file: str | None = Field(
        default=None, validation_alias=AliasChoices("ENCORD_SSH_KEY_FILE", "ENCORDFS_SSH_KEY_FILE")
    )
    cache_dir: str | None = None
    cache_size: str | None = None
    metadata_ttl: str | None = None
    max_metadata_bytes: int | None = None
    read_only: bool = False
    allow_other: bool = False
    include_org_access: bool = False
    uid: int | None = None
    gid: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None
    log_file: str | None = None
    log_format: Literal["text", "json"] = "text"
    verbose: int = 0
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # FUSE binding (None: the default, mfusepy); ENCORDFS_BINDING=kernel runs every mount on the kernel one.
    binding: Literal["kernel", "mfusepy"] | None = None
    # Kernel passthrough reads of cached files (kernel binding, where the kernel allows it).
    passthrough: bool = True

    @field_validator("file_mode", "dir_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise ValueError(f"must be an octal mode like 0444, not {value!r}") from None
        if isinstance(value, int) and not 0 <= value <= 0o7777:
            raise ValueError("must be a permission mode between 0 and 07777")
        return value

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


FIELDS = tuple(MountConfig.model_fields)


def resolve(cli: dict[str, Any], config_file: str | Path | None = None) -> MountConfig:
    """Merge ``cli`` (``None`` values = not given) over the environment over ``config_file``."""
    path = config_file or os.environ.get(CONFIG_ENV)
    cls: type[MountConfig] = MountConfig
    if path:
        toml = Path(path).expanduser()
        if not toml.is_file():
            raise errors.NotFound(f"config file {toml} does not exist")
        cls = type("FileMountConfig", (MountConfig,), {"model_config": {**MountConfig.model_config, "toml_file": toml}})
    given = {k: v for k, v in cli.items() if k in FIELDS and v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        raise errors.InvalidValue("configuration: " + "; ".join(_describe(e) for e in exc.errors())) from None
    except ValueError as exc:  # TOML syntax errors
        raise errors.InvalidValue(f"config file {path}: {exc}") from None


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ())) or "value"
    if error.get("type") == "extra_forbidden":
        return f"unknown option {where!r}"
    return f"{where}: {error.get('msg')}"
