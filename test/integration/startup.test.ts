/**
 * What a process loads and keeps when it starts: a successor's start-up is part of every
 * takeover, and it runs on the cores the old process is serving with.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tempDir, within } from '../helpers.js';

const SERVER = fileURLToPath(import.meta.resolve('#lib/cli/server.js'));
const dirs: string[] = [];
after(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** The builtin modules a fresh Node process has loaded once it imported `url`. */
function modulesLoadedBy(url: string): string[] {
  const script = `await import(${JSON.stringify(url)}); process.stdout.write(JSON.stringify(process.moduleLoadList));`;
  return JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' })) as string[];
}

describe('start-up', () => {
  // An ESM import of node:http reads all of its exports, and the lazy ones load undici: about
  // 40 ms of CPU on Node 22-26 in every process, HTTP or not.
  for (const module of ['#lib/index.js', '#lib/cli/apps.js']) {
    test(`importing ${module} does not load undici`, () => {
      const loaded = modulesLoadedBy(import.meta.resolve(module));
      assert.ok(loaded.includes('NativeModule net'), 'the list is of the child that imported the module');
      assert.deepEqual(
        loaded.filter((m) => m.includes('undici')),
        [],
      );
    });
  }

  test('takeover-server keeps a compile cache where Node supports one, and honours NODE_DISABLE_COMPILE_CACHE', async () => {
    const nodeModule = (await import('node:module')).default as { enableCompileCache?: unknown };
    const supported = typeof nodeModule.enableCompileCache === 'function';
    for (const disabled of [false, true]) {
      const tmp = tempDir();
      dirs.push(tmp);
      const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp };
      delete env.NODE_COMPILE_CACHE;
      if (disabled) env.NODE_DISABLE_COMPILE_CACHE = '1';
      else delete env.NODE_DISABLE_COMPILE_CACHE;
      const server = spawn(process.execPath, [SERVER, '-p', '0'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
      await within(once(server.stdout, 'data'), 'the listening line');
      server.kill('SIGTERM');
      await within(once(server, 'exit'), 'the exit');
      const cache = path.join(tmp, 'node-compile-cache');
      assert.equal(
        fs.existsSync(cache),
        supported && !disabled,
        `${cache} after a run with the cache ${disabled ? 'disabled' : 'enabled'}`,
      );
    }
  });
});

describe('the compile cache', () => {
  // Code V8 loads from a cache runs as this process: a directory that another user can write
  // (or owns: TMPDIR is /tmp for most) would let that user run code as the server's user.
  test('takeover-server neither reads nor writes a node-compile-cache directory that others can write', async () => {
    const tmp = tempDir();
    dirs.push(tmp);
    const cache = path.join(tmp, 'node-compile-cache');
    fs.mkdirSync(cache);
    fs.chmodSync(cache, 0o777);
    const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp };
    delete env.NODE_COMPILE_CACHE;
    delete env.NODE_DISABLE_COMPILE_CACHE;
    const server = spawn(process.execPath, [SERVER, '-p', '0'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    await within(once(server.stdout, 'data'), 'the listening line');
    server.kill('SIGTERM');
    await within(once(server, 'exit'), 'the exit');
    assert.deepEqual(fs.readdirSync(cache), [], `${cache} (mode 0777) was used`);
  });
});
