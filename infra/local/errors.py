"""Errors of the local stack: a child process that failed, a start that was interrupted, a configuration it
cannot run."""

from __future__ import annotations

from radstream.errors import RadStreamError


class ChildFailed(RadStreamError, RuntimeError):
    """A child process exited, or did not become ready; the message names it and why."""


class Interrupted(RadStreamError):
    """A stop was asked for (a signal) while a child was starting."""


class StackError(RadStreamError, RuntimeError):
    """The stack cannot start as configured; the message says why and what to do."""


class TritonNotInstalled(RadStreamError, RuntimeError):
    """The nvidia-pytriton distribution (which bundles tritonserver) is not importable."""
