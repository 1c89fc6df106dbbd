"""A TCP proxy in front of a real Redis that can lose one answer, for tests of what a lost reply does.

Everything is forwarded both ways until `lose_answer_to(pattern)`: then the
next request containing pattern still reaches Redis, which runs it, but its
answer never comes back: the proxy keeps what Redis sends on that connection
until a whole integer reply (``:n``) is in, records it, and closes both
sides, as a shard that stops as it answers would. One thread, one selector.
"""

from __future__ import annotations

import selectors
import socket
import threading


class AnswerLosingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.lost: list[bytes] = []  # the answers swallowed, as Redis sent them
        self.lost_event = threading.Event()
        self._pattern: bytes | None = None
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        # each socket -> the other socket of its pair
        self._peers: dict[socket.socket, socket.socket] = {}
        self._doomed: dict[socket.socket, bytearray] = {}  # server socket -> what it sent since
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="redis-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_answer_to(self, pattern: bytes) -> None:
        """Lose the answer to the next request that contains pattern (and close its connection)."""
        with self._lock:
            self._pattern = pattern
            self.lost_event.clear()

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        for sock in list(self._peers):
            sock.close()
        self.listener.close()

    def _run(self) -> None:
        while not self._closing:
            for key, _ in self._selector.select(0.1):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        server = socket.create_connection(("127.0.0.1", self.target_port))
        for sock, role in ((client, "client"), (server, "server")):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, role)
        self._peers[client], self._peers[server] = server, client

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            self._doomed.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _pump(self, sock: socket.socket, role: str) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        peer = self._peers[sock]
        if role == "client":
            with self._lock:
                if self._pattern is not None and self._pattern in data:
                    self._pattern = None
                    self._doomed[peer] = bytearray()
        elif sock in self._doomed:
            kept = self._doomed[sock]
            kept += data
            if kept.endswith(b"\r\n") and (kept.startswith(b":") or b"\r\n:" in kept):
                self.lost.append(bytes(kept))
                self._drop(sock)
                self.lost_event.set()
            return
        peer.sendall(data)
