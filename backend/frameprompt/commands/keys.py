"""frameprompt keys: generate CurveZMQ key pairs for a server and its clients."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frameprompt.errors import FramePromptError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("frameprompt-keys"), help="key folder (default %(default)s)"
    )
    parser.add_argument(
        "--client",
        action="append",
        default=None,
        metavar="NAME",
        help="create a key pair for this client (repeatable; default: one named 'blender')",
    )


def run(args: argparse.Namespace) -> int:
    from frameprompt.server.security import create_keys

    clients = args.client or ["blender"]
    try:
        written = create_keys(args.out, clients)
    except FramePromptError as exc:
        print(f"frameprompt keys: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    out = args.out
    print(f"\nserver: frameprompt serve --bind tcp://0.0.0.0:5555 --curve-keys {out / 'server'}")
    for name in clients:
        print(
            f"client {name}: copy {out / name} to the client machine and point the add-on (or "
            f"`frameprompt submit --curve-keys`) at it; never copy *.key_secret of the server"
        )
    print("restart the server after adding clients: it reads authorized_clients/ at start")
    return 0
