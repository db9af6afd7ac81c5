// Run it twice with the same arguments: the second process takes over from the first, listener
// and open keep-alive connections included, and the first one exits once it has nothing left.
//   node examples/http-server.mjs /tmp/http.takeover 8000
import http from 'node:http';
import { Takeover } from 'socket-takeover';

const [path = '/tmp/http.takeover', port = '8000'] = process.argv.slice(2);

const takeover = new Takeover({ path });
// Before anything slow: Node exits on a SIGUSR2 nobody listens to, and a successor may get one
// while it starts. upgrade() asked for before this process serves waits until it does.
process.on('SIGUSR2', () => takeover.upgrade().catch((error) => console.log(`upgrade failed: ${error.code}`)));
await takeover.start(); // fresh, or the successor of whoever listens on `path`
const server = http.createServer(async (_req, res) => {
  await new Promise((resolve) => setTimeout(resolve, 50)); // any async work: a request in flight never moves
  res.end(`hello from pid ${process.pid}\n`);
});
takeover.listen(server, { port: Number(port), host: '127.0.0.1' });

takeover.on('handover', (stats) => console.log(`handed ${stats.connections} connections to pid ${stats.successorPid}`));
takeover.on('rollback', (error) => console.log(`takeover failed, still serving: ${error.code}`));
takeover.done().then(() => process.exit(0)); // handed over, and the last request here answered

const stats = await takeover.ready(); // a successor commits here and receives every connection
console.log(stats ? `took over ${stats.connections} connections from pid ${stats.predecessorPid}` : `serving on ${port}`);

process.on('SIGTERM', async () => {
  await takeover.close(); // removes the channel path: no successor can come any more
  server.close();
  process.exit(0);
});
