"""The ``stride`` command: ``up``, ``ingest``, ``query``, ``sync`` and ``token``.

This is the one place that reads flags and the environment; everything below
it receives frozen settings. Every flag of the services has an environment
variable (``ENV`` below, listed in ``--help``), for containers; a flag given
on the command line wins. Errors the user can fix are printed as one line and
exit with status 1 (2 for bad usage), never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ._logs import FORMATS, configure
from .errors import CliError

__all__ = ["ENV", "main"]

#: The environment variables the services read, and the flag each stands for.
ENV = {
    "STRIDE_LOG_FORMAT": "--log-format",
    "STRIDE_NATS_URL": "--nats-url",
    "STRIDE_STORE": "--store",
    "STRIDE_OBJECTS": "--objects",
    "STRIDE_HOST": "--host",
    "STRIDE_HTTP_PORT": "--http-port",
    "STRIDE_INGEST_WORKERS": "--workers",
    "STRIDE_STREAM_REPLICAS": "--replicas",
    "STRIDE_DUPLICATE_WINDOW": "--duplicate-window",
    "STRIDE_DRAIN_TIMEOUT": "--drain-timeout",
    "STRIDE_ACK_WAIT": "--ack-wait",
    "STRIDE_CONNECT_TIMEOUT": "--connect-timeout",
    "STRIDE_LOST_AFTER": "--lost-after",
    "STRIDE_FETCH_MIB": "--fetch-mib",
    "STRIDE_READ_AHEAD_MIB": "--read-ahead-mib",
    "STRIDE_TOKENS": "--tokens",
    "STRIDE_SMTP_URL": "--smtp-url",
    "STRIDE_SMTP_FROM": "--smtp-from",
    "STRIDE_ALERT_EMAIL_TO": "--alert-email-to",
}
_FLAG_ENV = {flag: name for name, flag in ENV.items()}


def _option(parser: argparse.ArgumentParser, flag: str, *, default: Any = None, **kw: Any) -> None:
    """A flag whose default comes from its environment variable, then ``default``."""
    env = _FLAG_ENV[flag]
    kw["help"] = f"{kw.get('help', '')} [${env}]".strip()
    value = os.environ.get(env)
    # A string default goes through ``type`` as if typed on the command line.
    kw["default"] = value if value not in (None, "") else default
    kw["required"] = kw.pop("required", False) and kw["default"] is None
    parser.add_argument(flag, **kw)


def _alert_options(parser: argparse.ArgumentParser) -> None:
    """Where alert emails go (webhooks need nothing here: each alert names its URL)."""
    _option(
        parser,
        "--smtp-url",
        help="SMTP server for alert emails: smtp://[user:password@]host[:port], "
        "smtp+starttls://... or smtps://...",
    )
    _option(parser, "--smtp-from", default="stride@localhost", help="alert emails' sender")
    _option(
        parser,
        "--alert-email-to",
        default="",
        help="comma-separated recipients of alerts that name none",
    )


def _notify_settings(args: argparse.Namespace) -> Any:
    from stride.ingest.notify import NotifySettings, parse_smtp_url

    if args.smtp_url:
        try:
            parse_smtp_url(args.smtp_url)
        except ValueError as exc:
            raise CliError(f"--smtp-url: {exc}") from None
    recipients = tuple(r.strip() for r in args.alert_email_to.split(",") if r.strip())
    return NotifySettings(
        smtp_url=args.smtp_url or None, smtp_from=args.smtp_from, email_to=recipients
    )


def _mebibytes(text: str) -> int:
    try:
        mib = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MiB: {text!r}") from None
    if not 0 < mib <= 1024:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1024 MiB, got {mib}")
    return int(mib * (1 << 20))


_FETCH_MIB: dict[str, Any] = {
    "type": _mebibytes,
    "default": "16",  # IngestSettings.fetch_bytes
    "dest": "fetch_bytes",
    "metavar": "MIB",
    "help": "a worker writes about this much of batches at once, and holds two such "
    "fetches: larger is faster, smaller uses less memory (default 16)",
}

_READ_AHEAD_MIB: dict[str, Any] = {
    "type": _mebibytes,
    "default": "64",  # QuerySettings.read_ahead_bytes
    "dest": "read_ahead_bytes",
    "metavar": "MIB",
    "help": "rows that scans have read ahead are kept up to this much in all; a scan "
    "in full flight holds up to ~19 MB (default 64: about three at once)",
}

_ACK_WAIT: dict[str, Any] = {
    "type": float,
    "default": 60.0,  # IngestSettings.ack_wait_s
    "metavar": "SECONDS",
    "help": "a batch a worker took but did not acknowledge (it died) goes to another "
    "worker, or the restarted one, after this long (default 60)",
}


_TOKENS: dict[str, Any] = {
    "type": Path,
    "metavar": "FILE",
    "help": "the tokens file (`stride token create`): every request needs a bearer "
    "token from it (default: none, no auth)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stride", description="Stride experiment tracker")
    common = argparse.ArgumentParser(add_help=False)
    _option(
        common,
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
    up.add_argument(
        "--lost-after",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a running run silent this long is reported crashed (default 300)",
    )
    _option(up, "--fetch-mib", **_FETCH_MIB)
    _option(up, "--read-ahead-mib", **_READ_AHEAD_MIB)
    _option(up, "--ack-wait", **_ACK_WAIT)
    _option(up, "--tokens", **_TOKENS)
    _alert_options(up)
    _option(
        up,
        "--objects",
        help="where saved files go: file:///dir or s3://KEY:SECRET@host/bucket "
        "(default: DATA_DIR/objects)",
    )

    ingest = sub.add_parser(
        "ingest", parents=[common], help="run ingest workers: NATS -> storage (any number)"
    )
    _service_options(ingest, http_port=8081)
    _option(
        ingest,
        "--nats-url",
        default="nats://127.0.0.1:4222",
        help="NATS server URL(s), comma-separated for a cluster",
    )
    _option(ingest, "--workers", type=int, default=1, help="workers in this process (default 1)")
    _option(ingest, "--replicas", type=int, default=1, help="stream replicas: 3 on a NATS cluster")
    _option(
        ingest,
        "--duplicate-window",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="JetStream drops re-sent batches within this window (default 600)",
    )
    _option(ingest, "--ack-wait", **_ACK_WAIT)
    _option(ingest, "--fetch-mib", **_FETCH_MIB)
    _alert_options(ingest)
    query = sub.add_parser("query", parents=[common], help="serve the query HTTP API (any number)")
    _service_options(query, http_port=8080)
    _option(query, "--tokens", **_TOKENS)
    _option(query, "--read-ahead-mib", **_READ_AHEAD_MIB)
    _option(
        query,
        "--lost-after",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a running run silent this long is reported crashed (default 300)",
    )

    sync = sub.add_parser(
        "sync", parents=[common], help="upload spooled batches (offline runs, failed sends)"
    )
    sync.add_argument("dir", nargs="?", type=Path, default=None, help="default: ./.stride/spool")
    sync.add_argument("--server", default=None, help="NATS URL (default: $STRIDE_SERVER or local)")

    token = sub.add_parser("token", parents=[common], help="create, list and revoke API tokens")
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new token (printed once; only its hash is kept)")
    create.add_argument(
        "--entity", action="append", required=True, dest="entities", metavar="ENTITY",
        help="an entity it may read (repeat for several; '*' for every entity)",
    )  # fmt: skip
    create.add_argument("--read-only", action="store_true", help="it may not change runs")
    create.add_argument("--name", default="", help="what the token is for")
    actions.add_parser("list", help="the tokens (never their secrets)")
    revoke = actions.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("id", help="the token's id (from `stride token list`)")
    for action in (create, actions.choices["list"], revoke):
        _option(action, "--tokens", required=True, **_TOKENS)
    return parser


def _service_options(parser: argparse.ArgumentParser, *, http_port: int) -> None:
    _option(
        parser,
        "--store",
        required=True,
        help="storage URL: chdb:///dir or http(s)://user:pass@host:port/db[?cluster=NAME]",
    )
    _option(
        parser, "--objects", help="object store URL: file:///dir or s3://KEY:SECRET@host/bucket"
    )
    _option(parser, "--host", default="0.0.0.0", help="address to serve HTTP on (default all)")
    _option(parser, "--http-port", type=_port, default=http_port, help=f"default {http_port}")
    _option(
        parser,
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, finish the work in hand within this bound (default 30)",
    )
    _option(
        parser,
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep retrying servers at start-up this long (default 60)",
    )


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
        if args.command in ("ingest", "query"):
            return _service(args)
        if args.command == "token":
            return _token(args)
        return _sync(args)
    except CliError as exc:
        print(f"stride: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _up(args: argparse.Namespace) -> int:
    try:
        from stride.ingest import IngestSettings
        from stride.query import QuerySettings

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
        objects_url=args.objects,
        ingest=IngestSettings(
            duplicate_window_s=args.duplicate_window,
            fetch_bytes=args.fetch_bytes,
            ack_wait_s=args.ack_wait,
        ),
        query=QuerySettings(
            lost_after_s=args.lost_after,
            tokens_file=args.tokens,
            read_ahead_bytes=args.read_ahead_bytes,
        ),
        notify=_notify_settings(args),
    )
    _check_access(args.host, args.tokens)
    asyncio.run(serve(settings))
    return 0


def _check_access(host: str, tokens: Path | None) -> None:
    """Before serving: a tokens file that cannot be read stops the service (it would
    refuse every request); serving beyond loopback without tokens lets anyone who
    reaches the port read, change and delete every run: say so, loudly."""
    if tokens is not None:
        from stride.query.auth import Tokens

        try:
            active = [t for t in Tokens(tokens).list() if t.revoked_at is None]
        except (ValueError, OSError) as exc:
            raise CliError(f"cannot read the tokens file: {exc}") from None
        if not active:
            logging.getLogger("stride").warning(
                "stride: %s holds no active token: every request is refused until one is "
                "created (`stride token create --tokens %s --entity NAME`)",
                tokens,
                tokens,
            )
    if tokens is None and host not in ("127.0.0.1", "::1", "localhost"):
        logging.getLogger("stride").warning(
            "stride: serving on %s WITHOUT AUTH: anyone who can reach this port can read, "
            "change and delete every run. Create a token (`stride token create --tokens "
            "FILE --entity NAME`) and pass --tokens FILE, or listen on 127.0.0.1.",
            host,
        )


def _token(args: argparse.Namespace) -> int:
    try:
        from stride.query.auth import Tokens
    except ImportError as exc:
        raise CliError(
            f"`stride token` needs the server extra ({exc.name} is missing): "
            "pip install 'stride[server]'"
        ) from None
    try:
        tokens = Tokens(args.tokens)
        if args.action == "create":
            record, token = tokens.create(args.entities, write=not args.read_only, name=args.name)
            access = "read-write" if record.write else "read-only"
            print(f"token {record.id} ({access}, entities {', '.join(record.entities)}):")
            print(token)
            print("keep it now: it is not stored and cannot be shown again", file=sys.stderr)
        elif args.action == "list":
            for r in tokens.list():
                state = f"revoked {r.revoked_at}" if r.revoked_at else "active"
                access = "read-write" if r.write else "read-only"
                print(
                    f"{r.id}  {access:<10}  {','.join(r.entities):<20}  {state:<8}  "
                    f"created {r.created_at}  {r.name}"
                )
        else:
            record = tokens.revoke(args.id)
            print(f"token {record.id} revoked ({record.revoked_at})")
    except (KeyError, ValueError, OSError) as exc:
        raise CliError(str(exc).strip("'\"")) from None
    return 0


def _service(args: argparse.Namespace) -> int:
    try:
        from stride.ingest import IngestSettings
        from stride.query import QuerySettings

        from .services import (
            IngestServiceSettings,
            QueryServiceSettings,
            serve_ingest,
            serve_query,
        )
    except ImportError as exc:
        raise CliError(
            f"`stride {args.command}` needs the server extra ({exc.name} is missing): "
            "pip install 'stride[server]'"
        ) from None
    if args.command == "ingest":
        ingest = IngestServiceSettings(
            nats_url=args.nats_url,
            store_url=args.store,
            objects_url=args.objects,
            workers=args.workers,
            host=args.host,
            http_port=args.http_port,
            connect_timeout_s=args.connect_timeout,
            ingest=IngestSettings(
                replicas=args.replicas,
                duplicate_window_s=args.duplicate_window,
                drain_timeout_s=args.drain_timeout,
                ack_wait_s=args.ack_wait,
                fetch_bytes=args.fetch_bytes,
            ),
            notify=_notify_settings(args),
        )
        asyncio.run(serve_ingest(ingest))
        return 0
    query = QueryServiceSettings(
        store_url=args.store,
        objects_url=args.objects,
        host=args.host,
        http_port=args.http_port,
        connect_timeout_s=args.connect_timeout,
        drain_timeout_s=args.drain_timeout,
        query=QuerySettings(
            lost_after_s=args.lost_after,
            tokens_file=args.tokens,
            read_ahead_bytes=args.read_ahead_bytes,
        ),
    )
    _check_access(args.host, args.tokens)
    asyncio.run(serve_query(query))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from stride._settings import Settings
    from stride._sync import sync_spool

    settings = Settings.from_env(server=args.server, spool_dir=args.dir)
    spool_dir, server = settings.spool_dir, settings.server
    if not spool_dir.is_dir():
        raise CliError(f"no spool directory at {spool_dir}; pass the directory to sync")
    report = asyncio.run(sync_spool(settings))
    if report.logs_left and not report.batches and not report.duplicates and not report.files:
        raise CliError(
            f"cannot deliver to NATS at {server} ({report.last_error}); nothing was removed"
        )
    print(
        f"stride: synced {report.batches} batches ({report.points} points)"
        + (f" and {report.files} file(s)" if report.files else "")
        + f" from {spool_dir}"
        + (f"; {report.duplicates} were already delivered" if report.duplicates else "")
    )
    for path in report.logs_left:
        print(f"stride: warning: {path} not fully delivered; run sync again", file=sys.stderr)
    return 1 if report.logs_left else 0
