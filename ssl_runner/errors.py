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

    exit_code = EXIT_USER_ERROR
    # What the stage, the run and a sweep's table record it as.
    status = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(self._message_raised_in_worker(message).split()))

    @classmethod
    def _message_raised_in_worker(cls, message: str) -> str:
        """The worker's own message when `message` is torch's re-raise text, else `message`.

        A DataLoader worker's error is re-created in the main process from its
        traceback text (torch._utils.ExceptionWrapper.reraise): "Caught UserError
        in DataLoader worker process 0.\nOriginal Traceback (most recent call
        last):\n ...\nssl_runner.errors.UserError: <message>". Joined into one
        paragraph, that would bury the message under the traceback.
        """
        caught, original, traceback_text = message.partition("\nOriginal Traceback (most recent call last):\n")
        if not original or not caught.startswith("Caught ") or "\n" in caught:
            return message
        # The traceback's line for the error is "<module>.<qualname>: <message>" (no
        # module for __main__ and builtins); the last such line is the error raised
        # when the traceback also shows its cause.
        module = "" if cls.__module__ in ("__main__", "builtins") else f"{cls.__module__}."
        name = f"{module}{cls.__qualname__}"
        start = traceback_text.rfind(f"\n{name}: ")
        if start < 0:
            return message
        return traceback_text[start + len(name) + 3:].split("\n", 1)[0]

    def paragraph(self, width: int = 88) -> str:
        return textwrap.fill(f"error: {self}", width=width, break_long_words=False, break_on_hyphens=False)

# A multi-process run in which a rank failed or a collective timed out.
EXIT_COLLECTIVE_FAILURE = 3

# A training stage whose loss or weights stopped being finite.
EXIT_DIVERGED = 4


class TrainingDiverged(UserError):
    """A non-finite loss, gradient or weight: the stage stops at once, and its
    last checkpoint still holds the last finite state."""

    exit_code = EXIT_DIVERGED
    status = "diverged"
