// Drives the setup wizard's page in headless Chromium (Debian's, through
// playwright-core) with an injected EIP-1193 wallet whose account is anvil's
// unlocked dev account 0: personal_sign goes to anvil, the wallet's own choices
// are played by the shim. Walks every stage and step, shows server-side errors,
// goes back and forth, finalizes, and takes screenshots of each stage at desktop
// and phone widths. Run by wizard/tests/browser.rs.
//
// Usage: node wizard_page.mjs '{"url","rpc","shots","bodies","code","admin","pve":{"url","fingerprint"},"password","command"}'
// Prints one JSON object with what the page showed. Requests to other origins
// are blocked and reported; every API response body is written to `bodies`
// (for the test's secret grep).
import { chromium } from 'playwright-core';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = JSON.parse(process.argv[2] || '{}');
const { url, rpc, shots, bodies, code, admin, pve, password, command } = args;
if (!url || !pve) {
  console.error('usage: node wizard_page.mjs JSON (see the file header)');
  process.exit(2);
}
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };

let rpcId = 0;
async function anvil(method, params) {
  const resp = await fetch(rpc, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: ++rpcId, method, params }),
  });
  const body = await resp.json();
  if (body.error) throw new Error(body.error.message || JSON.stringify(body.error));
  return body.result;
}

// The injected wallet (EIP-6963 only, as some wallets do: no window.ethereum).
function shim(opts) {
  const provider = {
    async request({ method, params = [] }) {
      switch (method) {
        case 'eth_requestAccounts':
        case 'eth_accounts':
          return [opts.account];
        case 'eth_chainId':
          return '0x7a69';
        case 'personal_sign':
          return window.__anvil('personal_sign', params);
        default:
          throw Object.assign(new Error(`unsupported ${method}`), { code: 4200 });
      }
    },
    on() {}, removeListener() {},
  };
  const announce = () => window.dispatchEvent(new CustomEvent('eip6963:announceProvider', {
    detail: Object.freeze({ info: { uuid: '2f1c7e4a-8b9d-4c3e-9f1a-6d5b4c3a2b10', name: 'Test wallet', icon: 'data:,', rdns: 'io.blockhost.test' }, provider }),
  }));
  window.addEventListener('eip6963:requestProvider', announce);
}

const userDataDir = mkdtempSync(join(tmpdir(), 'bh-wizard-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: DESKTOP,
  // The wizard's certificate is self-signed by design; the test checks its
  // fingerprint against the console text separately.
  ignoreHTTPSErrors: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const result = { states: {}, foreignRequests: [], cspViolations: [], consoleErrors: [] };
const apiBodies = [];
const origin = new URL(url).origin;
let exitCode = 0;
try {
  await context.exposeFunction('__anvil', (method, params) => anvil(method, params));
  await context.route('**/*', (route) => {
    const u = route.request().url();
    if (new URL(u).origin === origin) return route.continue();
    result.foreignRequests.push(u);
    return route.abort();
  });
  const page = await context.newPage();
  page.on('console', (m) => {
    const t = m.text();
    if (/Content Security Policy|Refused to/i.test(t)) result.cspViolations.push(t);
    else if (m.type() === 'error' && !/status of 40[0-9]/.test(t)) result.consoleErrors.push(t);
  });
  page.on('response', async (r) => {
    if (!r.url().startsWith(origin)) return;
    try { apiBodies.push(await r.text()); } catch (_) { /* the wizard stopped */ }
  });
  await page.addInitScript(shim, { account: admin });

  const notice = () => page.$eval('#notice', (e) => ({ state: e.dataset.state, text: e.textContent }));
  const shot = async (name) => {
    await page.screenshot({ path: join(shots, `${name}-desktop.png`), fullPage: true });
    await page.setViewportSize(PHONE);
    await page.screenshot({ path: join(shots, `${name}-phone.png`), fullPage: true });
    await page.setViewportSize(DESKTOP);
  };
  const visible = (sel) => page.waitForSelector(sel, { state: 'visible', timeout: 30000 });
  const waitNotice = (states, timeout = 60000) => page.waitForFunction((s) => s.includes(document.getElementById('notice').dataset.state), states, { timeout });

  // 1. The code: a wrong one is counted, the right one passes.
  await page.goto(url);
  await visible('#stage-code');
  await shot('1-code');
  await page.fill('#code', code === 'AAAAAA' ? 'BBBBBB' : 'AAAAAA');
  await page.click('#code-submit');
  await waitNotice(['error']);
  result.states.wrongCode = await notice();
  await shot('1-code-wrong');
  await page.fill('#code', code.toLowerCase());
  await page.click('#code-submit');

  // 2. The wallet: SIWE through the EIP-6963 wallet.
  await visible('#stage-wallet');
  await shot('2-wallet');
  await page.click('#connect');
  await visible('#stage-access');
  result.states.admin = await page.$eval('#admin', (e) => e.textContent);
  await shot('3-access');
  await page.click('#access-sign');

  // 3. Proxmox: the server's messages first, then right answers.
  await visible('#form-proxmox');
  // The notice is already "ready" before the detection answers: wait for its own
  // message, or its answer would overwrite the URL typed below.
  await page.click('#detect');
  await page.waitForFunction(() => /Filled in from this node|no local Proxmox certificate/.test(document.getElementById('notice').textContent), null, { timeout: 30000 });
  await page.fill('#pve-url', pve.url);
  await page.fill('#pve-fp', pve.fingerprint);
  await page.fill('#pve-nodes', 'pve1');
  await page.fill('#pve-vmid-first', '200');
  await page.fill('#pve-vmid-last', '9100');
  await page.fill('#pve-ipv4', '10.21.0.0/24');
  await page.fill('#pve-gw4', '10.22.0.1');
  await page.click('#form-proxmox button[type=submit]');
  await waitNotice(['error']);
  result.states.proxmoxErrors = await page.$$eval('#form-proxmox .field-error', (ps) => Object.fromEntries(ps.filter((p) => p.textContent).map((p) => [p.dataset.for, p.textContent])));
  await shot('4-proxmox-errors');
  await page.fill('#pve-password', password);
  await page.fill('#pve-vmid-last', '299');
  await page.fill('#pve-gw4', '10.21.0.1');
  await page.fill('#pve-dns', '10.21.0.1');
  await page.click('#form-proxmox button[type=submit]');
  await visible('#form-chain');
  await shot('5-proxmox-done');

  // 4. Chain: back to Proxmox and forth again keeps the answers.
  await page.fill('#chain-id', '31337');
  await page.fill('#chain-rpc', rpc);
  await page.click('#form-chain [data-back]');
  await visible('#form-proxmox');
  result.states.kept = { url: await page.inputValue('#pve-url'), vmidLast: await page.inputValue('#pve-vmid-last') };
  await page.click('#stepnav [data-go="chain"]');
  await visible('#form-chain');
  result.states.keptChain = { rpc: await page.inputValue('#chain-rpc') };
  await page.selectOption('#chain-coin-mode', 'dev');
  await page.fill('#chain-conf', '0');
  const row = (i) => `#plans .plan-row:nth-child(${i})`;
  await page.fill(`${row(1)} input[data-plan="name"]`, 'basic');
  await page.fill(`${row(1)} input[data-plan="pricePerDayCents"]`, '150');
  await page.click('#add-plan');
  await page.fill(`${row(2)} input[data-plan="name"]`, 'large');
  await page.fill(`${row(2)} input[data-plan="pricePerDayCents"]`, '500');
  await page.fill(`${row(2)} input[data-plan="cores"]`, '2');
  await page.fill(`${row(2)} input[data-plan="memoryMib"]`, '2048');
  await page.fill(`${row(2)} input[data-plan="diskGib"]`, '20');
  await page.click('#form-chain button[type=submit]');
  await visible('#form-admin');
  // The server wallet was shown on the chain step: fund it, as an operator would.
  await page.click('#stepnav [data-go="chain"]');
  await visible('#server-wallet');
  const server = await page.$eval('#server-address', (e) => e.textContent);
  result.states.serverAddress = server;
  result.states.balanceBefore = await page.$eval('#server-balance', (e) => e.textContent);
  await anvil('eth_sendTransaction', [{ from: admin, to: server, value: '0x8ac7230489e80000' }]);
  await page.click('#refresh-balance');
  await page.waitForFunction(() => document.getElementById('server-balance').textContent.startsWith('10.'), null, { timeout: 30000 });
  result.states.balanceAfter = await page.$eval('#server-balance', (e) => e.textContent);
  await shot('6-chain');
  await page.click('#form-chain button[type=submit]');

  // 5. Admin commands, 6. summary.
  await visible('#form-admin');
  if (await page.isVisible('#admin-command')) await page.fill('#admin-command', command);
  await shot('7-admin');
  await page.click('#form-admin button[type=submit]');
  await visible('#summary');
  result.states.summary = await page.$eval('#summary-list', (e) => e.textContent);
  await shot('8-summary');

  // 7. Finalize, followed to the end.
  await page.click('#finalize');
  await visible('#stage-finalize');
  await page.waitForFunction(() => document.querySelectorAll('#run-steps li[data-state="active"], #run-steps li[data-state="done"]').length > 0, null, { timeout: 30000 });
  await page.screenshot({ path: join(shots, '9-finalizing-desktop.png'), fullPage: true });
  await waitNotice(['done', 'error'], 240000);
  result.states.final = await notice();
  result.states.steps = await page.$$eval('#run-steps li', (ls) => ls.map((l) => [l.dataset.step, l.dataset.state, l.textContent]));
  result.states.outputs = await page.$eval('#run-outputs', (e) => e.textContent);
  await shot('10-done');
} catch (e) {
  result.error = String(e && e.stack || e);
  exitCode = 1;
} finally {
  writeFileSync(bodies, JSON.stringify(apiBodies));
  await context.close();
}
process.stdout.write(JSON.stringify(result));
process.exit(exitCode);
