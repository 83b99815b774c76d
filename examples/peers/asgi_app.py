# examples/peers/asgi_app.py: a plain ASGI app for examples/peers-check.sh, served by
# uvicorn (--fd 3) and hypercorn (--bind fd://3) on prefork's socket.
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("%s slot %s pid %d\n" % (os.environ.get("PEER", "asgi"), os.environ.get("PREFORK_WORKER"), os.getpid())).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
