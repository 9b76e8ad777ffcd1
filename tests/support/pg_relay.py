"""A TCP relay between a database client and its server that counts round trips: each time the
server answers after the client spoke, one more. An oracle independent of the client's code
(it reads nothing but the direction of the bytes)."""

from __future__ import annotations

import socket
import threading


class CountingRelay:
    """Listen on a loopback port and relay each connection to `(host, port)`; `turns` counts
    the server's answers (a burst of bytes from the server after bytes from the client)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.turns = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            spoke = {"client": False}
            threading.Thread(target=self._pipe, args=(client, server, spoke, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, spoke, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, spoke: dict, from_server: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if from_server and spoke["client"]:
                        self.turns += 1
                    spoke["client"] = not from_server
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
