#!/usr/bin/env python3
# examples/sync_worker.py: a synchronous worker, one request at a time, as a C
# accept loop or a sync Python app server serves them: a blocking accept on
# fd 3, then DELAY seconds of "I/O" per request (default 0.2). It is the kind of
# worker prefork's elastic pool (-n MIN:MAX) is for: such workers need more
# processes than CPUs while requests wait on I/O. On SIGTERM it finishes the
# request in hand, then exits; connections still queued go to the others.
import os, signal, socket, struct, time

delay = float(os.environ.get("DELAY", "0.2"))
listener = socket.socket(fileno=3)  # blocking, as prefork passes it (never settimeout: the flag is shared)

# SIGTERM stays blocked, so it never interrupts a request; the loop looks for
# it between requests. A receive timeout on the socket makes a blocking accept
# give up every 200 ms to look (every worker of the socket shares it: they all
# run this program).
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
timeval = struct.pack("@ll", 0, 200000)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)

path = os.environ.get("NOTIFY_SOCKET")
if path:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", path)

while signal.SIGTERM not in signal.sigpending():
    try:
        conn, _ = listener.accept()
    except BlockingIOError:  # the receive timeout: look for SIGTERM
        continue
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 0))  # it inherited the timeout
    with conn:
        req = b""
        while b"\r\n\r\n" not in req and len(req) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            req += chunk
        time.sleep(delay)
        body = b"pid %d\n" % os.getpid()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
