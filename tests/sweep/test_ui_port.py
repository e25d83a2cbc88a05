"""`scrutable ui`'s port check answers as the MLflow server will bind: a port whose last
connections are closing (TIME_WAIT, as after a restart of `ui`) is free, a listening one is not."""

from __future__ import annotations

import socket

import pytest

from scrutable.errors import UserError
from scrutable.sweep.ui import HOST, check_port


def port_in_time_wait() -> int:
    """A port whose listener is gone and whose server side closed a connection first. The
    listener sets SO_REUSEADDR like MLflow's server (uvicorn) does; Linux lets a new socket
    bind over TIME_WAIT only when both sides set it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    client = socket.create_connection((HOST, port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its end of the connection waits in TIME_WAIT
    client.recv(1)  # sees the close
    client.close()
    listener.close()
    return port


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free():
    port = port_in_time_wait()
    with socket.socket() as plain, pytest.raises(OSError):  # what the check without SO_REUSEADDR saw
        plain.bind((HOST, port))
    check_port(port)


def test_a_port_with_a_listener_is_refused():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen()
        with pytest.raises(UserError, match="cannot listen on"):
            check_port(int(listener.getsockname()[1]))
