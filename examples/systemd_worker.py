#!/usr/bin/env python3
# examples/systemd_worker.py: a worker written for systemd socket activation
# with python3-systemd (Debian: python3-systemd), run unchanged under prefork.
# systemd.daemon.listen_fds() returns fd 3 only when LISTEN_PID is this
# process's own pid; systemd.daemon.notify() speaks to NOTIFY_SOCKET.
import os, signal, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from systemd import daemon

fds = daemon.listen_fds()
if not fds:
    sys.exit("systemd_worker: no sockets from systemd (LISTEN_PID=%s, pid %d)" % (os.environ.get("LISTEN_PID"), os.getpid()))

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("worker %s pid %d generation %s\n" % (os.environ.get("PREFORK_WORKER"), os.getpid(),
                                                     os.environ.get("PREFORK_GENERATION"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class Server(HTTPServer):
    def server_bind(self):  # the socket is prefork's, already bound and listening
        pass
    def server_activate(self):
        pass

srv = Server(("", 0), Handler, bind_and_activate=False)
srv.socket = socket.socket(fileno=fds[0])
signal.signal(signal.SIGTERM, lambda *a: (daemon.notify("STOPPING=1"), sys.exit(0)))
daemon.notify("READY=1\nSTATUS=serving")
srv.serve_forever()
