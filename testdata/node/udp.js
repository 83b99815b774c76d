// An ordinary Node.js UDP echo server: dgram.bind() in a cluster worker asks
// the primary for a shared socket.
'use strict';
const dgram = require('dgram');
const sock = dgram.createSocket('udp4');
sock.on('message', (msg, rinfo) => sock.send(`${process.pid} ${msg}`, rinfo.port, rinfo.address));
sock.bind(Number(process.env.APP_LISTEN), '127.0.0.1');
