// Drives the real signing page in headless Chromium (Debian's, through
// playwright-core) with an injected EIP-1193 wallet whose personal_sign is answered
// by foundry's `cast wallet sign` (key material from a mnemonic file, never argv).
//
// Usage: node signing_page.mjs URL EXPECTED_ADDRESS OTHER_ADDRESS MNEMONIC_FILE CAST SCREENSHOT_DIR
// Walks the page's states on one pending login — no wallet, wrong account,
// rejected signature — then signs for real, checks the one-shot and size rules of
// the API from the page's origin, and prints one JSON line with what it saw.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, address, other, mnemonic, cast, shots] = process.argv.slice(2);
if (!shots) {
  console.error('usage: node signing_page.mjs URL ADDRESS OTHER_ADDRESS MNEMONIC CAST SCREENSHOT_DIR');
  process.exit(2);
}

// The wallet the page talks to. `behaviour` picks how it answers.
function wallet({ behaviour, account }) {
  window.ethereum = {
    isTestWallet: true,
    async request({ method, params }) {
      if (method === 'eth_requestAccounts' || method === 'eth_accounts') return [account];
      if (method === 'personal_sign') {
        if (behaviour === 'reject') {
          const e = new Error('User rejected the request.');
          e.code = 4001;
          throw e;
        }
        return await window.__castSign(params[0], params[1]);
      }
      throw Object.assign(new Error(`unsupported ${method}`), { code: 4200 });
    },
  };
}

const userDataDir = mkdtempSync(join(tmpdir(), 'bh-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true, // the signer's certificate is self-signed by design
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const result = { states: {} };
try {
  await context.exposeFunction('__castSign', (hexMessage, account) => {
    if (String(account).toLowerCase() !== address.toLowerCase()) throw new Error('unknown account');
    const message = Buffer.from(hexMessage.slice(2), 'hex').toString('utf8');
    result.signedMessage = message;
    return execFileSync(cast, ['wallet', 'sign', '--mnemonic', mnemonic, message], { encoding: 'utf8' }).trim();
  });

  const visit = async (name, setup) => {
    const page = await context.newPage();
    // addInitScript passes one serialisable argument to the function.
    if (setup) await page.addInitScript(wallet, { behaviour: setup[0], account: setup[1] });
    await page.goto(url);
    await page.waitForFunction(() => !['loading'].includes(document.getElementById('status').dataset.state));
    return page;
  };
  const stateAfterSign = async (page) => {
    await page.click('#sign');
    await page.waitForFunction(() => !['ready', 'signing'].includes(document.getElementById('status').dataset.state));
    return page.$eval('#status', (e) => ({ state: e.dataset.state, text: e.textContent }));
  };

  // No wallet in the browser.
  let page = await visit('no-wallet', null);
  result.states.noWallet = await page.$eval('#status', (e) => ({ state: e.dataset.state, text: e.textContent }));
  result.shownMessage = await page.$eval('#message', (e) => e.textContent);
  await page.screenshot({ path: join(shots, 'no-wallet.png') });
  await page.close();

  // A wallet offering another account.
  page = await visit('wrong-account', ['sign', other]);
  result.states.wrongAccount = await stateAfterSign(page);
  await page.close();

  // The user rejects the signature request.
  page = await visit('rejected', ['reject', address]);
  result.states.rejected = await stateAfterSign(page);
  await page.close();

  // The real thing.
  page = await visit('sign', ['sign', address]);
  result.states.ready = await page.$eval('#status', (e) => e.dataset.state);
  result.states.done = await stateAfterSign(page);
  result.manualSignature = await page.$eval('#signature', (e) => e.value);
  await page.screenshot({ path: join(shots, 'signed.png') });

  // API rules, from the page's own origin: a second signature and an oversized body.
  const id = new URL(url).hash.slice(1);
  result.api = await page.evaluate(async ({ id, sig }) => {
    const again = await fetch(`/api/session/${id}`, { method: 'POST', body: sig });
    const big = await fetch(`/api/session/${id}`, { method: 'POST', body: 'f'.repeat(4096) });
    const gone = await fetch(`/api/session/${id}`);
    return { again: again.status, big: big.status, getAfter: gone.status };
  }, { id, sig: result.manualSignature });
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
