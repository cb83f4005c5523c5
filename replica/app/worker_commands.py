"""`agentstate worker`: compact rooms kept in Redis Streams into durable replicas and trim the streams.

Imported for `--help` and the worker command only; the worker itself (transport.redis_worker)
loads when it runs. Logging (--log-format, --log-level) is set up by `log_options`.
"""

from __future__ import annotations

import sys

from .cli import Arg, Invocation, Registry, UsageError

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _positive(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _not_negative(text: str) -> float:
    """Zero or more seconds (argparse type)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected zero or more seconds, got {text!r}")
    return value


WORKER_OPTIONS = [
    Arg("--redis", required=True, env="AGENTSTATE_REDIS", metavar="URL",
        help="Redis the hubs keep rooms in (redis://host:port/db)"),
    Arg("--data", dest="worker_data", default=None, metavar="DIR",
        help="directory of the durable copies, one replica per room under DIR/rooms (default: the global --data)"),
    Arg("--lease", type=_positive, default=10.0, metavar="SECONDS",
        help="a job idle this long is taken by any worker: the delay between a room's compactions, and how "
             "soon a dead worker's job is taken over (default 10)"),
    Arg("--min-age", type=_not_negative, default=60.0, metavar="SECONDS",
        help="keep stream entries at least this long after a snapshot covers them, for hubs still reading "
             "them (default 60)"),
    Arg("--consumer", default=None, metavar="NAME",
        help="this worker's name in the consumer group (default host-pid-random); must be unique"),
    Arg("--prefix", default="agentstate", help="key prefix the hubs use (default agentstate)"),
]


def worker_cmd(inv: Invocation) -> int:
    """Run a worker in the foreground until SIGTERM or Ctrl-C."""
    import asyncio

    url = inv.args.redis
    if not url.startswith(REDIS_SCHEMES):
        raise UsageError(f"--redis must be a redis://, rediss:// or unix:// URL, got {url!r}")
    data = inv.args.worker_data or str(inv.session.path)
    return asyncio.run(_run_worker(inv, url, data))


async def _run_worker(inv: Invocation, url: str, data: str) -> int:
    """Take jobs until a stop signal; the job in hand is finished first (or taken over after its lease)."""
    import asyncio
    import os
    import signal

    from transport.redis_worker import RedisWorker

    worker = RedisWorker(url, data, prefix=inv.args.prefix, consumer=inv.args.consumer,
                         lease=inv.args.lease, min_age=inv.args.min_age)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"agentstate worker {worker.consumer}: rooms from Redis {url} into {os.path.abspath(data)}/rooms "
          f"(pid {os.getpid()}); stop: Ctrl-C or kill -TERM {os.getpid()}", file=sys.stderr, flush=True)
    try:
        await worker.run(stop)
    finally:
        await worker.close()
    return 0


def register(cli: Registry) -> None:
    """Add `agentstate worker`."""
    cli.command(
        "worker", "Compact rooms kept in Redis Streams (hub --redis) into durable replicas; trim the streams.",
        *WORKER_OPTIONS,
        description=(
            "Workers share the jobs with a Redis consumer group: run one or more, anywhere. A job\n"
            "folds a room's snapshot and stream into its replica directory under DIR/rooms (fsynced),\n"
            "stores the new snapshot in Redis, then trims what it covers (see docs/hub.md)."),
    )(worker_cmd)
