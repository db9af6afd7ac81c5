/**
 * The systemd module's pure parts: fd names as systemd accepts them, and the checks of
 * $LISTEN_PID / $LISTEN_FDS / $LISTEN_FDNAMES that come before any fd is touched.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeFdName, encodeFdName, takeActivatedListeners } from '#lib/systemd.js';
import { Takeover } from '#lib/index.js';
import * as native from '#lib/native.js';

test('listener names become FDNAMEs systemd accepts (no ":", control or non-ASCII bytes, "%" escaped) and come back the same', () => {
  for (const name of ['tcp:127.0.0.1:8000', 'unix:/run/app.sock', 'web', '50% off: ünïcode\ttab', 'tcp:[::1]:0']) {
    const encoded = encodeFdName(name)!;
    assert.match(encoded, /^[\x21-\x7e]*$/);
    assert.ok(!encoded.includes(':'));
    assert.equal(decodeFdName(encoded), name);
  }
  assert.equal(encodeFdName('tcp:127.0.0.1:8000'), 'tcp%3A127.0.0.1%3A8000');
  // A .socket unit's FileDescriptorName= is taken as it is, a stray '%' included.
  assert.equal(decodeFdName('app.socket'), 'app.socket');
  assert.equal(decodeFdName('100%'), '100%');
  assert.equal(encodeFdName('x'.repeat(255)), 'x'.repeat(255));
  assert.equal(encodeFdName(`${'x'.repeat(253)}:`), undefined);
});

test('LISTEN_* that are absent, for another process or malformed give no listeners, a coded problem, and are removed', () => {
  const cases: [NodeJS.ProcessEnv, RegExp | undefined][] = [
    [{}, undefined],
    [{ LISTEN_PID: '123', LISTEN_FDS: '0' }, undefined],
    // As systemd's fd store passes an empty store (and as the test's recorder does): no names, no problem.
    [{ LISTEN_PID: '123', LISTEN_FDS: '0', LISTEN_FDNAMES: '', LISTEN_PIDFDID: '42' }, undefined],
    [{ LISTEN_PID: '999999', LISTEN_FDS: '1' }, /LISTEN_PID is 999999, not this process \(123\)/],
    [{ LISTEN_PID: 'self', LISTEN_FDS: '1' }, /LISTEN_PID 'self' is not a pid/],
    [{ LISTEN_FDS: '1' }, /LISTEN_PID '' is not a pid/],
    [{ LISTEN_PID: '123', LISTEN_FDS: 'three' }, /LISTEN_FDS 'three' is not a count/],
    [{ LISTEN_PID: '123', LISTEN_FDS: '-1' }, /LISTEN_FDS '-1' is not a count/],
    [{ LISTEN_PID: '123', LISTEN_FDS: '99999' }, /LISTEN_FDS '99999' is not a count/],
    [{ LISTEN_PID: '123', LISTEN_FDS: '0', LISTEN_FDNAMES: 'web' }, /LISTEN_FDNAMES has 1 names for 0 fds/],
  ];
  for (const [env, problem] of cases) {
    const all = { ...env, OTHER: 'kept' };
    const { listeners, problems } = takeActivatedListeners(all, 123);
    assert.deepEqual(listeners, [], JSON.stringify(env));
    if (problem === undefined) assert.deepEqual(problems, [], JSON.stringify(env));
    else {
      assert.equal(problems.length, 1, JSON.stringify(env));
      assert.equal(problems[0]!.code, 'ERR_TAKEOVER_ACTIVATION_INVALID');
      assert.match(problems[0]!.message, problem);
    }
    assert.deepEqual(all, { OTHER: 'kept' }, 'a child must never read them as its own');
  }
});

test('the systemd and fdStore options take booleans only', () => {
  for (const options of [{ systemd: 'yes' }, { fdStore: 1 }]) {
    assert.throws(() => new Takeover({ path: '/tmp/x', ...(options as object) }), { code: 'ERR_TAKEOVER_INVALID_OPTION' });
  }
  assert.equal(new Takeover({ path: '/tmp/x', systemd: false, fdStore: true }).options.fdStore, true);
});

test('sdNotify reports a socket that is not there, a path systemd never gives, and bad arguments as coded errors', () => {
  const data = Buffer.from('READY=1\n');
  assert.throws(() => native.sdNotify('/nonexistent/notify.sock', data, [], 0), { code: 'ENOENT', syscall: 'sendmsg' });
  assert.throws(() => native.sdNotify(`@takeover-nobody-${process.pid}`, data, [], 0), { code: 'ECONNREFUSED' });
  assert.throws(() => native.sdNotify('relative/notify.sock', data, [], 0), { code: 'EINVAL' });
  assert.throws(() => native.sdNotify(`/${'x'.repeat(200)}`, data, [], 0), { code: 'ENAMETOOLONG' });
  // sun_path holds 108 bytes: a path needs one for its NUL, an abstract name (as systemd allows) does not.
  assert.throws(() => native.sdNotify(`/${'x'.repeat(107)}`, data, [], 0), { code: 'ENAMETOOLONG' });
  assert.throws(() => native.sdNotify(`@takeover-${process.pid}-${'x'.repeat(96)}`.slice(0, 108), data, [], 0), { code: 'ECONNREFUSED' });
  assert.throws(() => native.sdNotify(`@${'x'.repeat(108)}`, data, [], 0), { code: 'ENAMETOOLONG' });
  assert.throws(() => native.sdNotify('', data, [], 0), { code: 'ENOENT' });
  assert.throws(() => native.sdNotify('/run/notify', Buffer.alloc(0), [], 0), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => native.sdNotify('/run/notify', data, [3.5], 0), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => native.sdNotify('/run/notify', 'READY=1' as unknown as Buffer, [], 0), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => native.setCloseOnExec(1_000_000), { code: 'EBADF' });
});
