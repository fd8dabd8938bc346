// Helper for tests/eciesjs_interop.rs: runs npm eciesjs (the repo's pinned
// copy) on a batch of operations read as JSON from stdin, answers JSON on stdout.
//   [{"op":"encrypt","key":"<receiver public key hex>","data":"<hex>"},
//    {"op":"decrypt","key":"<receiver secret key hex>","data":"<hex>"}]
//   -> [{"ok":"<hex>"} | {"err":"<message>"}, ...]
'use strict';
const path = require('path');
const root = process.env.BLOCKHOST_ROOT;
const { encrypt, decrypt } = require(path.join(root, 'node_modules', 'eciesjs'));

const ops = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = ops.map(({ op, key, data }) => {
  try {
    const input = Buffer.from(data, 'hex');
    const result = op === 'encrypt' ? encrypt(key, input) : decrypt(key, input);
    return { ok: Buffer.from(result).toString('hex') };
  } catch (e) {
    return { err: String(e && e.message ? e.message : e) };
  }
});
process.stdout.write(JSON.stringify(out));
