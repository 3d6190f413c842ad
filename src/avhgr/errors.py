"""Two kinds of failure, told apart everywhere.

- ``UserError``: a file, a folder or a setting that cannot be used as asked. The command line
  prints it as one line naming what is wrong and exits 2; nothing is lost.
- Anything else is a bug in avhgr or a library: it is not the user's fault, and its traceback
  is what a report needs. ``log_bug`` keeps the traceback in a log file and gives the one line
  to show instead.
"""

from __future__ import annotations

import traceback
from pathlib import Path


class UserError(Exception):
    """A file, a folder or a setting that cannot be used as asked (one line, exit 2)."""


class RunError(UserError, RuntimeError):
    """A run folder or a training setting that cannot be used as asked."""


class SettingsChanged(RunError):
    """A run folder asked to continue (or read back) under other settings than it was started with."""

    def __init__(self, path, changed: list[str]):
        self.path, self.changed = str(path), list(changed)
        super().__init__(f"{path}: --resume with other settings than the run was started with ({', '.join(changed)}); "
                         "use another --out, or the settings it was started with")  # fmt: skip

    def __reduce__(self):  # picklable with its fields (broadcast between processes)
        return SettingsChanged, (self.path, self.changed)


def log_bug(log: Path, what: str | Path, exc: BaseException) -> str:
    """Append ``exc``'s traceback to ``log`` (one write: processes append whole entries) under the
    heading ``what``; the one-line reason to show the user."""
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"== {what}\n{''.join(traceback.format_exception(exc))}\n")
    except OSError:
        return f"internal error, a bug in avhgr ({type(exc).__name__}: {exc})"
    return f"internal error, a bug in avhgr: please report it with the traceback in {log}"
