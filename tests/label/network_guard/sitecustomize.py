"""Network guard loaded into the MONAI Label server that the tests start (through PYTHONPATH).

Every connection or host name lookup to an address outside the loopback range is refused with
an OSError and appended, one line each, to the file named by ``JAPC_NETWORK_GUARD_LOG``. The
tests read that file to check that start-up and requests never try to reach the internet.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOG = os.environ.get("JAPC_NETWORK_GUARD_LOG", "")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(kind: str, target: object) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as stream:
            stream.write(f"{kind} {target!r}\n")


def _check_address(kind: str, address: object) -> None:
    # AF_UNIX sockets take a path (str or bytes); only (host, port, ...) tuples reach the network.
    if isinstance(address, tuple) and address and not _is_loopback(address[0]):
        _record(kind, address)
        raise OSError(f"network guard: connection to {address!r} refused (tests allow loopback only)")


_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex
_original_sendto = socket.socket.sendto
_original_getaddrinfo = socket.getaddrinfo


def _connect(self: socket.socket, address: object) -> None:
    _check_address("connect", address)
    return _original_connect(self, address)


def _connect_ex(self: socket.socket, address: object) -> int:
    _check_address("connect", address)
    return _original_connect_ex(self, address)


def _sendto(self: socket.socket, data: bytes, *args: object) -> int:
    _check_address("sendto", args[-1])
    return _original_sendto(self, data, *args)


def _getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
    if not _is_loopback(host):
        _record("getaddrinfo", host)
        raise socket.gaierror(socket.EAI_NONAME, f"network guard: lookup of {host!r} refused (tests allow loopback only)")
    return _original_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _connect  # type: ignore[method-assign]
socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
socket.socket.sendto = _sendto  # type: ignore[method-assign]
socket.getaddrinfo = _getaddrinfo
