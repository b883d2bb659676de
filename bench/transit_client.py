#!/usr/bin/env python3
"""One side of a magic-wormhole transit relay session, for the grid benchmarks (bench/grid.py).

The transit relay's protocol (magic-wormhole-transit-relay): each side connects over TCP, sends
`please relay <64 hex token> for side <16 hex side>\n`, gets `ok\n` once the other side with the same token
arrived, then the relay pipes bytes between the two sockets.

    transit_client.py send HOST PORT TOKEN SIDE FILE        # sendfile(2) FILE, then close
    transit_client.py send HOST PORT TOKEN SIDE zero:BYTES  # BYTES of zeros from memory (loopback ceiling)
    transit_client.py recv HOST PORT TOKEN SIDE OUT BYTES   # OUT (a file, fsynced at the end, or `-` to discard)

Each prints one JSON line: bytes moved, seconds from connect to the last byte (recv: and fsync), and the
monotonic clock at both ends so a driver can line the two sides up.
"""

import json
import os
import socket
import sys
import time

CHUNK = 1 << 20


def handshake(host, port, token, side):
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(f"please relay {token} for side {side}\n".encode())
    answer = b""
    while not answer.endswith(b"\n"):
        part = sock.recv(1)
        if not part:
            raise SystemExit(f"transit relay closed before answering (got {answer!r})")
        answer += part
    if answer != b"ok\n":
        raise SystemExit(f"transit relay refused: {answer!r}")
    return sock


def send(sock, what):
    moved = 0
    if what.startswith("zero:"):
        total = int(what[5:])
        block = memoryview(bytes(CHUNK))
        while moved < total:
            moved += sock.send(block[: min(CHUNK, total - moved)])
    else:
        with open(what, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while moved < size:
                n = os.sendfile(sock.fileno(), f.fileno(), moved, size - moved)
                if n == 0:
                    break
                moved += n
    sock.shutdown(socket.SHUT_WR)
    # Wait for the relay to close its end: every byte has left it by then.
    while sock.recv(CHUNK):
        pass
    return moved


def recv(sock, out, total):
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    moved = 0
    fd = None if out == "-" else os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    while moved < total:
        n = sock.recv_into(view, min(CHUNK, total - moved))
        if n == 0:
            break
        if fd is not None:
            os.write(fd, view[:n])
        moved += n
    if fd is not None:
        os.fsync(fd)
        os.close(fd)
    return moved


def main():
    mode, host, port, token, side = sys.argv[1:6]
    t0 = time.monotonic()
    sock = handshake(host, port, token, side)
    t_ok = time.monotonic()
    if mode == "send":
        moved = send(sock, sys.argv[6])
    else:
        moved = recv(sock, sys.argv[6], int(sys.argv[7]))
    t1 = time.monotonic()
    sock.close()
    print(json.dumps({"mode": mode, "bytes": moved, "seconds": round(t1 - t0, 3),
                      "after_ok_s": round(t1 - t_ok, 3), "t0": t0, "t1": t1}))


if __name__ == "__main__":
    main()
