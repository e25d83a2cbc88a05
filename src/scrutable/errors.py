"""User-facing errors: one line that names the problem and the fix, never a traceback.

Anything a user can cause (a bad argument, a missing file, an offline hub, a malformed
sweep file) raises `UserError`; the CLI prints its message as one line and exits 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 2
