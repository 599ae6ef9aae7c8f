"""gammadb: an experiment database for SGD across feature-learning strength (gamma) and learning rate (eta)."""

__version__ = "0.1.0"


def code_version() -> str:
    """The version stored with a sweep: ``__version__``, plus ``+g<short commit>`` (and ``-dirty`` when
    tracked files changed) when gammadb runs from a git checkout; never fails because of git."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        _CODE_VERSION = __version__ + _git_suffix()
    return _CODE_VERSION


_CODE_VERSION: "str | None" = None


def _git_suffix() -> str:
    import os
    import subprocess
    from pathlib import Path

    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10,
                              check=True, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout.strip()

    try:
        top, sha = git("rev-parse", "--show-toplevel", "--short", "HEAD").splitlines()
        if not (Path(top) / "gammadb" / "__init__.py").resolve() == Path(__file__).resolve():
            return ""  # installed inside some other repository: its commit says nothing about gammadb
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except Exception:  # no git, not a checkout, a timeout: the plain version
        return ""
    return f"+g{sha}" + ("-dirty" if dirty else "")
