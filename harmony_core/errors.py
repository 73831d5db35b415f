"""Errors that carry a message meant for the user (CLI line, UI toast), never a stack trace."""


class HarmonyError(Exception):
    """Base class: the message alone explains the problem and what to do."""


class InputError(HarmonyError, ValueError):
    """An input image, mask or parameter the studio cannot use."""


class MethodUnavailable(HarmonyError, RuntimeError):
    """A method that cannot run here (weights missing, package missing, ...); `reason` is the
    availability reason alone (the studio's status row shows it without the method's name)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class Cancelled(HarmonyError):
    """A run stopped because its user cancelled it or went away (raised between steps)."""
