#!/usr/bin/env node
// Copies the ABI and creation bytecode of the contracts the Rust side embeds
// from forge's output directory into small, stably formatted JSON files.
// Usage: node export-artifacts.js <forge-out-dir> <artifacts-dir>
'use strict';
const fs = require('fs');
const path = require('path');

// [source file, contract name]
const CONTRACTS = [
  ['BlockhostSubscriptions.sol', 'BlockhostSubscriptions'],
  ['AccessCredentialNFT.sol', 'AccessCredentialNFT'],
  ['MockERC20.sol', 'MockERC20'],
  ['MockUniswapV2Pair.sol', 'MockUniswapV2Pair'],
];

const [outDir, artifactsDir] = process.argv.slice(2);
if (!outDir || !artifactsDir) {
  console.error('usage: export-artifacts.js <forge-out-dir> <artifacts-dir>');
  process.exit(2);
}
fs.mkdirSync(artifactsDir, { recursive: true });
for (const [file, name] of CONTRACTS) {
  const built = JSON.parse(fs.readFileSync(path.join(outDir, file, `${name}.json`), 'utf8'));
  const bytecode = built.bytecode && built.bytecode.object;
  if (!Array.isArray(built.abi) || typeof bytecode !== 'string' || !/^0x[0-9a-f]+$/.test(bytecode)) {
    console.error(`${file}:${name}: no ABI or no linked bytecode in forge output`);
    process.exit(1);
  }
  // Key order fixed, two-space indent, trailing newline: diffs stay readable
  // and check-fresh.sh can compare byte for byte.
  const text = JSON.stringify({ abi: built.abi, bytecode }, null, 2) + '\n';
  fs.writeFileSync(path.join(artifactsDir, `${name}.json`), text);
}
