// The demo buyer's payload, as a signup page would make it: npm eciesjs
// encrypts the buyer's personal_sign signature (the "0x…" text, read from
// stdin) to the server's public key. The public key is derived from the
// operator's key file (DEMO_SERVER_KEY_FILE) because the demo plays both
// parts; a real buyer gets it from the signup page. Prints the payload as hex.
'use strict';
const fs = require('fs');
const path = require('path');
const { PrivateKey, encrypt } = require(path.join(process.env.BLOCKHOST_ROOT, 'node_modules', 'eciesjs'));

const keyHex = fs.readFileSync(process.env.DEMO_SERVER_KEY_FILE, 'utf8').trim().replace(/^0x/, '');
const serverPublic = new PrivateKey(Buffer.from(keyHex, 'hex')).publicKey.toHex();
const signature = fs.readFileSync(0, 'utf8').trim();
if (!/^0x[0-9a-fA-F]{130}$/.test(signature)) {
  process.stderr.write('expected a 65-byte signature as 0x + 130 hex digits on stdin\n');
  process.exit(1);
}
process.stdout.write(Buffer.from(encrypt(serverPublic, Buffer.from(signature))).toString('hex'));
