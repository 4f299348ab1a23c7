"""The ``wr`` command: ``serve``, ``keygen``, ``token decode``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from wr import __version__
from wr.admincli import add_admin_commands
from wr.config import Config, ConfigError, load_config
from wr.state import StateError, prepare_state_dir
from wr.supervisor import EXIT_CANNOT_START, StartError, serve
from wr.tokens import KeyRing, KeyRingError

__all__ = ["main"]

LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"

# Exit statuses: 2 is argparse's own for usage errors, kept for config too.
EXIT_CONFIG = 2
EXIT_INVALID_TOKEN = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"wr: config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyRingError as exc:
        print(f"wr: key ring: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wr", description="A virtual waiting room server."
    )
    parser.add_argument("--version", action="version", version=f"wr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    _add_config_flags(serve)
    serve.add_argument("--host", help="listen address (server.host)")
    serve.add_argument("--port", type=int, help="listen port (server.port)")
    serve.add_argument("--workers", type=int, help="processes (server.workers)")
    serve.set_defaults(run=_serve)

    keygen = commands.add_parser(
        "keygen", help="create the signing key ring if it does not exist"
    )
    _add_config_flags(keygen)
    keygen.add_argument(
        "--rotate",
        action="store_true",
        help="add a new signing key; older keys verify until their tokens expire",
    )
    keygen.set_defaults(run=_keygen)

    token = commands.add_parser("token", help="inspect tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION")
    decode = token_commands.add_parser(
        "decode", help="print a token's header and claims, and check its signature"
    )
    decode.add_argument("token", help="the JWT, as issued by wr")
    _add_config_flags(decode)
    decode.set_defaults(run=_token_decode)
    token.set_defaults(run=lambda args: _usage(token))

    add_admin_commands(commands, _add_config_flags, _load)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: WR_CONFIG)")
    parser.add_argument("--state-dir", help="state directory (server.state_dir)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def _load(args: argparse.Namespace, *flags: str) -> Config:
    overrides = {"state_dir": args.state_dir}
    overrides.update({flag: getattr(args, flag) for flag in flags})
    return load_config(args.config, overrides=overrides)


def _serve(args: argparse.Namespace) -> int:
    config = _load(args, "host", "port", "workers")
    logging.basicConfig(
        level=config.server.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr
    )
    try:
        return serve(lambda: _load(args, "host", "port", "workers"))
    except StartError as exc:
        print(f"wr: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except OSError as exc:
        print(
            f"wr: cannot serve on {config.server.host}:{config.server.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_START


def _keygen(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        prepare_state_dir(config.state_dir)
    except StateError as exc:
        print(f"wr: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    tokens = config.tokens
    ring, created = KeyRing.load_or_create(config.state_dir, tokens.algorithm)
    path = config.state_dir / "keys.json"
    if args.rotate and not created:
        # The new key is of the configured algorithm: rotating is also how
        # a ring switches between HS256 and EdDSA.
        keep_s = max(tokens.queue_ttl_s, tokens.access_ttl_s)
        ring = ring.rotate(time.time(), keep_s, tokens.algorithm)
        ring.save(config.state_dir)
        print(
            f"rotated: {path} active kid {ring.active} ({tokens.algorithm}); "
            f"send SIGHUP to a running wr (systemctl reload wr) to sign with it"
        )
        return 0
    verb = "created" if created else "exists"
    alg = ring.algorithm_of(ring.active)
    print(f"{verb}: {path} active kid {ring.active} ({alg})")
    if alg != tokens.algorithm:
        print(
            f"wr: tokens.algorithm is {tokens.algorithm}: run `wr keygen --rotate`",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return 0


def _token_decode(args: argparse.Namespace) -> int:
    """Decode with pyjwt (the reference), then check the signature if we can."""
    try:
        header = jwt.get_unverified_header(args.token)
        claims = jwt.decode(args.token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        print(f"wr: not a JWT: {exc}", file=sys.stderr)
        return EXIT_INVALID_TOKEN
    # json, not orjson: a token can carry integers wider than 64 bits.
    print(json.dumps({"header": header, "claims": claims}, indent=2))

    config = _load(args)
    try:
        ring = KeyRing.load(Path(config.state_dir))
    except FileNotFoundError:
        print(f"signature: not checked (no key ring in {config.state_dir})")
        return 0
    kid = str(header.get("kid"))
    secret = ring.secrets.get(kid)
    if secret is None:
        print("signature: unknown kid")
        return EXIT_INVALID_TOKEN
    alg = ring.algorithm_of(kid)
    key: bytes | Ed25519PublicKey = secret
    if alg == "EdDSA":
        key = Ed25519PrivateKey.from_private_bytes(secret).public_key()
    try:
        jwt.decode(
            args.token,
            key,
            algorithms=[alg],
            options={"verify_exp": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        print(f"signature: invalid ({exc})")
        return EXIT_INVALID_TOKEN
    print("signature: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
