"""A TCP proxy of a test's own between a process and its broker, that can go silent.

`cut()` stops forwarding in both directions without closing any socket: each side's
connection stays open, what it writes is left unread in the proxy, and nothing comes back,
as a firewall or a network blip leaves a half-open connection (each side's kernel still
acknowledges the other's TCP keepalive probes, so only application-level timeouts and
heartbeats can notice). New connections are accepted and left silent too. `resume()`
forwards again whatever was left, on every connection both sides kept open.
"""
from __future__ import annotations

import selectors
import socket
import threading

from tests.support.redis_server import free_port


class SilentProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)  # accept() only when the selector says one waits
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._pending: list[socket.socket] = []  # accepted while cut: connected upstream on resume
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.connections = 0
        self._thread = threading.Thread(target=self._run, name="silent-proxy", daemon=True)
        self._thread.start()

    def url_for(self, url: str) -> str:
        """`url` with the target's port replaced by the proxy's."""
        return url.replace(f":{self.target[1]}", f":{self.port}", 1)

    def cut(self) -> None:
        self._forwarding.clear()
        self._wake()

    def resume(self) -> None:
        self._forwarding.set()
        self._wake()

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=10)
        for sock in list(self._peers) + self._pending + [self._listener, self._wake_r, self._wake_w]:
            try:
                sock.close()
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):  # read only when readable; a send may wait a little
            sock.settimeout(10)
        self._peers[client], self._peers[upstream] = upstream, client
        self.connections += 1
        if self._forwarding.is_set():
            self._selector.register(client, selectors.EVENT_READ, "data")
            self._selector.register(upstream, selectors.EVENT_READ, "data")

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for one in (sock, other):
            if one is None:
                continue
            self._peers.pop(one, None)
            try:
                self._selector.unregister(one)
            except (KeyError, ValueError):
                pass
            try:
                one.close()
            except OSError:
                pass

    def _set_forwarding(self, on: bool) -> None:
        """Watch (or stop watching) every connection's sockets; connections accepted while
        cut get their upstream now."""
        for sock in list(self._peers):
            registered = sock in self._selector.get_map()
            if on and not registered:
                self._selector.register(sock, selectors.EVENT_READ, "data")
            elif not on and registered:
                self._selector.unregister(sock)
        if on:
            pending, self._pending = self._pending, []
            for client in pending:
                self._pair(client)

    def _run(self) -> None:
        forwarding = True
        while not self._stop.is_set():
            if self._forwarding.is_set() != forwarding:
                forwarding = self._forwarding.is_set()
                self._set_forwarding(forwarding)
            for key, _ in self._selector.select(timeout=0.5):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                elif key.data == "accept":
                    try:
                        client, _ = self._listener.accept()
                    except BlockingIOError:
                        continue
                    if forwarding:
                        self._pair(client)
                    else:
                        self._pending.append(client)
                elif forwarding and key.fileobj in self._peers:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(sock)
                        continue
                    try:
                        self._peers[sock].sendall(data)
                    except OSError:
                        self._drop(sock)
