// Run it twice with the same arguments: the second process takes over from the first,
// listener and open connections included, and the first one exits.
//   node examples/echo-server.mjs /tmp/echo.takeover 8000
import net from 'node:net';
import { Takeover } from 'socket-takeover';

const [path = '/tmp/echo.takeover', port = '8000'] = process.argv.slice(2);

const takeover = await Takeover.start({ path }); // fresh, or take over whoever listens on `path`
const server = net.createServer((socket) => socket.pipe(socket));
takeover.listen(server, { port: Number(port), host: '127.0.0.1' });

takeover.on('handover', (stats) => console.log(`handed ${stats.connections} connections to pid ${stats.successorPid}`));
takeover.on('rollback', (error) => console.log(`takeover failed, still serving: ${error.code}`));

const stats = await takeover.ready(); // a successor commits here and receives every connection
console.log(stats ? `took over ${stats.connections} connections from pid ${stats.predecessorPid}` : `serving on ${port}`);

process.on('SIGTERM', async () => {
  await takeover.close(); // removes the channel path: no successor can come any more
  server.close();
  process.exit(0);
});
