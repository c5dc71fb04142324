"""Errors meant for the user, not for a traceback.

A `UserError` carries one paragraph that names the problem and the fix. The
CLI prints it and exits with status 2; nothing in the run folder is touched
after it is raised.
"""

from __future__ import annotations

import textwrap

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input: a config, a path or a checkpoint the user can fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def paragraph(self, width: int = 88) -> str:
        return textwrap.fill(f"error: {self}", width=width, break_long_words=False, break_on_hyphens=False)

# A multi-process run in which a rank failed or a collective timed out.
EXIT_COLLECTIVE_FAILURE = 3
