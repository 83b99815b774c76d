// bench/cluster.js: Node's own cluster running bench/app.js with $WORKERS
// workers (default 2). SCHED=rr uses cluster.SCHED_RR (the primary accepts and
// hands connections round robin); SCHED=none uses cluster.SCHED_NONE (every
// worker accepts on the shared socket).
'use strict';
const cluster = require('cluster');
const path = require('path');

if (cluster.isPrimary) {
  cluster.schedulingPolicy = process.env.SCHED === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
  const n = Number(process.env.WORKERS || 2);
  for (let i = 0; i < n; i++) cluster.fork({ PREFORK_WORKER: String(i) });
  let stopping = false;
  process.on('SIGTERM', () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 2000).unref();
  });
  cluster.on('exit', () => {
    if (stopping && Object.keys(cluster.workers).length === 0) process.exit(0);
  });
} else {
  require(path.join(__dirname, 'app.js'));
}
