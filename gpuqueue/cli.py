"""`gpuqueue`: migrate, web, worker, run, token, status, prune, user (contract: Command line)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from gpu_worker.backends.pipeline_options import ATTENTIONS, DTYPES, OFFLOADS
from gpuqueue import logs, prune_cli, users_cli
from queueing import db, locate
from queueing.config import Settings, check_host_id


def database_url(args: argparse.Namespace, settings: Settings) -> str:
    """--database-url, else DATABASE_URL, else the local server, else the embedded one; with
    the deployment's lock_timeout, so that every session made from it has it."""
    url = args.database_url or locate.find_database_url(settings, "gpuqueue")
    return db.with_lock_timeout(str(url), settings.lock_timeout)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from queueing.migrate import migrate

    applied = asyncio.run(migrate(database_url(args, settings), settings.migrations_dir))
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> int:
    from gpuqueue.tokens_cli import run_token_command

    return asyncio.run(run_token_command(args, database_url(args, settings)))


def _web(args: argparse.Namespace, settings: Settings) -> int:
    from web.server import serve

    serve(settings, database_url(args, settings), host=args.host, port=args.port)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from gpu_worker.main import run_worker

    try:
        host = check_host_id(args.host_id or settings.host_id)
    except ValueError as exc:
        print(f"gpuqueue worker: GPUQUEUE_HOST_ID: {exc}", file=sys.stderr)
        return 2
    return run_worker(
        dataclasses.replace(
            settings,
            max_batch=args.max_batch,
            dtype=args.dtype,
            offload=args.offload,
            attention=args.attention,
            vae_tiling=args.vae_tiling,
            variant=args.variant,
            compile=args.compile,
        ),
        database_url(args, settings),
        host=host,
        device=args.device,
        backend=args.backend,
        model=args.model,
    )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from gpuqueue.run import run_all

    return run_all(args, settings, database_url(args, settings))


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from gpuqueue.status import show_status, watch_status

    return asyncio.run(
        (watch_status if args.watch else show_status)(
            database_url(args, settings),
            as_json=args.json,
            lock_warn_s=settings.lock_warn_s,
            default_model=settings.default_model,
        )
    )


def _max_batch(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"a batch holds 1 to 64 jobs, got {value!r}")
    return n


def _host_id(value: str) -> str:
    try:
        return check_host_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line; its defaults come from `settings` (the environment's)."""
    settings = settings or Settings()
    parser = argparse.ArgumentParser(prog="gpuqueue", description=__doc__)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")
    parser.add_argument("--log-level", default=settings.log_level)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply pending SQL migrations").set_defaults(func=_migrate)

    web = sub.add_parser("web", help="the HTTP API, WebSocket and page")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    web.set_defaults(func=_web)

    for name, func, help_text in (
        ("worker", _worker, "one worker bound to one device"),
        ("run", _run, "web server and one worker in one command"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--device", default=settings.device)
        p.add_argument("--backend", choices=("diffusers", "stub"), default=settings.backend)
        p.add_argument(
            "--model",
            default=settings.model,
            help="the model this worker serves and jobs name: for diffusers a local path or "
            "a model id; for stub any name (default: the built-in tiny model, 'tiny')",
        )
        p.add_argument(
            "--max-batch",
            type=_max_batch,
            default=settings.max_batch,
            metavar="N",
            help="start up to N compatible queued jobs as one pipeline call, 1 to 64 "
            "(default: $GPUQUEUE_MAX_BATCH, else the backend's measured default for the "
            "device: diffusers on a CPU 4, else 1)",
        )
        gpu = p.add_argument_group("GPU options (diffusers; README: GPU options)")
        gpu.add_argument("--dtype", choices=DTYPES, default=settings.dtype)
        gpu.add_argument("--offload", choices=OFFLOADS, default=settings.offload)
        gpu.add_argument("--attention", choices=ATTENTIONS, default=settings.attention)
        gpu.add_argument(
            "--vae-tiling", action=argparse.BooleanOptionalAction, default=settings.vae_tiling
        )
        gpu.add_argument("--variant", default=settings.variant, help="weights variant, e.g. fp16")
        gpu.add_argument(
            "--compile", action=argparse.BooleanOptionalAction, default=settings.compile
        )
        p.add_argument(
            "--host-id",
            type=_host_id,
            help="this machine's name in GPU names host/device "
            "(default: $GPUQUEUE_HOST_ID, else the hostname)",
        )
        if name == "run":
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=8080)
            p.add_argument("--user", default=settings.run_user)
        p.set_defaults(func=func)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a new token for a user")
    create.add_argument("--user", required=True)
    create.add_argument("--admin", action="store_true")
    create.add_argument("--expires-in", type=float, metavar="SECONDS")
    revoke = token_sub.add_parser("revoke", help="revoke one token, or every token of a user")
    group = revoke.add_mutually_exclusive_group(required=True)
    group.add_argument("token", nargs="?")
    group.add_argument("--user")
    token.set_defaults(func=_token)

    status = sub.add_parser("status", help="the operator's view of the queue")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw every second until Ctrl-C (--json: a line each)",
    )
    status.set_defaults(func=_status)
    prune_cli.add_parser(sub)
    users_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The edge: the environment is read here, once, into the Settings every command gets."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"gpuqueue: {exc}", file=sys.stderr)
        return 2
    if not settings.data_dir.is_absolute():
        settings = dataclasses.replace(settings, data_dir=Path.cwd() / settings.data_dir)
    try:
        logs.check_format(settings.log_format)
    except ValueError as exc:
        print(f"gpuqueue: {exc}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    logs.configure(args.log_level, settings.log_format)
    try:
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
