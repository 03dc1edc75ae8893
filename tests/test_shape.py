"""The project's shape, pinned: what a mount imports, who may import whom, one definition per option."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from encordfs import options, settings
from harness.emulator import RunningEmulator
from harness.mount import temporary_mount

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "encordfs"


def _imported(stderr: str) -> list[str]:
    """Module names from ``-X importtime`` output."""
    return [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


def test_mount_help_imports_neither_the_emulator_nor_the_sdk_nor_cryptography() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "encordfs", "mount", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = _imported(done.stderr)
    assert "encordfs.cli" in modules
    heavy = [m for m in modules if m.startswith(("encordfs.emulator", "cryptography", "encord.", "pydantic"))]
    assert not heavy


def test_a_mount_never_imports_the_emulator(sample_emulator: RunningEmulator) -> None:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    with temporary_mount(sample_emulator.domain, sample_emulator.key_file, env=env) as m:
        first = next(p for p in sorted((m.path / "street-scenes").iterdir()) if p.is_file())
        assert first.read_bytes()
        os.getxattr(first, "user.encord.client_metadata")
        modules = _imported(m.log())
    assert "encordfs.core.fs" in modules  # the log did record the mount process's imports
    assert not [name for name in modules if name.startswith("encordfs.emulator")]


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("encordfs"):
                package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
                own_dir = REPO.joinpath(*package.split("."))
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_")
                    and not a.name.startswith("__")
                    # a package's own private module (``from encordfs.fuse import _abi`` in encordfs/fuse/)
                    and not (node.module == package and (own_dir / f"{a.name}.py").exists())
                ]
                if private:
                    offenders.append(f"{path.relative_to(REPO)}: from {node.module} import {', '.join(private)}")
    assert not offenders


def test_the_emulator_never_imports_the_filesystem() -> None:
    for path in sorted((PACKAGE / "emulator").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not name.startswith(("encordfs.core", "encordfs.backend", "encordfs.fuse")), (path, name)


def test_every_option_default_is_written_once() -> None:
    """Settings takes each option's default from the options table; the CLI shows the same one."""
    for option in options.OPTIONS:
        assert settings.Settings.model_fields[option.name].default == option.default, option.name
        assert settings.Settings.model_fields[option.name].description == option.help, option.name
    defaults = settings.Settings()
    assert defaults.metadata_ttl == options.default("metadata_ttl")
    from encordfs.core.fs import Options

    core = Options.from_settings(defaults)
    assert (core.metadata_ttl_s, core.file_mode, core.dir_mode) == (60.0, 0o444, 0o555)
