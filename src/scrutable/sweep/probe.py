"""Is there a Ray cluster at `--address` / `$RAY_ADDRESS`? Answered in seconds, before ray.init.

`ray.init(address="HOST:PORT")` against an open port that is not Ray's (a web server, a
database, a typo in the port) retries for minutes and does not stop on Ctrl-C. Both of
Ray's entry points are gRPC servers (the GCS at HOST:6379, the Ray Client server at
ray://HOST:10001), and every gRPC server speaks HTTP/2, whose server must answer a
client's connection preface with a SETTINGS frame (RFC 9113, section 3.4). So the probe
connects with a plain socket, sends the preface and an empty SETTINGS frame, and waits a
few seconds for a SETTINGS frame back: anything else is "not a Ray cluster". Plain
blocking socket calls with a timeout, so Ctrl-C interrupts them at once.

    check_ray_address("10.0.0.5:6379")   # raises UserError in seconds when nothing Ray-like answers
"""

from __future__ import annotations

import socket

from scrutable.errors import UserError

TIMEOUT_S = 5.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0
SETTINGS_TYPE = 0x04
FIX = (
    "check HOST:PORT (the GCS port, 6379 by default, or ray://HOST:10001), start the cluster with "
    "`ray up cluster.yaml` or `ray start --head`, or drop --address / RAY_ADDRESS for a local sweep"
)


def speaks_http2(host: str, port: int, timeout: float = TIMEOUT_S) -> bool:
    """True when the server at host:port answers an HTTP/2 preface with a SETTINGS frame.
    Raises OSError when nothing accepts the connection."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.settimeout(timeout)
        connection.sendall(PREFACE + EMPTY_SETTINGS)
        header = b""
        try:
            while len(header) < 9:
                chunk = connection.recv(9 - len(header))
                if not chunk:
                    return False  # closed on us: HTTP/1 servers and most others do
                header += chunk
        except TimeoutError:
            return False  # silent: waiting for a protocol of its own
        except ConnectionResetError:
            return False
    return header[3] == SETTINGS_TYPE


def check_ray_address(address: str) -> None:
    """One UserError line, in seconds, unless a gRPC server answers at `address`.
    `auto` and `local` are left to ray.init (no network address to probe); http(s)://
    addresses are the Ray Jobs API's, checked where they are used."""
    if address in ("auto", "local") or address.startswith(("http://", "https://")):
        return
    host, _, port_text = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(f"Ray address {address!r} has no port: write HOST:PORT, e.g. 10.0.0.5:6379") from None
    if not host or not 0 < port < 65536:
        raise UserError(f"Ray address {address!r} is not HOST:PORT: {FIX}")
    try:
        answered = speaks_http2(host, port)
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}): {FIX}") from None
    if not answered:
        raise UserError(f"{address} is not a Ray cluster (the port is open but does not answer gRPC): {FIX}")
