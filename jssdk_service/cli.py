"""The `jssdk-service` command: serve, sign, check-config."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jssdk_service import __version__
from jssdk_service.config import load_settings
from jssdk_service.errors import ConfigError
from jssdk_service.signing import sign_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jssdk-service", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jssdk-service {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", help="TOML file with [[accounts]] (or JSSDK_CONFIG)")
    serve.add_argument("--host", help="listen address (or JSSDK_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (or JSSDK_PORT; default 8080)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N processes on one port; N > 1 needs JSSDK_CACHE_URL=redis://...")  # fmt: skip
    serve.add_argument("--sandbox", action="store_true", help="talk to an in-process WeChat emulator")
    rehearsal = serve.add_argument_group("sandbox behaviour (each also as JSSDK_SANDBOX_<NAME>)")
    rehearsal.add_argument("--sandbox-expires-in", metavar="S", help="lifetime of tokens and tickets (default 7200)")
    rehearsal.add_argument("--sandbox-errors", metavar="CODE:RATE,...",
                           help="share of calls answered with each errcode, e.g. -1:0.3,45011:0.05")  # fmt: skip
    rehearsal.add_argument("--sandbox-http500-rate", metavar="R", help="share of calls answered with HTTP 500")
    rehearsal.add_argument("--sandbox-reset-rate", metavar="R", help="share of calls whose connection is reset")
    rehearsal.add_argument("--sandbox-delay", metavar="S", help="seconds every call waits before answering")
    rehearsal.add_argument("--sandbox-dead-base", action="store_const", const="1",
                           help="put an unreachable API base first, to rehearse failover")  # fmt: skip

    sign = commands.add_parser("sign", help="print the wx.config signature of a URL (offline)")
    sign.add_argument("--ticket", required=True)
    sign.add_argument("--nonce", required=True)
    sign.add_argument("--timestamp", required=True, type=int)
    sign.add_argument("url")

    check = commands.add_parser("check-config", help="validate the configuration and exit")
    check.add_argument("--config", help="TOML file with [[accounts]] (or JSSDK_CONFIG)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ)
    try:
        if args.command == "sign":
            print(sign_url(ticket=args.ticket, nonce=args.nonce, timestamp=args.timestamp, url=args.url))
        elif args.command == "check-config":
            settings = load_settings(env, args.config)
            names = ", ".join(f"{a.name} ({a.app_id})" for a in settings.accounts)
            print(f"ok: {len(settings.accounts)} account(s): {names}")
        else:
            return _serve(args, env)
    except ConfigError as exc:
        print(f"jssdk-service: config error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace, env: dict[str, str]) -> int:
    from jssdk_service.server import run, sandbox_options

    if args.host:
        env["JSSDK_HOST"] = args.host
    if args.port is not None:
        env["JSSDK_PORT"] = str(args.port)
    if args.workers < 1:
        raise ConfigError("--workers", f"has value {args.workers}; expected 1 or more")
    sandbox = None
    if args.sandbox:
        names = ("expires_in", "errors", "http500_rate", "reset_rate", "delay", "dead_base")
        sandbox = sandbox_options({name: getattr(args, f"sandbox_{name}") for name in names}, env)
    run(env, args.config, sandbox=sandbox, workers=args.workers)
    return 0
