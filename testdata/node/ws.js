// A WebSocket server on npm's ws, as its users write one, knowing nothing of
// prefork: it greets each client with its pid, and on SIGTERM says goodbye,
// closing every client with 1001 (going away), then exits. NODE_PATH (set by
// the test) finds ws; APP_LISTEN is the port.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const server = http.createServer((req, res) => res.end(String(process.pid)));
const wss = new WebSocketServer({ server });
wss.on('connection', (ws) => ws.send(String(process.pid)));

process.on('SIGTERM', () => {
  console.log(`ws worker ${process.pid}: closing ${wss.clients.size} clients with 1001`);
  let open = wss.clients.size;
  const done = () => process.exit(0);
  if (open === 0) done();
  for (const ws of wss.clients) {
    ws.on('close', () => { if (--open === 0) done(); });
    ws.close(1001, 'server going away');
  }
  setTimeout(done, 2000);
});

server.listen(Number(process.env.APP_LISTEN));
