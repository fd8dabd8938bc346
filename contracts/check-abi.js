#!/usr/bin/env node
// Proves the compiled contracts answer to the original BlockHost interface:
// for every line of reference-abi.txt, `cast` computes the selector or topic
// from the signature string as REFERENCE.md writes it, and it must appear in
// what forge compiled; parameter types, `indexed` flags and return types must
// match too (a topic stays the same when `indexed` moves, but decoding breaks).
// When REFERENCE.md is at hand, each string must also occur in it verbatim,
// so the list cannot drift from the reference.
//
// Usage: node check-abi.js <reference-abi.txt> [REFERENCE.md | none]
// Needs forge and cast on PATH (check-abi.sh sets that up).
'use strict';
const fs = require('fs');
const { execFileSync } = require('child_process');

const [listPath, referencePath] = process.argv.slice(2);
if (!listPath) {
  console.error('usage: check-abi.js <reference-abi.txt> [REFERENCE.md|none]');
  process.exit(2);
}
const referenceText =
  referencePath && referencePath !== 'none' && fs.existsSync(referencePath)
    ? fs.readFileSync(referencePath, 'utf8')
    : null;

const run = (cmd, args) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
const forgeInspect = (contract, field) =>
  JSON.parse(run('forge', ['inspect', '--offline', '--use', './solc-wrapper', contract, field, '--json']));

// "name(type [indexed] [name], ...) [returns (type [name], ...)]" -> parts.
// Our interface has no tuples, so splitting on commas is enough.
function parseSignature(sig) {
  const m = /^(\w+)\(([^)]*)\)(?:\s+returns\s+\(([^)]*)\))?$/.exec(sig.trim());
  if (!m) throw new Error(`cannot parse signature: ${sig}`);
  const params = (list) =>
    list.trim() === ''
      ? []
      : list.split(',').map((p) => {
          const words = p.trim().split(/\s+/);
          return { type: words[0], indexed: words.includes('indexed') };
        });
  return { name: m[1], inputs: params(m[2]), outputs: m[3] === undefined ? null : params(m[3]) };
}

const compiled = new Map();
function contractInfo(name) {
  if (!compiled.has(name)) {
    const hex = (obj) => new Set(Object.values(obj).map((v) => (v.startsWith('0x') ? v : `0x${v}`).toLowerCase()));
    compiled.set(name, {
      abi: forgeInspect(name, 'abi'),
      functions: hex(forgeInspect(name, 'methodIdentifiers')),
      events: hex(forgeInspect(name, 'events')),
      errors: hex(forgeInspect(name, 'errors')),
    });
  }
  return compiled.get(name);
}

const failures = [];
let checked = 0;
const lines = fs.readFileSync(listPath, 'utf8').split('\n');
lines.forEach((raw, index) => {
  const line = raw.trim();
  if (line === '' || line.startsWith('#')) return;
  const where = `${listPath}:${index + 1}`;
  const m = /^(\w+)\s+(function|event|error|erc721-event)\s+(.+)$/.exec(line);
  if (!m) {
    failures.push(`${where}: malformed line`);
    return;
  }
  const [, contract, kind, sig] = m;
  const fail = (msg) => failures.push(`${where}: ${contract} ${sig}: ${msg}`);
  checked++;

  if (referenceText !== null && kind !== 'erc721-event') {
    const quoted = kind === 'error' ? new RegExp(`\\b${parseSignature(sig).name}\\b`).test(referenceText) : referenceText.includes(sig);
    if (!quoted) fail('not written this way in REFERENCE.md');
  }

  const info = contractInfo(contract);
  const isEvent = kind !== 'function' && kind !== 'error';
  const expected = run('cast', [isEvent ? 'sig-event' : 'sig', sig]).toLowerCase();
  const pool = isEvent ? info.events : kind === 'error' ? info.errors : info.functions;
  if (!pool.has(expected)) fail(`${isEvent ? 'topic' : 'selector'} ${expected} not in the compiled contract`);

  const parsed = parseSignature(sig);
  const abiType = isEvent ? 'event' : kind;
  const entry = info.abi.find(
    (e) =>
      e.type === abiType &&
      e.name === parsed.name &&
      e.inputs.length === parsed.inputs.length &&
      e.inputs.every((inp, i) => inp.type === parsed.inputs[i].type),
  );
  if (!entry) {
    fail('no ABI entry with this name and these parameter types');
    return;
  }
  if (isEvent) {
    entry.inputs.forEach((inp, i) => {
      if (Boolean(inp.indexed) !== parsed.inputs[i].indexed) {
        fail(`parameter ${i} (${inp.name}) indexed=${Boolean(inp.indexed)}, reference says ${parsed.inputs[i].indexed}`);
      }
    });
  }
  if (kind === 'function' && parsed.outputs !== null) {
    const got = entry.outputs.map((o) => o.type).join(',');
    const want = parsed.outputs.map((o) => o.type).join(',');
    if (got !== want) fail(`returns (${got}), reference says (${want})`);
  }
});

if (referenceText === null) console.log('note: REFERENCE.md not found, verbatim check skipped');
if (failures.length > 0) {
  console.error(`ABI check FAILED (${failures.length} of ${checked} items):`);
  for (const f of failures) console.error(`  ${f}`);
  process.exit(1);
}
console.log(`ABI check ok: ${checked} signatures, events and errors match the compiled contracts`);
