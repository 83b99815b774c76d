// An unmodified socket.io server, as its docs write one: nothing in it knows
// about prefork, and no @socket.io/sticky. APP_LISTEN (set by the test) is the
// port. Each client asks "whoami" and gets the slot and pid that answered.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const server = http.createServer();
const io = new Server(server);
io.on('connection', (socket) => {
  socket.on('whoami', (ack) => ack(`${process.env.PREFORK_WORKER} ${process.pid}`));
});
server.listen(Number(process.env.APP_LISTEN), '127.0.0.1');
