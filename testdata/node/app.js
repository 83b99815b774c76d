// An ordinary Node.js HTTP server, as a user writes it: nothing in it knows
// about prefork. APP_LISTEN (set by the test) is a port, a unix socket path, or
// "fd:N" for listen({fd: N}).
'use strict';
const http = require('http');

function busy(ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {}
}

const server = http.createServer((req, res) => {
  if (req.url === '/slow') {
    setTimeout(() => res.end(String(process.pid)), 1000);
    return;
  }
  if (req.url === '/id') {
    // What a cluster worker knows about itself.
    const cluster = require('cluster');
    res.end(JSON.stringify({ isPrimary: cluster.isPrimary === true || cluster.isMaster === true,
      id: cluster.worker && cluster.worker.id, slot: process.env.PREFORK_WORKER,
      channel: process.env.NODE_CHANNEL_FD, mode: process.env.NODE_CHANNEL_SERIALIZATION_MODE }));
    return;
  }
  if (req.url === '/quit') {
    // The worker leaves on its own, the cluster way: exitedAfterDisconnect.
    res.end(String(process.pid), () => require('cluster').worker.disconnect());
    return;
  }
  if (req.url === '/block') {
    busy(2000); // the event loop (and the cluster channel) is stuck meanwhile
  }
  res.end(String(process.pid));
});

// APP_START_MS: the app takes that long to start (a database to connect to)
// before it listens; APP_FAIL_IF: a file whose presence makes it fail then, as
// a bad release does.
function listen() {
  if (process.env.APP_FAIL_IF && require('fs').existsSync(process.env.APP_FAIL_IF)) {
    console.error('app: cannot start');
    process.exit(1);
  }
  // APP_LISTEN_FILE: where to read APP_LISTEN at start (a release's config).
  const on = process.env.APP_LISTEN_FILE
    ? require('fs').readFileSync(process.env.APP_LISTEN_FILE, 'utf8').trim() : process.env.APP_LISTEN;
  if (on.startsWith('fd:')) {
    server.listen({ fd: Number(on.slice(3)) });
  } else if (on.startsWith('/')) {
    server.listen(on);
  } else {
    server.listen(Number(on));
  }
}
setTimeout(listen, Number(process.env.APP_START_MS || 0));
