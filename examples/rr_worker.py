#!/usr/bin/env python3
"""examples/rr_worker.py: a prefork --mode rr worker in Python 3 (3.9 or later).

prefork hands each connection over fd 3: an 8-byte message (sequence number and
listener index, big-endian) with the connection's descriptor attached. The worker
acks the sequence number at once, then serves the connection. Run it as:

    prefork --mode rr -p 8080 -- python3 examples/rr_worker.py
"""
import os
import socket
import struct

body = ("hello from python rr worker %s\n" % os.environ.get("PREFORK_WORKER", "?")).encode()
response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def serve(conn):
    conn.settimeout(10)
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
    conn.sendall(response)


channel = socket.socket(fileno=3)  # SOCK_SEQPACKET on Linux, SOCK_DGRAM on macOS
while True:
    msg, fds, _, _ = socket.recv_fds(channel, 8, 1)
    if not msg:
        break  # prefork is gone
    seq, index = struct.unpack(">II", msg)
    channel.send(struct.pack(">I", seq))  # ack before touching the connection
    with socket.socket(fileno=fds[0]) as conn:
        try:
            serve(conn)
        except OSError:
            pass
