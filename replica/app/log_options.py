"""--log-format and --log-level for the long-running commands, without importing logging for the others.

`register` adds the options to serve, hub and worker and wraps them so that logging is
configured (replica/app/logsetup.py, loaded only then) before they run and stopped after.
"""

from __future__ import annotations

from collections.abc import Callable

from .cli import Arg, Invocation, Registry

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOGGED_COMMANDS = ("serve", "hub", "worker")
"""Commands that get --log-format and --log-level (those that exist)."""

LOG_OPTIONS = [
    Arg("--log-format", choices=LOG_FORMATS, default="text", env="AGENTSTATE_LOG_FORMAT",
        help="log lines on stderr as text or JSON objects (ts, level, logger, msg, key=value fields); default text"),
    Arg("--log-level", choices=LOG_LEVELS, default="info", env="AGENTSTATE_LOG_LEVEL",
        help="least severe level logged; default info"),
]


def with_logging(run: Callable[[Invocation], int | None]) -> Callable[[Invocation], int | None]:
    """Wrap a long-running command: configure logging from its options, stop it when the command ends.

    The command's own `logging.basicConfig` then does nothing (the root logger has a handler).
    """

    def logged(inv: Invocation) -> int | None:
        from .logsetup import configure

        setup = configure(inv.args.log_level, inv.args.log_format)
        try:
            return run(inv)
        finally:
            setup.stop()

    logged.__doc__ = run.__doc__
    return logged


def register(cli: Registry) -> None:
    """Give serve (and hub, worker, where present) --log-format and --log-level, and configure logging for them."""
    for name in LOGGED_COMMANDS:
        command = cli.commands.get((name,))
        if command is None or any("--log-format" in arg.flags for arg in command.args):
            continue
        cli.extend(name, *LOG_OPTIONS)
        command.run = with_logging(command.run)


