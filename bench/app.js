// bench/app.js: the Node.js HTTP app every Node contender runs. It answers
// "w=<slot> pid=<pid>" so that the load client can count requests per worker.
// With $PORT it listens on it, as a user's app does (in a cluster worker,
// Node's primary or prefork --node-cluster answers); else under prefork
// (LISTEN_FDS set) it serves the inherited socket at fd 3.
'use strict';
const http = require('http');

const slot = process.env.PREFORK_WORKER || process.env.NODE_APP_INSTANCE || '-';
const body = `w=${slot} pid=${process.pid}\n`;
// /slow: 100 ms of CPU, the event loop blocked (the mixed load of bench/balance.sh).
function busy(ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {}
}
const server = http.createServer((req, res) => {
  if (req.url === '/slow') busy(100);
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});
server.keepAliveTimeout = 30000;

if (process.env.LISTEN_FDS && !process.env.PORT) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT || 8080), '127.0.0.1');
}
process.on('SIGTERM', () => server.close(() => process.exit(0)));
