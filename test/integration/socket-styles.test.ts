/**
 * The freeze and release against the ways an application reads and writes its sockets: an async
 * server (answers after a timer, marked busy) whose sockets use once('data'), several 'data'
 * listeners, setEncoding, cork, pause/resume, 'readable', pipe(), and 'newListener'/'removeListener'
 * watchers. Every byte reaches its client once and in order; the old side hears only 'moved'.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';
import { Transform } from 'node:stream';
import { Takeover } from '#lib/index.js';
import { tempDir, waitFor } from '../helpers.js';

const STYLES = ['data', 'once', 'many', 'encoding', 'cork', 'pause', 'readable', 'pipe', 'meta'] as const;

function lines(onLine: (line: string) => void) {
  let rest = '';
  return (chunk: Buffer | string) => {
    rest += chunk.toString();
    for (let i = rest.indexOf('\n'); i >= 0; i = rest.indexOf('\n')) {
      onLine(rest.slice(0, i));
      rest = rest.slice(i + 1);
    }
  };
}

test('an async server, whatever way its sockets are read: every reply once and in order across the takeover, and only moved in the old process', {
  timeout: 60_000,
}, async () => {
  const channel = path.join(tempDir(), 'channel');
  const old = await Takeover.start({ path: channel, mode: 'fresh' });
  const heard = new Map<number, string[]>();
  let index = 0;
  const oldServer = net.createServer((socket) => {
    const style = STYLES[index % STYLES.length]!;
    const me = index++;
    const events: string[] = [];
    heard.set(me, events);
    for (const e of ['close', 'end', 'error', 'moved']) socket.on(e, () => events.push(e));
    const answer = (line: string) => {
      const done = old.busy(socket);
      setTimeout(() => {
        if (style === 'cork') socket.cork();
        socket.write(`${line}\n`);
        if (style === 'cork') process.nextTick(() => socket.uncork());
        if (style === 'pause') socket.resume();
        done();
      }, 1);
    };
    if (style === 'data') socket.on('data', lines(answer));
    else if (style === 'once') {
      const feed = lines(answer);
      const again = (chunk: Buffer) => {
        feed(chunk);
        socket.once('data', again);
      };
      socket.once('data', again);
    } else if (style === 'many') {
      socket.on('data', () => {});
      socket.on('data', lines(answer));
      socket.on('data', () => {});
    } else if (style === 'encoding') {
      socket.setEncoding('utf8');
      socket.on('data', lines(answer));
    } else if (style === 'cork') socket.on('data', lines(answer));
    else if (style === 'pause') {
      const feed = lines(answer);
      socket.on('data', (chunk) => {
        socket.pause();
        feed(chunk);
      });
    } else if (style === 'readable') {
      const feed = lines(answer);
      socket.on('readable', () => {
        for (let c = socket.read(); c !== null; c = socket.read()) feed(c);
      });
    } else if (style === 'pipe') {
      const feed = lines(answer);
      socket.pipe(
        new Transform({
          transform(chunk, _e, cb) {
            feed(chunk);
            cb();
          },
        }),
      );
    } else {
      socket.on('removeListener', (e) => events.push(`remove:${String(e)}`));
      socket.on('newListener', (e) => events.push(`new:${String(e)}`));
      socket.on('data', lines(answer));
    }
  });
  await old.listen(oldServer, { port: 0, host: '127.0.0.1', name: 'app' });
  await old.ready();
  const port = (oldServer.address() as net.AddressInfo).port;

  const clients: { socket: net.Socket; got: number[]; sent: number; stop: boolean }[] = [];
  for (let i = 0; i < STYLES.length * 4; i++) {
    const socket = net.connect(port, '127.0.0.1');
    await once(socket, 'connect');
    const c = { socket, got: [] as number[], sent: 0, stop: false };
    socket.on(
      'data',
      lines((l) => {
        c.got.push(Number(l));
        if (!c.stop) socket.write(`${c.sent++}\n`);
      }),
    );
    socket.write(`${c.sent++}\n`);
    clients.push(c);
  }
  await waitFor(() => clients.every((c) => c.got.length > 5), 'traffic');

  const successor = await Takeover.start({ path: channel, mode: 'successor' });
  const newServer = net.createServer((socket) =>
    socket.on(
      'data',
      lines((l) => socket.write(`${l}\n`)),
    ),
  );
  void successor.listen(newServer, { name: 'app' });
  const stats = await successor.ready();
  await old.done();
  const marks = clients.map((c) => c.got.length);
  await waitFor(() => clients.every((c, i) => c.got.length > marks[i]! + 20), 'traffic after');
  for (const c of clients) c.stop = true;
  await waitFor(() => clients.every((c) => c.got.length === c.sent), 'drained');
  for (const [i, c] of clients.entries()) {
    assert.deepEqual(
      c.got,
      Array.from({ length: c.sent }, (_, k) => k),
      `client ${i} (${STYLES[i % STYLES.length]})`,
    );
  }
  assert.equal(stats?.connections, clients.length);
  for (const [i, events] of heard) {
    const expected = STYLES[i % STYLES.length] === 'meta' ? ['new:data', 'moved'] : ['moved'];
    assert.deepEqual(events, expected, `old socket ${i} (${STYLES[i % STYLES.length]})`);
  }
  for (const c of clients) c.socket.destroy();
  await successor.close();
  newServer.close();
});
