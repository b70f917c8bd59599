"""One exception hierarchy; each class carries the exit code DESIGN.md §3 gives it.

The CLI boundary turns any ``ApStorageError`` into one line on stderr and that exit
code. Messages must never contain secrets: build them from names, hosts and keys only.
"""

from __future__ import annotations


class ApStorageError(Exception):
    """Base class. ``exit_code`` 1 means: finished, with failures."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UnreadableFileError(ApStorageError):
    """One file's bytes cannot be given back as the file: an unknown compression, damaged
    or truncated compressed data, or fewer/more bytes than its row records. It fails that
    file alone (exit 1 for `get`, a reported failure in runs over many files)."""

    exit_code = 1


class UsageError(ApStorageError):
    exit_code = 2


class ConfigError(ApStorageError):
    exit_code = 3


class NotFoundError(ApStorageError):
    exit_code = 4


class PermissionDeniedError(ApStorageError):
    exit_code = 5


class NotSupportedError(ApStorageError):
    exit_code = 6


class TooLargeError(ApStorageError):
    exit_code = 7


class BackendUnavailableError(ApStorageError):
    exit_code = 8
