import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { once } from 'node:events';
import * as net from 'node:net';
import { Deadline } from '#lib/deadline.js';
import { waitFor } from '../helpers.js';

test('a deadline that passed while the process was blocked yields to the I/O that arrived in time', async (t) => {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [peer] = (await once(server, 'connection')) as [net.Socket];
  t.after(() => {
    client.destroy();
    peer.destroy();
    server.close();
  });
  const expired: string[] = [];
  const deadline = new Deadline(20, (what) => expired.push(what));
  let answered = false;
  peer.on('data', () => {
    answered = true;
    deadline.clear();
  });
  deadline.expect('ANSWER');
  client.write('x');
  // Blocked (as a process stopped, or busy) past the deadline, with the answer already queued:
  // on waking the timer comes first in the loop, the socket's data right after it.
  const until = performance.now() + 100;
  while (performance.now() < until);
  await waitFor(() => answered, 'the answer to be read');
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(expired, []);

  deadline.expect('NOTHING', 1);
  await waitFor(() => expired.length > 0, 'a deadline with nothing to read to expire');
  assert.deepEqual(expired, ['NOTHING']);
});
