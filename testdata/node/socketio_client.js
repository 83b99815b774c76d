// socket.io clients forced to the polling transport, one per loopback source
// address (argv: url, then the sources), each on an http.Agent bound to its
// address and without keep-alive, so every poll is a new connection that the
// supervisor places on its own. Each asks "whoami" ROUNDS times. It prints
// {"errors": N, "answers": {source: ["slot pid", ...]}}: a session error
// ("Session ID unknown", seen as a connect error or a transport error) counts one.
'use strict';
const http = require('http');
const { io } = require('socket.io-client');

const [url, ...sources] = process.argv.slice(2);
const rounds = Number(process.env.ROUNDS || 5);
let errors = 0;
const answers = {};

function client(src) {
  return new Promise((resolve) => {
    answers[src] = [];
    const socket = io(url, {
      transports: ['polling'], upgrade: false, reconnection: false, forceNew: true, timeout: 10000,
      agent: new http.Agent({ localAddress: src, keepAlive: false }),
    });
    let done = false;
    const finish = (err) => {
      if (done) return;
      done = true;
      if (err) errors++;
      socket.close();
      resolve();
    };
    socket.on('connect_error', () => finish(true));
    socket.on('disconnect', (reason) => finish(reason !== 'io client disconnect'));
    socket.on('connect', async () => {
      for (let i = 0; i < rounds; i++) {
        try {
          answers[src].push(await socket.timeout(10000).emitWithAck('whoami'));
        } catch (e) {
          return finish(true);
        }
      }
      finish(false);
    });
  });
}

Promise.all(sources.map(client)).then(() => {
  console.log(JSON.stringify({ errors, answers }));
  process.exit(0);
});
