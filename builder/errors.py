"""The builder's error hierarchy.

Each class also inherits the standard type it resembles, so callers can catch
either.  ``str(err)`` is always one line that names the thing and the fix; the
CLI prints it and exits 1 (2 for usage errors).
"""

from __future__ import annotations


class BuildError(Exception):
    """Base class: a one-line, user-facing message."""

    exit_code = 1


class UsageError(BuildError, ValueError):
    exit_code = 2


class SpecError(BuildError, ValueError):
    """A spec failed validation; ``problems`` lists every ``path: message``."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        head = f"{source}: {len(self.problems)} problem(s): " + "; ".join(self.problems)
        super().__init__(head)


class ResolveError(BuildError, LookupError):
    pass


class GitError(BuildError, RuntimeError):
    pass


class InstallError(BuildError, RuntimeError):
    pass


class LockError(BuildError, ValueError):
    pass


class TargetModifiedError(BuildError, RuntimeError):
    pass


class OfflineMissingError(BuildError, LookupError):
    def __init__(self, missing: list[str]):
        self.missing = list(missing)
        super().__init__(
            "offline realize needs these in the local cache but they are missing: "
            + ", ".join(self.missing)
            + " (run once with network, or drop --offline / COMFY_OFFLINE)"
        )


class ModelError(BuildError, OSError):
    """A model could not be fetched, verified or placed."""


class ChecksumMismatch(ModelError):
    """Bytes that do not hash to what was expected: the one class for it (models, cache copies, uploads)."""

    code = "checksum_mismatch"

    def __init__(self, source: str, expected: str, actual: str):
        self.source, self.expected, self.actual = source, expected, actual
        super().__init__(f"checksum mismatch for {source}: expected {expected}, got {actual}")


class DownloadError(ModelError):
    pass


class AuthError(DownloadError, PermissionError):
    pass


class NotFoundError(DownloadError, FileNotFoundError):
    pass


class ModelSpecError(ModelError, ValueError):
    """A model entry is malformed (source, checksum, target)."""


class ModelMissingError(ModelError, LookupError):
    """A model is neither at its target nor in the store, and the network may not be used."""


class DiskFullError(ModelError):
    """No space left while writing a model; the temp file was removed."""
