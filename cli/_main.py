"""The ``stride`` command: ``stride up`` and ``stride sync``.

This is the one place that reads flags and the environment; everything below
it receives frozen settings. Errors the user can fix are printed as one line
and exit with status 1 (2 for bad usage), never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ._logs import FORMATS, configure
from .errors import CliError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stride", description="Stride experiment tracker")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="logs on stderr as text lines (default) or one JSON object per line",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up", parents=[common], help="run NATS, ingest and the query API in one process"
    )
    up.add_argument("--data-dir", type=Path, default=Path(".stride"), help="default: ./.stride")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    up.add_argument("--nats-port", type=_port, default=4222, help="default 4222; 0 = any free")
    up.add_argument("--http-port", type=_port, default=8080, help="default 8080; 0 = any free")
    up.add_argument("--nats-url", default=None, help="use this NATS server instead of starting one")
    up.add_argument(
        "--duplicate-window",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="JetStream drops re-sent batches within this window (default 600)",
    )

    sync = sub.add_parser(
        "sync", parents=[common], help="upload spooled batches (offline runs, failed sends)"
    )
    sync.add_argument("dir", nargs="?", type=Path, default=None, help="default: ./.stride/spool")
    sync.add_argument("--server", default=None, help="NATS URL (default: $STRIDE_SERVER or local)")
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_format)
    try:
        if args.command == "up":
            return _up(args)
        return _sync(args)
    except CliError as exc:
        print(f"stride: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _up(args: argparse.Namespace) -> int:
    try:
        from stride.ingest import IngestSettings

        from .up import UpSettings, serve
    except ImportError as exc:
        raise CliError(
            f"`stride up` needs the server extra ({exc.name} is missing): "
            "pip install 'stride[server]'"
        ) from None
    settings = UpSettings(
        data_dir=args.data_dir,
        host=args.host,
        nats_port=args.nats_port,
        http_port=args.http_port,
        nats_url=args.nats_url,
        ingest=IngestSettings(duplicate_window_s=args.duplicate_window),
    )
    asyncio.run(serve(settings))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from stride._settings import Settings
    from stride._sync import sync_spool

    settings = Settings.from_env(server=args.server, spool_dir=args.dir)
    spool_dir, server = settings.spool_dir, settings.server
    if not spool_dir.is_dir():
        raise CliError(f"no spool directory at {spool_dir}; pass the directory to sync")
    report = asyncio.run(sync_spool(settings))
    if report.logs_left and not report.batches and not report.duplicates:
        raise CliError(
            f"cannot deliver to NATS at {server} ({report.last_error}); nothing was removed"
        )
    print(
        f"stride: synced {report.batches} batches ({report.points} points) from {spool_dir}"
        + (f"; {report.duplicates} were already delivered" if report.duplicates else "")
    )
    for path in report.logs_left:
        print(f"stride: warning: {path} not fully delivered; run sync again", file=sys.stderr)
    return 1 if report.logs_left else 0
