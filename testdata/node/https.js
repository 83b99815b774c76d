// An ordinary Node.js HTTPS server: TLS servers send their session ticket keys
// in queryServer and crash unless the primary echoes them.
'use strict';
const fs = require('fs');
const https = require('https');

https.createServer({
  key: fs.readFileSync(process.env.TLS_KEY),
  cert: fs.readFileSync(process.env.TLS_CERT),
}, (req, res) => res.end(String(process.pid))).listen(Number(process.env.APP_LISTEN));
