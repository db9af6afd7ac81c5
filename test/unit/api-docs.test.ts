/**
 * docs/API.md against the package's declarations: every export, every public member of the
 * exported classes, every option, listen target field, upgrade option, event, state, protocol
 * step, statistic and error code must have its row in the reference, and no row may name one that
 * is gone. The names come from dist/index.d.ts through the TypeScript checker (and the error codes
 * from the running module), so whatever is added to the API fails here until it is documented.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';
import { ErrorCodes } from '#lib/index.js';
import { distDir } from '../helpers.js';

const root = path.resolve(distDir, '..');
const DOC = 'docs/API.md';
const doc = fs.readFileSync(path.join(root, DOC), 'utf8');

// ---- the API, from the declarations that ship ----

const entry = path.join(root, 'dist', 'index.d.ts');
const program = ts.createProgram([entry], {
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  noEmit: true,
  skipLibCheck: true,
  // Only the package's own declarations are read: without Node's types and the standard
  // library, which name nothing documented here, the checker needs a tenth of the time.
  types: [],
  noLib: true,
});
const checker = program.getTypeChecker();
const exported = new Map(
  checker.getExportsOfModule(checker.getSymbolAtLocation(program.getSourceFile(entry)!)!).map((symbol) => {
    const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
    return [symbol.name, target] as const;
  }),
);

function declared(name: string): ts.Symbol {
  const symbol = exported.get(name);
  assert.ok(symbol, `${name} is no longer exported from src/index.ts: update ${DOC} and this test`);
  return symbol;
}

const isPrivate = (symbol: ts.Symbol): boolean =>
  (symbol.declarations ?? []).some((d) => (ts.getCombinedModifierFlags(d) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) !== 0);

/** A class's own public members (not Error's or EventEmitter's), instance and static. */
function classMembers(name: string): string[] {
  const symbol = declared(name);
  const own = (member: ts.Symbol) =>
    !isPrivate(member) &&
    (member.declarations ?? []).some((d) => d.parent && ts.isClassDeclaration(d.parent) && d.parent.name?.text === name);
  const instance = checker.getPropertiesOfType(checker.getDeclaredTypeOfSymbol(symbol)).filter(own);
  const statics = checker
    .getPropertiesOfType(checker.getTypeOfSymbol(symbol))
    .filter((m) => m.name !== 'prototype' && own(m))
    .map((m) => `${name}.${m.name}`);
  const constructs = symbol.members?.has(ts.InternalSymbolName.Constructor) ? [`new ${name}`] : [];
  return [...constructs, ...statics, ...instance.map((m) => m.name)];
}

/** The property names of an exported object type, or of every member of a union of them; nested object types as `outer.inner`. */
function properties(name: string): string[] {
  const type = checker.getDeclaredTypeOfSymbol(declared(name));
  const names = new Set<string>();
  const walk = (t: ts.Type, prefix: string) => {
    for (const part of t.isUnion() ? t.types : [t]) {
      for (const property of checker.getPropertiesOfType(part)) {
        const full = `${prefix}${property.name}`;
        names.add(full);
        // An inline object type (`phases: { ... }`), not a function type, which is a type literal too.
        const inner = checker.getNonNullableType(checker.getTypeOfSymbol(property));
        const literal = (inner.symbol?.flags ?? 0) & ts.SymbolFlags.TypeLiteral;
        if (literal && inner.getCallSignatures().length === 0) walk(inner, `${full}.`);
      }
    }
  };
  walk(type, '');
  return [...names];
}

/** The members of a union of string literals; a template literal such as `wave${number}` reads `wave<N>`. */
function literals(name: string): string[] {
  const type = checker.getDeclaredTypeOfSymbol(declared(name));
  return (type.isUnion() ? type.types : [type]).map((t) => {
    if (t.isStringLiteral()) return t.value;
    if (t.flags & ts.TypeFlags.TemplateLiteral) return (t as ts.TemplateLiteralType).texts.join('<N>');
    throw new Error(`${name} has a member that is not a string: ${checker.typeToString(t)}`);
  });
}

// ---- the reference ----

/** The text under a heading (any level), up to the next heading of the same or a higher level; backticks in headings are ignored. */
function section(title: string): string | undefined {
  const lines = doc.split('\n');
  const level = (line: string) => /^(#{1,6})\s/.exec(line)?.[1]?.length;
  const start = lines.findIndex(
    (line) =>
      level(line) !== undefined &&
      line
        .replace(/^#+\s+/, '')
        .replaceAll('`', '')
        .trim() === title,
  );
  if (start < 0) return undefined;
  const depth = level(lines[start]!)!;
  const end = lines.findIndex((line, i) => i > start && (level(line) ?? 7) <= depth);
  return lines.slice(start + 1, end < 0 ? undefined : end).join('\n');
}

/**
 * The names a section's tables document: the first code span of each row's first cell, without
 * quotes, and without the argument list of a call (`captureState(socket)` is `captureState`).
 */
function rows(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const cell = /^\|\s*`([^`]+)`/.exec(line);
    if (!cell || /^\|\s*-/.test(line)) continue;
    names.add(
      cell[1]!
        .replace(/^'(.*)'$/, '$1')
        .replace(/\(.*$/, '')
        .trim(),
    );
  }
  return names;
}

interface Check {
  /** What a name is, for the message: 'option', 'event'... */
  what: string;
  /** Where it comes from in the code. */
  from: string;
  /** The heading of the section whose tables must list it. */
  section: string;
  names: readonly string[];
  /** Rows naming something the code no longer has are an error too. */
  exact: boolean;
}

function findProblems(checks: readonly Check[]): string[] {
  const problems: string[] = [];
  for (const check of checks) {
    const text = section(check.section);
    if (text === undefined) {
      const rowsFor =
        check.names.length > 0 ? `, with a table row for each ${check.what}: ${check.names.map((n) => `\`${n}\``).join(', ')}` : '';
      problems.push(`no section '${check.section}' (a heading with exactly that text) for ${check.from}${rowsFor}`);
      continue;
    }
    const documented = rows(text);
    for (const name of check.names) {
      if (!documented.has(name)) {
        problems.push(`${check.what} \`${name}\` (${check.from}): add a table row starting with \`${name}\` under '${check.section}'`);
      }
    }
    if (!check.exact) continue;
    for (const name of documented) {
      if (!check.names.includes(name)) {
        problems.push(
          `'${check.section}' documents ${check.what} \`${name}\`, which ${check.from} no longer has: remove or rename the row`,
        );
      }
    }
  }
  return problems;
}

/** Where each export is documented beyond its row under 'Exports'. */
const SECTIONS: Record<string, { section: string; what: string; names: () => string[]; exact?: boolean }> = {
  Takeover: { section: 'Takeover', what: 'member', names: () => classMembers('Takeover') },
  TakeoverError: { section: 'TakeoverError', what: 'member', names: () => classMembers('TakeoverError') },
  TakeoverOptions: { section: 'Options', what: 'option', names: () => properties('TakeoverOptions'), exact: true },
  ListenTarget: { section: 'Listen targets', what: 'listen target field', names: () => properties('ListenTarget'), exact: true },
  UpgradeOptions: { section: 'Upgrade options', what: 'upgrade option', names: () => properties('UpgradeOptions'), exact: true },
  TakeoverEvents: { section: 'Events', what: 'event', names: () => properties('TakeoverEvents'), exact: true },
  TakeoverState: { section: 'Lifecycle and states', what: 'state', names: () => literals('TakeoverState'), exact: true },
  TakeoverStats: { section: 'TakeoverStats', what: 'stats field', names: () => properties('TakeoverStats'), exact: true },
  SuccessorStep: { section: 'Protocol steps', what: 'protocol step', names: () => literals('SuccessorStep'), exact: true },
  TakeoverErrorCode: { section: 'Errors', what: 'error code', names: () => Object.values(ErrorCodes), exact: true },
};

/**
 * An export the table above does not know: a function or a constant is described by its row under
 * 'Exports' (like `fdOf`); a class or a type needs a section of its own name, listing its members.
 */
function ownSection(name: string): (typeof SECTIONS)[string] | undefined {
  const symbol = declared(name);
  if (symbol.flags & (ts.SymbolFlags.Function | ts.SymbolFlags.Variable)) return undefined;
  const type = checker.getDeclaredTypeOfSymbol(symbol);
  const isLiterals = type.isUnion() && type.types.every((t) => t.isStringLiteral() || t.flags & ts.TypeFlags.TemplateLiteral);
  const names = () => (symbol.flags & ts.SymbolFlags.Class ? classMembers(name) : isLiterals ? literals(name) : properties(name));
  return { section: name, what: 'member', names };
}

test(`${DOC} documents every export, member, option, event, state, step, stats field and error code, and nothing that is gone`, () => {
  const checks: Check[] = [{ what: 'export', from: 'src/index.ts', section: 'Exports', names: [...exported.keys()], exact: true }];
  for (const name of exported.keys()) {
    const known = SECTIONS[name] ?? ownSection(name);
    if (known) checks.push({ what: known.what, from: name, section: known.section, names: known.names(), exact: known.exact ?? false });
  }
  const problems = findProblems(checks);
  assert.deepEqual(problems, [], `${DOC} is out of step with the code (${problems.length}):\n  - ${problems.join('\n  - ')}\n`);
});

test('ErrorCodes: each name is its code without ERR_TAKEOVER_, as docs/API.md says', () => {
  for (const [name, code] of Object.entries(ErrorCodes)) assert.equal(code, `ERR_TAKEOVER_${name}`);
});

test('the checker finds what it must: a missing option, event, stats field or error code is reported by name', () => {
  const problems = findProblems([
    { what: 'option', from: 'TakeoverOptions', section: 'Options', names: [...properties('TakeoverOptions'), 'reusePort'], exact: true },
    { what: 'event', from: 'TakeoverEvents', section: 'Events', names: ['successor'], exact: true },
    {
      what: 'stats field',
      from: 'TakeoverStats',
      section: 'TakeoverStats',
      names: [...properties('TakeoverStats'), 'phases.notifyMs'],
      exact: false,
    },
    { what: 'error code', from: 'ErrorCodes', section: 'Errors', names: ['ERR_TAKEOVER_NOTIFY'], exact: false },
    { what: 'option', from: 'PoolOptions', section: 'PoolOptions', names: ['workers'], exact: false },
  ]);
  assert.deepEqual(
    problems.sort(),
    [
      "option `reusePort` (TakeoverOptions): add a table row starting with `reusePort` under 'Options'",
      ...properties('TakeoverEvents')
        .filter((e) => e !== 'successor')
        .map((e) => `'Events' documents event \`${e}\`, which TakeoverEvents no longer has: remove or rename the row`),
      "stats field `phases.notifyMs` (TakeoverStats): add a table row starting with `phases.notifyMs` under 'TakeoverStats'",
      "error code `ERR_TAKEOVER_NOTIFY` (ErrorCodes): add a table row starting with `ERR_TAKEOVER_NOTIFY` under 'Errors'",
      "no section 'PoolOptions' (a heading with exactly that text) for PoolOptions, with a table row for each option: `workers`",
    ].sort(),
  );
  // The nested fields and the union members are read from the declarations, not listed by hand.
  assert.ok(properties('TakeoverStats').includes('phases.totalMs'));
  assert.ok(properties('ListenTarget').includes('ipv6Only') && properties('ListenTarget').includes('path'));
  assert.ok(literals('SuccessorStep').includes('wave<N>'));
  assert.ok(classMembers('Takeover').includes('Takeover.start') && !classMembers('Takeover').includes('expectState'));
});
