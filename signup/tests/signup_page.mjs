// Drives the signup page in headless Chromium (Debian's, through playwright-core)
// with an injected EIP-1193 wallet whose accounts are anvil's unlocked dev
// accounts: signing and sending go to anvil (personal_sign, eth_sendTransaction),
// while the wallet's own choices (accounts, chain, switching, rejecting) are
// played by the shim. Run by controller/tests/signup_browser.rs.
//
// Usage: node signup_page.mjs '{"url","rpc","shots","buyer","poor","owner","subscriptions","deactivatePlan2"}'
//        node signup_page.mjs '{"url","rpc","shots","buyer","purchaseOnly":true,"purchaseTimeoutMs"}'
// The second form only buys (step 5) and waits as long as a real VM's boot takes
// (e2e/real_guests.rs logs in with the details it prints).
// Prints one JSON object with what the page showed. Any request to an origin
// other than the page's and the RPC's is blocked and reported.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = JSON.parse(process.argv[2] || '{}');
const { url, rpc, shots, buyer, poor, owner, subscriptions, deactivatePlan2 } = args;
const purchaseOnly = args.purchaseOnly === true;
const purchaseTimeout = args.purchaseTimeoutMs || 240000;
if (!url || !rpc || !shots || !buyer || (!purchaseOnly && !deactivatePlan2)) {
  console.error('usage: node signup_page.mjs JSON (see the file header)');
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

// The injected wallet. Runs in the page; `opts` picks its behaviour, and
// window.__shim lets the test change it mid-way.
function shim(opts) {
  const listeners = {};
  const state = { chainId: opts.chainId || '0x7a69', switch: opts.switch || 'accept', sign: opts.sign || 'sign', gas: opts.gas || null };
  window.__shim = state;
  const rejected = () => Object.assign(new Error('User rejected the request.'), { code: 4001 });
  const provider = {
    isBlockhostTestWallet: true,
    on(event, fn) { (listeners[event] ||= []).push(fn); },
    removeListener(event, fn) { listeners[event] = (listeners[event] || []).filter((f) => f !== fn); },
    async request({ method, params = [] }) {
      switch (method) {
        case 'eth_accounts':
          // A wallet that has not connected this site yet answers [] until asked.
          return opts.connected === false && !state.connected ? [] : [opts.account];
        case 'eth_requestAccounts':
          state.connected = true;
          return [opts.account];
        case 'eth_chainId':
          return state.chainId;
        case 'wallet_switchEthereumChain':
          if (state.switch === 'refuse') throw rejected();
          state.chainId = params[0].chainId;
          for (const f of listeners.chainChanged || []) f(state.chainId);
          return null;
        case 'personal_sign':
          if (state.sign === 'reject') throw rejected();
          return window.__anvil('personal_sign', params);
        case 'eth_sendTransaction': {
          // A wallet that sends without estimating when told to (so a reverting
          // call is mined and reverts, as when the chain changes under the user).
          const tx = { ...params[0] };
          if (state.gas && !tx.gas) tx.gas = state.gas;
          return window.__anvil('eth_sendTransaction', [tx]);
        }
        default:
          return window.__anvil(method, params);
      }
    },
  };
  if (!opts.eip6963) {
    window.ethereum = provider;
    return;
  }
  // Announced only through EIP-6963 (no window.ethereum), as some wallets do.
  const announce = () => window.dispatchEvent(new CustomEvent('eip6963:announceProvider', {
    detail: Object.freeze({ info: { uuid: '0b1a9c1e-5d1c-4c55-9b3a-3f7e1e2b6a01', name: 'Test wallet', icon: 'data:,', rdns: 'io.blockhost.test' }, provider }),
  }));
  window.addEventListener('eip6963:requestProvider', announce);
  announce();
}

const userDataDir = mkdtempSync(join(tmpdir(), 'bh-signup-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: DESKTOP,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const result = { states: {}, foreignRequests: [], cspViolations: [], consoleErrors: [] };
const allowed = new Set([new URL(url).origin, new URL(rpc).origin]);
try {
  await context.exposeFunction('__anvil', (method, params) => anvil(method, params));
  await context.route('**/*', (route) => {
    const u = route.request().url();
    if (allowed.has(new URL(u).origin)) return route.continue();
    result.foreignRequests.push(u);
    return route.abort();
  });

  const pages = [];
  const visit = async (wallet, viewport = DESKTOP) => {
    const page = await context.newPage();
    pages.push(page);
    await page.setViewportSize(viewport);
    page.on('console', (m) => {
      const t = m.text();
      if (/Content Security Policy|Refused to/i.test(t)) result.cspViolations.push(t);
      else if (m.type() === 'error') result.consoleErrors.push(t);
    });
    if (wallet) await page.addInitScript(shim, wallet);
    await page.goto(url);
    await page.waitForFunction(() => !['loading'].includes(document.getElementById('notice').dataset.state), null, { timeout: 30000 });
    return page;
  };
  const notice = (page) => page.$eval('#notice', (e) => ({ state: e.dataset.state, text: e.textContent }));
  // Waits for the notice to show one of `states` (and, if given, a text containing `text`).
  const waitNotice = async (page, states, timeout = 60000, text = '') => {
    await page.waitForFunction(([s, t]) => {
      const n = document.getElementById('notice');
      return s.includes(n.dataset.state) && (n.dataset.state !== s[0] || n.textContent.includes(t));
    }, [states, text], { timeout });
    return notice(page);
  };
  const stepState = (page, name) => page.$eval(`#steps li[data-step="${name}"]`, (e) => e.dataset.state);
  const shot = async (page, name, viewport) => {
    if (viewport) await page.setViewportSize(viewport);
    await page.screenshot({ path: join(shots, name), fullPage: true });
  };

  let page;
  if (!purchaseOnly) {
    // 1. No wallet: plans are still shown, buying is impossible.
    page = await visit(null);
    result.states.noWallet = { ...(await notice(page)), plans: await page.$$eval('#plans .plan', (p) => p.length) };
    await page.waitForFunction(() => document.getElementById('price').textContent.length > 0);
    await shot(page, 'no-wallet-desktop.png');
    await shot(page, 'no-wallet-phone.png', PHONE);
    await page.close();

    // 2. Wrong chain; the switch is refused, then accepted.
    page = await visit({ account: buyer, chainId: '0x1', switch: 'refuse' });
    result.states.wrongChain = { ...(await notice(page)), price: await page.$eval('#price', (e) => e.textContent) };
    await shot(page, 'wrong-chain-phone.png', PHONE);
    await page.click('#switch-chain');
    result.states.switchRefused = await waitNotice(page, ['switch-refused']);
    await page.evaluate(() => { window.__shim.switch = 'accept'; });
    await page.click('#switch-chain');
    result.states.switched = await waitNotice(page, ['ready', 'insufficient']);
    await page.close();

    // 3. Insufficient balance: a wallet with no stablecoin, announced through
    // EIP-6963 only, connected with the button.
    page = await visit({ account: poor, connected: false, eip6963: true });
    result.states.connect = await notice(page);
    await page.click('#connect');
    result.states.insufficient = { ...(await waitNotice(page, ['insufficient', 'ready'])), buyDisabled: await page.$eval('#buy', (b) => b.disabled) };
    await shot(page, 'insufficient-desktop.png');
    await page.close();

    // 4. Rejected signature.
    page = await visit({ account: buyer, sign: 'reject' });
    await waitNotice(page, ['ready']);
    await page.click('#buy');
    result.states.rejected = { ...(await waitNotice(page, ['rejected', 'error', 'reverted'])), signStep: await stepState(page, 'sign') };
    await shot(page, 'rejected-phone.png', PHONE);
    await page.close();
  }

  // 5. The purchase, through to the decrypted connection details.
  page = await visit({ account: buyer });
  await waitNotice(page, ['ready']);
  await page.check('#plans input[value="1"]');
  await page.fill('#days', '30');
  await waitNotice(page, ['ready']);
  await page.click('#buy');
  const end = await waitNotice(page, ['done', 'error', 'rejected', 'reverted'], purchaseTimeout);
  const steps = {};
  for (const s of ['sign', 'approve', 'pay', 'provision', 'mint']) steps[s] = await stepState(page, s);
  const details = async (root) => page.$eval(root, (r) => ({
    host: r.querySelector('[data-field="host"]')?.textContent,
    port: r.querySelector('[data-field="port"]')?.textContent,
    user: r.querySelector('[data-field="user"]')?.textContent,
    ssh: r.querySelector('.ssh-command')?.value,
  }));
  result.purchase = {
    ...end, steps,
    subscriptionId: await page.$eval('#progress-section', (e) => e.dataset.subscription || null),
    stepDetails: await page.$$eval('#steps li', (l) => l.map((e) => e.textContent.trim())),
  };
  if (end.state === 'done') result.purchase.details = await details('#purchase-result');
  await shot(page, 'purchased-desktop.png');
  await shot(page, 'purchased-phone.png', PHONE);
  await page.close();
  if (!purchaseOnly) {

    // 6. My VMs in a fresh page: decrypt (re-signing) and renew.
    page = await visit({ account: buyer });
    await page.waitForFunction(() => document.getElementById('vms').dataset.state === 'loaded');
    const card = '#vms .vm';
    result.myVms = {
      tokenId: await page.$eval(card, (c) => c.dataset.token),
      expiresBefore: await page.$eval(`${card} .expiry`, (e) => e.dataset.expires),
    };
    await page.click(`${card} .decrypt`);
    await page.waitForSelector(`${card} .details`, { timeout: 30000 });
    result.myVms.details = await details(card);
    await page.fill(`${card} .renew-days`, '10');
    await page.click(`${card} .renew`);
    result.myVms.renewNotice = await waitNotice(page, ['done', 'error', 'rejected', 'reverted', 'insufficient'], 60000, 'Renewed');
    await page.waitForFunction(() => document.getElementById('vms').dataset.state === 'loaded');
    result.myVms.expiresAfter = await page.$eval(`${card} .expiry`, (e) => e.dataset.expires);
    await page.click(`${card} .decrypt`);
    await page.waitForSelector(`${card} .details`);
    await shot(page, 'my-vms-desktop.png');
    await shot(page, 'my-vms-phone.png', PHONE);
    await page.close();

    // 7. A reverted transaction: the plan is withdrawn between the quote and the
    // purchase, and the wallet sends without estimating.
    page = await visit({ account: buyer, gas: '0x1c9c380' });
    await waitNotice(page, ['ready']);
    await page.check('#plans input[value="2"]');
    await page.fill('#days', '3');
    await waitNotice(page, ['ready']);
    await anvil('eth_sendTransaction', [{ from: owner, to: subscriptions, data: deactivatePlan2 }]);
    await page.click('#buy');
    result.states.reverted = { ...(await waitNotice(page, ['reverted', 'error', 'rejected'])), payStep: await stepState(page, 'pay') };
    await shot(page, 'reverted-desktop.png');
    await shot(page, 'reverted-phone.png', PHONE);
    await page.close();
  }
} catch (e) {
  console.error(e && e.stack ? e.stack : String(e));
  console.error(JSON.stringify(result, null, 1));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
if (!process.exitCode) console.log(JSON.stringify(result));
