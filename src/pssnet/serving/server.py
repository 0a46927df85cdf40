"""The process around the ASGI app: the listening socket, bound before anything slow happens, and
the uvicorn server, whose shutdown first drops unfinished uploads.

Binding first: a port in use, a host name that does not resolve or an address that is not this
machine's is one line (exit 2) before the bundle is calibrated, not uvicorn's log line and exit 3
after it. Any address the user names is allowed (a replica behind a load balancer listens on a
non-loopback one); the default is 127.0.0.1, and a non-loopback address gets a one-line note.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Optional

import uvicorn

from ..errors import UserError
from .app import ServingApp

BACKLOG = 2048  # uvicorn's default


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``; a bad host or port is a :class:`UserError`.
    Listening at once holds the port against a second server (with ``SO_REUSEADDR``, two sockets
    may bind one port until one listens); connections made during calibration wait in the backlog."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host {host!r} is not a known host name or address ({_reason(exc)}); "
                        "use 127.0.0.1 or an address of this machine") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts within TIME_WAIT
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UserError(_bind_message(host, port, exc)) from None
    return sock


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _bind_message(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use (another server?); pick another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {host} is not an address of this machine; use 127.0.0.1 or one of its addresses"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied (ports below 1024 need privileges); pick --port 1024 or above"
    return f"{where}: {_reason(exc)}"


def loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` is bound to a loopback address (reachable from this machine only)."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback
    except ValueError:
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose shutdown (SIGTERM, Ctrl-C) first has the app drop its unfinished
    uploads, so that it does not wait for slow clients (uvicorn closes idle connections itself,
    and answers the requests already read)."""

    def __init__(self, config: uvicorn.Config, app: ServingApp) -> None:
        super().__init__(config)
        self.serving_app = app

    async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
        self.serving_app.drain()
        await super().shutdown(sockets)
