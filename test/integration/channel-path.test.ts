/**
 * Where the channel may live on disk (issue #9, items 1 and 6): every directory above the
 * socket is checked, the work is done inside one opened and verified directory, nothing at the
 * path is followed, chmodded or unlinked unless it is a socket of ours, and whatever was found
 * there instead is reported as such.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Takeover, TakeoverError } from '#lib/index.js';
import { createChannelFd, removeChannelPath } from '#lib/channel-listener.js';
import * as native from '#lib/native.js';
import { cleanup, copyForNobody, NOBODY, ServerProcess, tempDir } from '../helpers.js';

after(cleanup);

function assertUnsafe(pattern: RegExp): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof TakeoverError, `expected a TakeoverError, got ${String(error)}`);
    assert.equal(error.code, 'ERR_TAKEOVER_PATH_UNSAFE', error.message);
    assert.match(error.message, pattern);
    return true;
  };
}

/** Every mode a start can take: each must refuse the path, and none may touch what is there. */
async function assertEveryModeRefuses(channelPath: string, pattern: RegExp): Promise<void> {
  for (const mode of ['fresh', 'auto', 'successor'] as const) {
    const takeover = new Takeover({ path: channelPath, mode });
    await assert.rejects(takeover.start(), assertUnsafe(pattern), mode);
  }
  assert.throws(() => createChannelFd(channelPath), assertUnsafe(pattern));
}

test('a directory above the channel that others can write is refused, unless it is sticky', async () => {
  const top = tempDir(0o777);
  const sub = path.join(top, 'sub');
  fs.mkdirSync(sub, { mode: 0o700 });
  const channelPath = path.join(sub, 'channel');
  await assertEveryModeRefuses(channelPath, new RegExp(`^${top} can be written by other users \\(mode 777\\)$`));
  assert.equal(fs.existsSync(channelPath), false);

  fs.chmodSync(top, 0o1777);
  const takeover = await Takeover.start({ path: channelPath, mode: 'fresh' });
  await takeover.ready();
  assert.equal(fs.statSync(channelPath).mode & 0o777, 0o600);
  await takeover.close();
  fs.rmSync(top, { recursive: true });
});

test('a directory above the channel owned by another user is refused', async () => {
  const top = tempDir(0o755);
  fs.chownSync(top, NOBODY, NOBODY);
  const sub = path.join(top, 'sub');
  fs.mkdirSync(sub, { mode: 0o700 });
  await assertEveryModeRefuses(path.join(sub, 'channel'), new RegExp(`^${top} belongs to uid ${NOBODY}, not to this user or root$`));
  fs.rmSync(top, { recursive: true });
});

test('a symlink on the way is followed only when it is ours, and its target is checked all the way up', async () => {
  const safe = tempDir();
  const open = tempDir(0o777);
  fs.mkdirSync(path.join(open, 'inner'), { mode: 0o700 });
  fs.mkdirSync(path.join(safe, 'real'), { mode: 0o700 });
  fs.symlinkSync(path.join(open, 'inner'), path.join(safe, 'to-open'));
  fs.symlinkSync('real', path.join(safe, 'to-real'));

  await assertEveryModeRefuses(path.join(safe, 'to-open', 'channel'), new RegExp(`^${open} can be written by other users`));

  const takeover = await Takeover.start({ path: path.join(safe, 'to-real', 'channel'), mode: 'fresh' });
  await takeover.ready();
  assert.ok(fs.lstatSync(path.join(safe, 'real', 'channel')).isSocket(), 'the channel is where the link leads');
  await takeover.close();

  // Another user's link, even in a sticky directory where they may create one, is not followed.
  const sticky = tempDir(0o1777);
  fs.symlinkSync(path.join(safe, 'real'), path.join(sticky, 'theirs'));
  fs.lchownSync(path.join(sticky, 'theirs'), NOBODY, NOBODY);
  await assertEveryModeRefuses(path.join(sticky, 'theirs', 'channel'), /theirs is a symbolic link of uid 65534, not of this user or root$/);
  for (const dir of [safe, open, sticky]) fs.rmSync(dir, { recursive: true });
});

test('a symlink at the path is never followed: its target keeps its mode, its content and its place', async () => {
  const dir = tempDir();
  const target = path.join(dir, 'precious');
  fs.writeFileSync(target, 'setuid binary, say');
  fs.chmodSync(target, 0o4755);
  const channelPath = path.join(dir, 'channel');
  fs.symlinkSync(target, channelPath);

  await assertEveryModeRefuses(
    channelPath,
    new RegExp(`^${channelPath} is a symbolic link to ${target} \\(uid 0\\), not a takeover channel`),
  );
  assert.equal(removeChannelPath(channelPath), false);

  assert.equal(fs.statSync(target).mode & 0o7777, 0o4755);
  assert.equal(fs.readFileSync(target, 'utf8'), 'setuid binary, say');
  assert.ok(fs.lstatSync(channelPath).isSymbolicLink(), 'the link itself stays too');

  // A link to a stale socket of ours: neither the socket nor the link is chmodded or replaced.
  const staleTarget = path.join(dir, 'stale');
  native.close(native.unixListen(staleTarget, 'seqpacket', 1));
  fs.chmodSync(staleTarget, 0o755);
  fs.rmSync(channelPath);
  fs.symlinkSync(staleTarget, channelPath);
  await assertEveryModeRefuses(channelPath, /is a symbolic link to .*stale/);
  assert.equal(removeChannelPath(channelPath), false);
  assert.equal(fs.statSync(staleTarget).mode & 0o777, 0o755);
  assert.ok(fs.lstatSync(channelPath).isSymbolicLink());
  fs.rmSync(dir, { recursive: true });
});

test('a regular file or a directory planted at the path is reported as what it is and never deleted', async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  fs.writeFileSync(channelPath, 'not a socket');
  await assertEveryModeRefuses(channelPath, new RegExp(`^${channelPath} is a regular file of uid 0, not a takeover channel`));
  assert.equal(removeChannelPath(channelPath), false);
  assert.equal(fs.readFileSync(channelPath, 'utf8'), 'not a socket');

  fs.rmSync(channelPath);
  fs.mkdirSync(channelPath);
  await assertEveryModeRefuses(channelPath, /is a directory of uid 0, not a takeover channel/);
  assert.ok(fs.statSync(channelPath).isDirectory());
  fs.rmSync(dir, { recursive: true });
});

test("another user's stale socket at the path is reported and left in place", async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  native.close(native.unixListen(channelPath, 'seqpacket', 1));
  fs.lchownSync(channelPath, NOBODY, NOBODY);
  const fresh = new Takeover({ path: channelPath, mode: 'fresh' });
  await assert.rejects(fresh.start(), assertUnsafe(new RegExp(`^${channelPath} is a socket of uid ${NOBODY}, not of this user$`)));
  assert.throws(() => createChannelFd(channelPath), assertUnsafe(/is a socket of uid 65534, not of this user/));
  assert.equal(removeChannelPath(channelPath), false);
  assert.equal(fs.lstatSync(channelPath).uid, NOBODY);
  fs.rmSync(dir, { recursive: true });
});

/** What a process running as `nobody` needs, in a directory it can read (the checkout may not be). */
test("a fresh start next to another user's live socket it may not connect to is PATH_UNSAFE, not CHANNEL_IN_USE", {
  timeout: 60_000,
}, async () => {
  const { root, script } = copyForNobody();
  const dir = tempDir();
  fs.chownSync(dir, NOBODY, NOBODY);
  const channelPath = path.join(dir, 'channel');
  const live = native.unixListen(channelPath, 'seqpacket', 1); // root's, mode 0600 under the umask 022 and the chmod below
  fs.chmodSync(channelPath, 0o600);
  const config = { path: channelPath, listen: [{ port: 0, host: '127.0.0.1' }] };
  for (const mode of ['fresh', 'auto'] as const) {
    const server = new ServerProcess({ ...config, mode }, { script, spawn: { uid: NOBODY, gid: NOBODY } });
    const error = await server.next('error');
    assert.equal(error.code, 'ERR_TAKEOVER_PATH_UNSAFE', `${mode}: ${error.message}`);
    assert.match(error.message!, /is a socket of uid 0, which this user may not connect to \(EACCES\)$/);
  }
  native.close(live);
  assert.ok(fs.lstatSync(channelPath).isSocket(), 'left in place');
  fs.rmSync(dir, { recursive: true });
  fs.rmSync(root, { recursive: true });
});

test('native: the *At calls never follow, replace or remove what is not a socket of ours', () => {
  const dir = tempDir();
  const target = path.join(dir, 'target');
  fs.writeFileSync(target, 'x');
  fs.chmodSync(target, 0o644);
  fs.symlinkSync(target, path.join(dir, 'link'));
  fs.writeFileSync(path.join(dir, 'file'), 'y');
  const dirFd = native.openDirAt(null, '/');
  let at = dirFd;
  for (const name of dir.split('/').filter(Boolean)) {
    const next = native.openDirAt(at, name);
    native.close(at);
    at = next;
  }
  try {
    assert.throws(() => native.openDirAt(at, 'link'), { code: 'ENOTDIR' }, 'a link is not opened as a directory');
    assert.deepEqual(native.statAt(at, 'link'), { type: 'symlink', mode: 0o777, uid: 0 });
    assert.equal(native.statAt(at, 'missing'), null);
    assert.equal(native.readlinkAt(at, 'link'), target);
    assert.throws(() => native.unixListenAt(at, 'link', 'seqpacket', 1, 0o600), { code: 'EADDRINUSE' });
    assert.throws(() => native.unixListenAt(at, 'a/b', 'seqpacket', 1, 0o600), { code: 'ERR_INVALID_ARG_VALUE' });
    assert.throws(() => native.removeSocketAt(at, 'link'), { code: 'ENOTSOCK' });
    assert.throws(() => native.removeSocketAt(at, 'file'), { code: 'ENOTSOCK' });
    assert.equal(native.removeSocketAt(at, 'missing'), false);

    // The umask can only clear bits: here it clears the owner's write bit, and the mode is still exact.
    const oldMask = process.umask(0o277);
    let listener: number;
    try {
      listener = native.unixListenAt(at, 'sock', 'seqpacket', 4, 0o600);
    } finally {
      process.umask(oldMask);
    }
    assert.equal(fs.lstatSync(path.join(dir, 'sock')).mode & 0o7777, 0o600);
    // A link to a live socket is not connected through.
    fs.symlinkSync(path.join(dir, 'sock'), path.join(dir, 'sock-link'));
    assert.throws(() => native.unixConnectAt(at, 'sock-link'), { code: 'ENOTSOCK' });
    native.close(native.unixConnectAt(at, 'sock'));

    fs.lchownSync(path.join(dir, 'sock'), NOBODY, NOBODY);
    assert.throws(() => native.removeSocketAt(at, 'sock'), { code: 'EPERM' }, "another user's socket stays");
    fs.lchownSync(path.join(dir, 'sock'), 0, 0);
    assert.equal(native.removeSocketAt(at, 'sock'), true);
    native.close(listener);

    assert.equal(fs.statSync(target).mode & 0o777, 0o644);
    assert.equal(fs.readFileSync(target, 'utf8'), 'x');
    assert.equal(fs.readFileSync(path.join(dir, 'file'), 'utf8'), 'y');
  } finally {
    native.close(at);
  }
  fs.rmSync(dir, { recursive: true });
});

test('removeChannelPath removes our socket, and only that', async () => {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  const fd = createChannelFd(channelPath);
  assert.equal(fs.lstatSync(channelPath).mode & 0o7777, 0o600);
  assert.equal(removeChannelPath(channelPath), true);
  assert.equal(fs.existsSync(channelPath), false);
  assert.equal(removeChannelPath(channelPath), false);
  native.close(fd);
  fs.rmSync(dir, { recursive: true });
});
