#!/usr/bin/env python3
"""The commands of this repository, each doing its own set-up.

    python3 dev.py run     # the terminal UI, straight into the default demo (installs what it needs)
    python3 dev.py test    # the whole test suite on both backends (installs what it needs)
    python3 dev.py shell   # a shell inside .venv: dualnorm, python and pytest are the project's (exit to leave)
    python3 dev.py docs    # serve the documentation site locally (mkdocs; `docs build --strict` builds it)

Each creates ``.venv`` next to this file on first use and reinstalls only when
``pyproject.toml`` changes or it needs an extra that is not installed yet (``test``'s
``dev`` extra includes everything ``run`` needs). Only the Python standard library is
used here, so a fresh machine needs nothing but Python 3.10+.

PyTorch is optional: ``test`` installs it for the parity tests only when pip can find
a wheel without the network (for example through ``PIP_FIND_LINKS``), because the
default PyPI wheel on Linux is a multi-GB CUDA build. Set ``DUALNORM_TEST_TORCH=1``
to install it from the index anyway, ``=0`` to never install it; the PyTorch tests
skip cleanly without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def run(
    *cmd: str | os.PathLike[str], check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=check, text=True, env=env)


#: The extras each extra brings along (pyproject.toml's ``dev = ["dualnorm[mlx,tui,distributed,fast]", ...]``):
#: after ``test`` installed ``dev``, ``run`` (mlx,tui,fast) finds everything it needs installed.
IMPLIED_EXTRAS = {"dev": ("mlx", "tui", "distributed", "fast")}
STAMP = VENV / ".dualnorm-installed.json"  # {"pyproject": sha256, "extras": [...]}: what is installed
#: pip byte-compiles every file it installs (torch alone: ~10k files, ~35 s of a 2-core machine's
#: time); Python compiles and keeps the modules it imports by itself, a fraction of them. Unless
#: PYTHONDONTWRITEBYTECODE (or -B) says it keeps nothing: then every import would compile again.
NO_COMPILE = [] if sys.dont_write_bytecode else ["--no-compile"]


def expand_extras(extras: str) -> set[str]:
    wanted = {e.strip() for e in extras.split(",") if e.strip()}
    for extra in list(wanted):
        wanted.update(IMPLIED_EXTRAS.get(extra, ()))
    return wanted


def installed_extras(digest: str) -> set[str]:
    """The extras installed in .venv for this pyproject.toml (none if it changed since)."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(stamp, dict) or stamp.get("pyproject") != digest:
        return set()
    return set(stamp.get("extras") or ())


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 (dev.py runs under whatever python3 is)
        sys.exit(f"dualnorm needs Python 3.10 or newer; this is {sys.version.split()[0]} ({sys.executable}).")
    if not PYTHON.exists():
        say(f"creating {VENV.relative_to(ROOT)} with {sys.executable}")
        run(sys.executable, "-m", "venv", VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    have, wanted = installed_extras(digest), expand_extras(extras)
    if wanted <= have:
        return
    say(
        f"installing dualnorm[{extras}] into {VENV.relative_to(ROOT)} (once; again only when pyproject.toml changes)"
    )
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check"]
    added = extra_requirements(wanted - have) if have else None
    if added is not None:  # dualnorm is installed from this pyproject.toml: only what the extras add
        run(*pip, "install", "--quiet", *NO_COMPILE, *added)
    else:
        run(*pip, "install", "--quiet", *NO_COMPILE, "--upgrade", "pip")
        run(*pip, "install", "--quiet", *NO_COMPILE, "-e", f"{ROOT}[{extras}]")
    STAMP.write_text(json.dumps({"pyproject": digest, "extras": sorted(have | wanted)}))


def extra_requirements(extras: set[str]) -> list[str] | None:
    """What ``extras`` require, from pyproject.toml (``dualnorm[...]`` inside one expanded), or None
    on Python 3.10 (no tomllib): then pip reinstalls the project with them, rebuilding its editable
    wheel (~7 s), which an extra alone (the docs' after the tests') does not need."""
    try:
        import tomllib
    except ImportError:
        return None
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    requirements: list[str] = []
    todo, seen = sorted(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in table.get(extra, ()):
            if requirement.startswith("dualnorm["):
                todo += [e.strip() for e in requirement[len("dualnorm[") : requirement.index("]")].split(",")]
            elif requirement not in requirements:
                requirements.append(requirement)
    return requirements


def enter_hint() -> None:
    """How to use the installed dualnorm yourself (the venv is not on PATH outside dev.py)."""
    activate = BIN / ("activate.bat" if os.name == "nt" else "activate")
    rel = activate.relative_to(ROOT)
    source = str(rel) if os.name == "nt" else f"source {rel}"
    say(f"to run dualnorm, python and the examples yourself: python3 dev.py shell  (or: {source})")


def shell(argv: list[str]) -> int:
    """A shell (or ``argv``, run inside the venv) with .venv first on PATH, as ``activate`` would set it."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONHOME", None)
    if argv:
        return run(*argv, check=False, env=env).returncode
    command = os.environ.get("COMSPEC", "cmd.exe") if os.name == "nt" else os.environ.get("SHELL", "/bin/sh")
    say(
        f"a shell inside {VENV.relative_to(ROOT)}: dualnorm, python and pytest are the project's; exit to leave"
    )
    return run(command, check=False, env=env).returncode


def local_torch_version() -> str | None:
    """The version of a torch wheel pip can install without the network, if any."""
    report = subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--no-deps",
            "--quiet",
            "--report",
            "-",
            "torch",
        ],
        capture_output=True,
        text=True,
    )
    if report.returncode != 0:
        return None
    try:
        return json.loads(report.stdout)["install"][0]["metadata"]["version"]
    except (ValueError, KeyError, IndexError):
        return None


def ensure_torch() -> None:
    choice = os.environ.get("DUALNORM_TEST_TORCH", "auto").strip().lower()
    if choice in ("0", "no", "false"):
        return
    # find_spec, not an import: importing torch takes seconds, on every `dev.py test`
    probe = subprocess.run(
        [PYTHON, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"],
        capture_output=True,
    )
    if probe.returncode == 0:
        return
    version = local_torch_version()
    if version is None and choice not in ("1", "yes", "true"):
        say(
            "PyTorch: no local wheel found; the PyTorch parity tests will be skipped (DUALNORM_TEST_TORCH=1 installs it)"
        )
        return
    spec = f"torch=={version}" if version else "torch"
    say(f"installing {spec} for the PyTorch parity tests")
    if run(PYTHON, "-m", "pip", "install", "--quiet", *NO_COMPILE, spec, check=False).returncode != 0:
        say("PyTorch could not be installed; the PyTorch parity tests will be skipped")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        ensure_venv("mlx,tui,fast")
        # With no arguments, open straight into the default demo (esc goes to the list).
        args = rest or ["--experiment", "dying-relu"]
        code = run(BIN / "dualnorm", "tui", *args, check=False).returncode
        enter_hint()
        return code
    if command == "test":
        ensure_venv("dev")
        ensure_torch()
        # One pytest worker per core (pytest-xdist is in the dev extra) unless told otherwise.
        parallel = [] if any(a == "-n" or a.startswith("-n") for a in rest) else ["-n", "auto"]
        code = run(PYTHON, "-m", "pytest", *parallel, *rest, check=False).returncode
        enter_hint()
        return code
    if command == "shell":
        ensure_venv("mlx,tui,fast")
        return shell(rest)
    if command == "docs":
        ensure_venv("docs")
        os.chdir(ROOT)  # mkdocs reads ./mkdocs.yml
        os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # mkdocs-material's banner about its successor
        return run(PYTHON, "-m", "mkdocs", *(rest or ["serve"]), check=False).returncode
    print(
        f"unknown command {command!r}; use 'run', 'test', 'shell' or 'docs' (see python3 dev.py --help)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
