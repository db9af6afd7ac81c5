import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Takeover, TakeoverError } from '#lib/index.js';
import * as native from '#lib/native.js';
import { decodeFrame, encode, HEADER_SIZE, MAX_FRAME_SIZE, type Frame } from '#lib/protocol.js';
import { cleanup, ServerProcess, tempDir, waitFor } from '../helpers.js';

after(cleanup);

function assertCode(code: string): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof TakeoverError, `expected a TakeoverError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  };
}

async function freshServer(dir: string, name = 'channel'): Promise<{ takeover: Takeover; server: net.Server }> {
  const takeover = await Takeover.start({ path: path.join(dir, name), mode: 'fresh' });
  const server = net.createServer((s) => s.pipe(s));
  takeover.listen(server, { port: 0, host: '127.0.0.1' });
  await takeover.ready();
  return { takeover, server };
}

async function shutdown({ takeover, server }: { takeover: Takeover; server: net.Server }): Promise<void> {
  await takeover.close();
  await new Promise((r) => server.close(r));
}

test('options are validated with ERR_TAKEOVER_INVALID_OPTION', () => {
  const bad: unknown[] = [
    undefined,
    { path: '' },
    { path: 42 },
    { path: '/tmp/x', mode: 'sideways' },
    { path: '/tmp/x', timeoutMs: 0 },
    { path: '/tmp/x', timeoutMs: 1.5 },
    { path: '/tmp/x', waveSize: -1 },
    { path: '/tmp/x', allowUids: [-1] },
    { path: '/tmp/x', allowUids: 'root' },
    { path: '/tmp/x', captureState: 'yes' },
    { path: '/tmp/x', notifyParent: 'yes' },
  ];
  for (const options of bad) {
    assert.throws(() => new Takeover(options as never), assertCode('ERR_TAKEOVER_INVALID_OPTION'), JSON.stringify(options));
  }
});

test('the channel path must not be in a directory others can write, unless it is sticky', async () => {
  const dir = tempDir(0o777);
  await assert.rejects(Takeover.start({ path: path.join(dir, 'channel') }), assertCode('ERR_TAKEOVER_PATH_UNSAFE'));
  fs.chmodSync(dir, 0o1777);
  const fresh = await freshServer(dir);
  await shutdown(fresh);
  fs.rmSync(dir, { recursive: true });
});

test('the channel path may not be an existing regular file, nor too long', async () => {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, 'channel'), 'not a socket');
  await assert.rejects(Takeover.start({ path: path.join(dir, 'channel'), mode: 'fresh' }), assertCode('ERR_TAKEOVER_PATH_UNSAFE'));
  assert.equal(fs.readFileSync(path.join(dir, 'channel'), 'utf8'), 'not a socket', 'the file is left alone');
  await assert.rejects(Takeover.start({ path: path.join(dir, 'x'.repeat(120)) }), assertCode('ERR_TAKEOVER_INVALID_OPTION'));
  fs.rmSync(dir, { recursive: true });
});

test('a stale socket file is replaced; the channel is a 0600 socket; close() removes it', async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  native.close(native.unixListen(channelPath, 'seqpacket', 1));
  assert.ok(fs.statSync(channelPath).isSocket(), 'a stale socket file nobody listens on');
  const fresh = await freshServer(dir);
  const stat = fs.statSync(channelPath);
  assert.ok(stat.isSocket());
  assert.equal(stat.mode & 0o777, 0o600);
  await shutdown(fresh);
  assert.equal(fs.existsSync(channelPath), false);
  fs.rmSync(dir, { recursive: true });
});

test('a fresh start refuses a live channel and leaves it alone; takeover mode needs a live one', async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  await assert.rejects(Takeover.start({ path: channelPath, mode: 'successor' }), assertCode('ERR_TAKEOVER_NO_PREDECESSOR'));
  const live = await freshServer(dir);
  const second = new Takeover({ path: channelPath, mode: 'fresh' });
  await assert.rejects(second.start(), assertCode('ERR_TAKEOVER_CHANNEL_IN_USE'));
  await second.close();
  assert.ok(fs.existsSync(channelPath), "a failed start does not remove the live server's channel");
  await shutdown(live);
  // 'auto' with nobody listening is a fresh start.
  const auto = await Takeover.start({ path: channelPath });
  assert.equal(auto.isSuccessor, false);
  await auto.close();
  fs.rmSync(dir, { recursive: true });
});

test('methods called out of order fail with ERR_TAKEOVER_INVALID_STATE; listeners are validated', async () => {
  const dir = tempDir();
  const takeover = new Takeover({ path: path.join(dir, 'channel'), mode: 'fresh' });
  const server = net.createServer();
  assert.throws(() => takeover.listen(server, { port: 0 }), assertCode('ERR_TAKEOVER_INVALID_STATE'));
  assert.throws(() => takeover.ready(), assertCode('ERR_TAKEOVER_INVALID_STATE'));
  await takeover.start();
  await assert.rejects(takeover.start(), assertCode('ERR_TAKEOVER_INVALID_STATE'));
  assert.throws(() => takeover.listen({} as net.Server, { port: 0 }), assertCode('ERR_TAKEOVER_INVALID_OPTION'));
  assert.throws(() => takeover.listen(server, { port: 70000 }), assertCode('ERR_TAKEOVER_INVALID_OPTION'));
  assert.throws(() => takeover.listen(server, { name: 'inherited-only' }), assertCode('ERR_TAKEOVER_INVALID_OPTION'));
  takeover.listen(server, { port: 0, host: '127.0.0.1' });
  assert.throws(() => takeover.listen(net.createServer(), { port: 0, host: '127.0.0.1' }), assertCode('ERR_TAKEOVER_INVALID_OPTION'));
  assert.throws(() => takeover.listen(server, { port: 0, host: '::1' }), assertCode('ERR_TAKEOVER_INVALID_OPTION'));
  const ready = takeover.ready();
  assert.equal(takeover.ready(), ready, 'ready() twice is the same promise');
  assert.equal(await ready, null);
  assert.throws(() => takeover.listen(net.createServer(), { port: 0 }), assertCode('ERR_TAKEOVER_INVALID_STATE'));
  await shutdown({ takeover, server });
  fs.rmSync(dir, { recursive: true });
});

/** A raw channel client: connects with the addon and reads frames synchronously with a deadline. */
function rawClient(channelPath: string) {
  const fd = native.unixConnect(channelPath);
  return {
    fd,
    send: (data: Buffer) => native.sendMessage(fd, data, []),
    async receive(): Promise<Frame | 'eof'> {
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        const message = native.receiveMessage(fd, MAX_FRAME_SIZE);
        if (message) {
          if (message.data.length === 0) return 'eof';
          return decodeFrame(message.data, message.fds);
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      throw new Error('no frame within 5 s');
    },
    close: () => native.close(fd),
  };
}

test('a peer that sends a malformed frame gets ABORT with ERR_TAKEOVER_PROTOCOL, and the server carries on', async () => {
  const dir = tempDir();
  const fresh = await freshServer(dir);
  const rollbacks: TakeoverError[] = [];
  fresh.takeover.on('rollback', (e) => rollbacks.push(e));
  for (const garbage of [Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.alloc(HEADER_SIZE), encode.commit().data]) {
    const client = rawClient(path.join(dir, 'channel'));
    client.send(garbage);
    const reply = await client.receive();
    assert.ok(reply !== 'eof' && reply.type === 'abort', `reply to ${garbage.toString('hex')}: ${JSON.stringify(reply)}`);
    assert.equal(reply.code, 'ERR_TAKEOVER_PROTOCOL');
    client.close();
  }
  assert.equal(rollbacks.length, 0, 'garbage before HELLO is not a takeover');
  const echo = net.connect((fresh.server.address() as net.AddressInfo).port, '127.0.0.1');
  echo.write('still here');
  const [reply] = (await new Promise((r) => echo.once('data', (d) => r([d])))) as Buffer[];
  assert.equal(reply!.toString(), 'still here');
  echo.destroy();
  await shutdown(fresh);
  fs.rmSync(dir, { recursive: true });
});

test('a successor facing a predecessor that sends nonsense fails with a code and keeps no fd', async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  const before = native.openFdCount();
  for (const reply of [Buffer.from('nonsense'), encode.welcome(1, 1, 0).data]) {
    const listenFd = native.unixListen(channelPath, 'seqpacket', 1);
    const successor = new Takeover({ path: channelPath, mode: 'successor', timeoutMs: 1000 });
    const started = successor.start();
    let peerFd = -1;
    const accepted = () => {
      peerFd = native.accept(listenFd);
      return peerFd >= 0;
    };
    await waitFor(accepted, 'the successor to connect to the fake predecessor');
    native.sendMessage(peerFd, reply, []);
    // After a valid WELCOME the fake sends a pipe where a listening socket belongs.
    if (reply.length > 8 && reply.readUInt8(3) === 2) {
      const pipe = fs.openSync(path.join(dir, 'plain-file'), 'w');
      native.sendMessage(peerFd, encode.listeners([{ name: 'x', kind: 'channel', backlog: 1, fd: pipe }]).data, [pipe]);
      fs.closeSync(pipe);
    }
    await assert.rejects(started, assertCode('ERR_TAKEOVER_PROTOCOL'));
    native.close(peerFd);
    native.close(listenFd);
    fs.rmSync(channelPath);
  }
  // The successor's channel lingers until it sees our EOF, so give it a few loop turns.
  await waitFor(
    () => native.openFdCount() === before,
    () => `no fd left behind: ${native.openFdCount()} open, ${before} before`,
  );
  fs.rmSync(dir, { recursive: true });
});

test('listener names are validated; a Unix path held by a live stream server is not stolen', async () => {
  const dir = tempDir();
  const takeover = await Takeover.start({ path: path.join(dir, 'channel'), mode: 'fresh' });
  for (const name of ['', 'takeover-channel', 'x'.repeat(1001)]) {
    assert.throws(() => takeover.listen(net.createServer(), { port: 0, name }), assertCode('ERR_TAKEOVER_INVALID_OPTION'), name);
  }
  const busyPath = path.join(dir, 'busy.sock');
  const other = net.createServer();
  await new Promise<void>((resolve) => other.listen(busyPath, resolve));
  assert.throws(() => takeover.listen(net.createServer(), { path: busyPath }), assertCode('ERR_TAKEOVER_SYSTEM'));
  assert.ok(fs.statSync(busyPath).isSocket(), "the other server's socket file is left alone");
  await new Promise((r) => other.close(r));
  await takeover.close();
  fs.rmSync(dir, { recursive: true });
});

test('fds attached to an unexpected frame are closed by the old process', async () => {
  const dir = tempDir();
  const fresh = await freshServer(dir);
  const before = native.openFdCount();
  const client = rawClient(path.join(dir, 'channel'));
  client.send(encode.hello(process.pid).data);
  // Skip WELCOME and LISTENERS (closing the listener dups they carry), then send CONNS out of turn.
  for (let i = 0; i < 2; i++) {
    const frame = await client.receive();
    if (frame !== 'eof' && frame.type === 'listeners') for (const { fd } of frame.listeners) native.close(fd);
  }
  const fds = Array.from({ length: 50 }, () => native.dup(client.fd));
  const conns = encode.conns(fds.map((fd, i) => ({ id: i + 1, listener: 0, fd })));
  native.sendMessage(client.fd, conns.data, fds);
  for (const fd of fds) native.close(fd);
  let reply: Frame | 'eof';
  do reply = await client.receive();
  while (reply !== 'eof' && reply.type !== 'abort');
  assert.ok(reply !== 'eof' && reply.code === 'ERR_TAKEOVER_PROTOCOL');
  client.close();
  await waitFor(
    () => native.openFdCount() === before,
    () => `no fd of the bad frame kept: ${native.openFdCount()} open, ${before} before`,
  );
  await shutdown(fresh);
  fs.rmSync(dir, { recursive: true });
});

test('ready() after the takeover already failed rejects with that TakeoverError', { timeout: 30_000 }, async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  const old = new ServerProcess({ path: channelPath, listen: [{ port: 0, host: '127.0.0.1' }], timeoutMs: 500 });
  await old.next('ready');
  const successor = await Takeover.start({ path: channelPath, mode: 'successor' });
  successor.listen(net.createServer(), { port: 0, host: '127.0.0.1' });
  // The app takes longer than the predecessor's timeout to become ready.
  const rollback = await old.next('rollback');
  assert.equal(rollback.code, 'ERR_TAKEOVER_TIMEOUT');
  await assert.rejects(successor.ready(), (error: unknown) => {
    assert.ok(error instanceof TakeoverError, String(error));
    assert.equal(error.code, 'ERR_TAKEOVER_ABORTED');
    assert.equal(error.reason, 'ERR_TAKEOVER_TIMEOUT');
    return true;
  });
  await successor.close();
  assert.ok(fs.existsSync(channelPath), "a failed successor's close() leaves the predecessor's channel");
  old.kill('SIGTERM');
  await old.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a successor that did not listen() on a listener with open connections fails with ERR_TAKEOVER_LISTENER_UNCLAIMED; the predecessor keeps serving', {
  timeout: 30_000,
}, async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  const old = new ServerProcess({ path: channelPath, listen: [{ port: 0, host: '127.0.0.1' }] });
  const port = (await old.next('ready')).addresses![0]!.port;
  const client = net.connect(port, '127.0.0.1');
  await once(client, 'connect');
  const successor = await Takeover.start({ path: channelPath, mode: 'successor' });
  await assert.rejects(successor.ready(), assertCode('ERR_TAKEOVER_LISTENER_UNCLAIMED'));
  const rollback = await old.next('rollback');
  assert.equal(rollback.code, 'ERR_TAKEOVER_ABORTED');
  client.write(Buffer.from([0, 0, 0, 7]));
  const [echo] = (await once(client, 'data')) as [Buffer];
  assert.deepEqual(echo, Buffer.from([0, 0, 0, 7]));
  client.destroy();
  await successor.close();
  old.kill('SIGTERM');
  await old.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a successor's close() before its commit aborts the takeover; the predecessor keeps serving", { timeout: 30_000 }, async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  const old = new ServerProcess({ path: channelPath, listen: [{ port: 0, host: '127.0.0.1' }] });
  const port = (await old.next('ready')).addresses![0]!.port;
  const successor = await Takeover.start({ path: channelPath, mode: 'successor' });
  successor.listen(net.createServer(), { port: 0, host: '127.0.0.1' });
  await successor.close();
  const rollback = await old.next('rollback');
  assert.equal(rollback.code, 'ERR_TAKEOVER_ABORTED');
  assert.ok(fs.existsSync(channelPath), "the predecessor's channel stays");
  const client = net.connect(port, '127.0.0.1');
  client.write(Buffer.from([0, 0, 0, 7]));
  const [echo] = (await once(client, 'data')) as [Buffer];
  assert.deepEqual(echo, Buffer.from([0, 0, 0, 7]));
  client.destroy();
  old.kill('SIGTERM');
  await old.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});
