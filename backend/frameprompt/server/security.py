"""Who may talk to the server: the loopback-only default, CurveZMQ keys, and the ZAP authenticator.

Key folders (written by `frameprompt keys`, see `create_keys`):

    <out>/server/server.key, server.key_secret     the server's pair   -> frameprompt serve --curve-keys <out>/server
    <out>/server/authorized_clients/<name>.key     public keys the server accepts (one per client)
    <out>/<name>/client.key, client.key_secret     a client's pair     -> FramePromptClient(curve_keys=<out>/<name>)
    <out>/<name>/server.key                        the server's public key, so the client can verify it
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from frameprompt.errors import FramePromptError
from frameprompt_blender.wire.protocol import ProtocolError, check_name, is_loopback_address


class InsecureBindError(FramePromptError, ValueError):
    code = "insecure_bind"


class KeysError(FramePromptError, ValueError):
    code = "bad_keys"


def check_bind(address: str, *, curve: bool, insecure: bool) -> None:
    """Refuse to listen beyond this machine without CurveZMQ keys, unless explicitly told to."""
    try:
        local = is_loopback_address(address)
    except ValueError as exc:
        raise InsecureBindError(str(exc), "use --bind tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555") from None
    if not local and not curve and not insecure:
        raise InsecureBindError(
            f"refusing to listen on {address} without encryption: anyone who can reach it could use the GPU",
            "create keys with `frameprompt keys --out KEYS` and pass --curve-keys KEYS/server, "
            "or bind to tcp://127.0.0.1:PORT, or pass --insecure on a trusted network",
        )


@dataclass
class ServerKeys:
    public: bytes
    secret: bytes
    authorized_dir: Path


def load_server_keys(directory: str | os.PathLike) -> ServerKeys:
    d = Path(directory).expanduser()
    secret_file = d / "server.key_secret"
    if not secret_file.is_file():
        raise KeysError(f"no server.key_secret in {d}", "create keys with `frameprompt keys --out DIR`")
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if not secret:
        raise KeysError(f"{secret_file} holds no secret key", "create keys with `frameprompt keys --out DIR`")
    authorized = d / "authorized_clients"
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise KeysError(
            f"no client public keys in {authorized}",
            "add a client with `frameprompt keys --out DIR --client NAME`",
        )
    return ServerKeys(public, secret, authorized)


def start_authenticator(context: zmq.Context, keys: ServerKeys) -> ThreadAuthenticator:
    """Start the ZAP handler: only clients whose public key is in `authorized_clients/` get in."""
    if not zmq.has("curve"):
        raise KeysError("this libzmq was built without CurveZMQ", "install pyzmq from its official wheels")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.authorized_dir))
    return auth


def apply_server_keys(socket: zmq.Socket, keys: ServerKeys) -> None:
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def create_keys(out: str | os.PathLike, clients: list[str]) -> list[Path]:
    """Create the server pair (once) and a pair per client name; returns the files written."""
    out = Path(out).expanduser()
    server_dir = out / "server"
    authorized = server_dir / "authorized_clients"
    authorized.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not (server_dir / "server.key_secret").exists():
        pub, sec = zmq.auth.create_certificates(str(server_dir), "server")
        os.chmod(sec, 0o600)
        written += [Path(pub), Path(sec)]
    for name in clients:
        try:
            check_name(name, "client name")
        except ProtocolError as exc:
            raise KeysError(exc.message, exc.hint) from None
        if name == "server":
            raise KeysError("'server' is reserved", "pick another client name")
        client_dir = out / name
        if (client_dir / "client.key_secret").exists():
            raise KeysError(
                f"client {name!r} already has keys in {client_dir}", "pick another name or delete it"
            )
        client_dir.mkdir(parents=True, exist_ok=True)
        pub, sec = zmq.auth.create_certificates(str(client_dir), "client")
        os.chmod(sec, 0o600)
        shutil.copyfile(pub, authorized / f"{name}.key")
        shutil.copyfile(server_dir / "server.key", client_dir / "server.key")
        written += [Path(pub), Path(sec), authorized / f"{name}.key", client_dir / "server.key"]
    return written
