# examples/wsgi_app.py: a plain WSGI app for examples/peers-check.sh, served by
# gunicorn, which adopts prefork's socket through LISTEN_FDS/LISTEN_PID and
# says READY=1 on NOTIFY_SOCKET as it does under systemd (and by uWSGI and
# Twisted, named by $PEER).
import os

def app(environ, start_response):
    body = ("%s slot %s pid %d\n" % (os.environ.get("PEER", "gunicorn"), os.environ.get("PREFORK_WORKER"), os.getppid())).encode()
    start_response("200 OK", [("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]
