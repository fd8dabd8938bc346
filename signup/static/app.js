// The BlockHost signup page: connect a wallet, buy a subscription, watch the VM
// being provisioned, decrypt its connection details from the access NFT, renew.
//
// Everything server-specific comes from config.json (written by blockhostd from
// its configuration). The chain is read through config.rpcUrl; the wallet
// (EIP-1193: window.ethereum, or the first EIP-6963 announcement) only signs
// and sends transactions. Crypto from npm
// is in vendor.js (BlockhostVendor.encrypt = eciesjs, .keccak_256); AES-GCM is
// the browser's WebCrypto. No framework: plain DOM, textContent only (plan names
// come from the chain and are never parsed as HTML).
'use strict';
(() => {
  const V = window.BlockhostVendor;
  const $ = (id) => document.getElementById(id);
  const utf8 = new TextEncoder();

  let cfg = null;          // config.json
  let token = null;        // {address, decimals, symbol}: the primary stablecoin
  let plans = [];          // [{id, name, centsPerDay}] active plans
  let account = null;      // connected address, lower case
  let chainOk = false;     // wallet on cfg.chainId
  let busy = false;        // a purchase or renewal is under way
  let provider = null;     // the EIP-1193 wallet in use
  const signatures = new Map(); // account -> signature of the public secret (memory only)

  // ---------- bytes, hex, ABI ----------
  const hex = (bytes) => '0x' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  const unhex = (h) => {
    const s = h.startsWith('0x') ? h.slice(2) : h;
    if (s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error('not hex: ' + h.slice(0, 20));
    const out = new Uint8Array(s.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
    return out;
  };
  const keccakHex = (text) => hex(V.keccak_256(utf8.encode(text)));
  const selector = (signature) => keccakHex(signature).slice(0, 10);
  const word = (n) => BigInt(n).toString(16).padStart(64, '0');
  const padRight = (h) => h + '0'.repeat((64 - (h.length % 64)) % 64);

  // ABI-encodes a call: args are [type, value] with type uint256, address or bytes.
  function encodeCall(signature, args) {
    let head = '';
    let tail = '';
    const headSize = 32 * args.length;
    for (const [type, value] of args) {
      if (type === 'uint256') head += word(value);
      else if (type === 'address') head += value.toLowerCase().replace(/^0x/, '').padStart(64, '0');
      else if (type === 'bytes') {
        head += word(headSize + tail.length / 2);
        const body = hex(value).slice(2);
        tail += word(value.length) + padRight(body);
      } else throw new Error('unsupported ABI type ' + type);
    }
    return selector(signature) + head + tail;
  }
  // Decoding of return data (hex without 0x, word by word).
  const words = (data) => data.replace(/^0x/, '');
  const uintAt = (d, i) => BigInt('0x' + (d.slice(64 * i, 64 * i + 64) || '0'));
  const addressAt = (d, i) => '0x' + d.slice(64 * i + 24, 64 * i + 64);
  const bytesAt = (d, i) => {
    const off = Number(uintAt(d, i)) * 2;
    const len = Number(BigInt('0x' + d.slice(off, off + 64))) * 2;
    return unhex(d.slice(off + 64, off + 64 + len));
  };
  const stringAt = (d, i) => new TextDecoder().decode(bytesAt(d, i));

  // ---------- chain reads (config RPC) and wallet ----------
  let rpcId = 0;
  async function rpc(method, params) {
    const resp = await fetch(cfg.rpcUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', id: ++rpcId, method, params }),
    });
    if (!resp.ok) throw new Error(`the chain's RPC endpoint answered HTTP ${resp.status}`);
    const body = await resp.json();
    if (body.error) throw Object.assign(new Error(body.error.message || 'RPC error'), { rpc: body.error });
    return body.result;
  }
  const call = async (to, data) => words(await rpc('eth_call', [{ to, data }, 'latest']));
  const subs = (sig, args = []) => call(cfg.subscriptionsContract, encodeCall(sig, args));
  const nft = (sig, args = []) => call(cfg.nftContract, encodeCall(sig, args));
  const erc20 = (sig, args = []) => call(token.address, encodeCall(sig, args));
  const wallet = (method, params) => provider.request({ method, params });

  // Finds the wallet: window.ethereum, or an EIP-6963 announcement (wallets that
  // do not claim window.ethereum). Waits briefly, since both may come after load.
  function findWallet(waitMs = 400) {
    return new Promise((resolve) => {
      if (window.ethereum) { resolve(window.ethereum); return; }
      const done = (p) => {
        window.removeEventListener('eip6963:announceProvider', onAnnounce);
        window.removeEventListener('ethereum#initialized', onInit);
        clearTimeout(timer);
        resolve(p);
      };
      const onAnnounce = (e) => { if (e.detail && e.detail.provider) done(e.detail.provider); };
      const onInit = () => done(window.ethereum || null);
      window.addEventListener('eip6963:announceProvider', onAnnounce);
      window.addEventListener('ethereum#initialized', onInit);
      const timer = setTimeout(() => done(window.ethereum || null), waitMs);
      window.dispatchEvent(new Event('eip6963:requestProvider'));
    });
  }
  const isUserRejection = (e) => e && (e.code === 4001 || e.code === 'ACTION_REJECTED');

  // ---------- formatting and the notice ----------
  function units(amount, decimals) {
    const base = 10n ** BigInt(decimals);
    const whole = amount / base;
    let frac = (amount % base).toString().padStart(decimals, '0').replace(/0+$/, '');
    if (frac.length > 6) frac = frac.slice(0, 6);
    return frac ? `${whole}.${frac}` : `${whole}`;
  }
  const money = (amount) => `${units(amount, token.decimals)} ${token.symbol}`;
  const dollars = (cents) => `$${(Number(cents) / 100).toFixed(2)}`;
  const when = (unix) => new Date(Number(unix) * 1000).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  const shortHash = (h) => `${h.slice(0, 10)}…${h.slice(-6)}`;

  function notice(state, text) {
    const n = $('notice');
    n.dataset.state = state;
    n.textContent = text;
    $('switch-chain').hidden = !(state === 'wrong-chain' || state === 'switch-refused');
  }

  // A failure already shown to the user: stops a flow without another message.
  class Shown extends Error {}
  const fail = (state, text) => { notice(state, text); return new Shown(text); };

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) e.append(c);
    return e;
  }

  // ---------- start-up: config, stablecoin, plans ----------
  async function start() {
    try {
      cfg = await (await fetch('config.json')).json();
      const stable = addressAt(await subs('getPrimaryStablecoin()'), 0);
      const [dec, sym] = await Promise.all([
        call(stable, encodeCall('decimals()', [])),
        call(stable, encodeCall('symbol()', [])).then((d) => stringAt(d, 0)).catch(() => 'tokens'),
      ]);
      token = { address: stable, decimals: Number(uintAt(dec, 0)), symbol: sym };
      await loadPlans();
    } catch (e) {
      notice('error', `Cannot read the chain (${e.message}). Try again later.`);
      return;
    }
    $('connect').addEventListener('click', connect);
    $('switch-chain').addEventListener('click', switchChain);
    $('buy').addEventListener('click', () => buy().catch(unexpected));
    $('days').addEventListener('input', () => quote().catch(unexpected));
    provider = await findWallet();
    if (!provider) {
      $('connect').disabled = true;
      notice('no-wallet', 'No wallet found in this browser. Install an Ethereum wallet (such as MetaMask) or open this page in your wallet\'s browser to buy and to see your VMs.');
      await quote();
      return;
    }
    provider.on?.('chainChanged', () => checkChain().catch(unexpected));
    provider.on?.('accountsChanged', (a) => useAccount(a && a[0]).catch(unexpected));
    const existing = await wallet('eth_accounts').catch(() => []);
    if (existing && existing[0]) await useAccount(existing[0]);
    else {
      notice('connect', 'Connect your wallet to buy a VM or to see the ones you have.');
      await quote();
    }
  }

  async function loadPlans() {
    const count = Number(uintAt(await subs('getTotalPlanCount()'), 0));
    const found = [];
    for (let id = 1; id <= count; id++) {
      const d = await subs('getPlan(uint256)', [['uint256', id]]);
      if (uintAt(d, 2) === 1n) found.push({ id, name: stringAt(d, 0), centsPerDay: uintAt(d, 1) });
    }
    plans = found;
    const box = $('plans');
    box.replaceChildren();
    if (!plans.length) {
      box.append(el('p', { class: 'muted' }, 'No plans are on sale right now.'));
      return;
    }
    plans.forEach((p, i) => {
      const input = el('input', { type: 'radio', name: 'plan', value: String(p.id), checked: i === 0 });
      input.addEventListener('change', () => quote().catch(unexpected));
      box.append(el('label', { class: 'plan', 'data-plan': String(p.id) }, input,
        el('span', { class: 'name' }, p.name), el('span', { class: 'per-day' }, `${dollars(p.centsPerDay)} per day`)));
    });
  }

  const selectedPlan = () => {
    const input = document.querySelector('input[name="plan"]:checked');
    return input ? plans.find((p) => String(p.id) === input.value) : null;
  };
  const days = (input = $('days')) => {
    const n = Number(input.value);
    return Number.isInteger(n) && n >= 1 && n <= 3650 ? n : null;
  };

  // ---------- wallet connection and chain ----------
  async function connect() {
    try {
      const accounts = await wallet('eth_requestAccounts');
      await useAccount(accounts && accounts[0]);
    } catch (e) {
      if (isUserRejection(e)) notice('rejected', 'You declined the connection request. Press "Connect wallet" to try again.');
      else notice('error', `The wallet could not connect: ${e.message}`);
    }
  }

  async function useAccount(a) {
    account = a ? a.toLowerCase() : null;
    $('account').hidden = !account;
    $('account').textContent = account ? `${account.slice(0, 6)}…${account.slice(-4)}` : '';
    $('account').title = account || '';
    $('connect').hidden = !!account;
    if (!account) {
      notice('connect', 'Connect your wallet to buy a VM or to see the ones you have.');
      chainOk = false;
      await quote();
      return;
    }
    await checkChain();
  }

  async function checkChain() {
    if (!account) return;
    const id = await wallet('eth_chainId');
    chainOk = BigInt(id) === BigInt(cfg.chainId);
    if (!chainOk) {
      await quote(); // the price still shows; Buy stays disabled
      $('vms').replaceChildren(el('p', { class: 'muted' }, `Switch your wallet to chain ${cfg.chainId} to see your VMs.`));
      notice('wrong-chain', `Your wallet is on chain ${BigInt(id)}; this server sells on chain ${cfg.chainId}. Switch networks to continue.`);
      $('buy').disabled = true;
      return;
    }
    await quote();
    await loadVms();
  }

  async function switchChain() {
    try {
      await wallet('wallet_switchEthereumChain', [{ chainId: cfg.chainIdHex }]);
    } catch (e) {
      if (e && e.code === 4902) {
        // The wallet does not know the chain: offer to add it, then switch.
        try {
          await wallet('wallet_addEthereumChain', [{
            chainId: cfg.chainIdHex, chainName: `BlockHost chain ${cfg.chainId}`, rpcUrls: [cfg.rpcUrl],
            nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
          }]);
        } catch (e2) {
          notice('switch-refused', `Your wallet did not add chain ${cfg.chainId} (${e2.message}). Add it in your wallet, then switch to it.`);
          return;
        }
      } else {
        const why = isUserRejection(e) ? 'You declined the switch' : `Your wallet refused the switch (${e.message})`;
        notice('switch-refused', `${why}. Buying and renewing need your wallet on chain ${cfg.chainId}; press "Switch network" to try again, or switch in your wallet.`);
        return;
      }
    }
    await checkChain();
  }

  // ---------- price, balance, the Buy button ----------
  // Shows price and balance and enables Buy; `keepNotice` leaves the notice alone
  // (after a failed purchase, whose message must stay visible).
  async function quote(keepNotice = false) {
    const plan = selectedPlan();
    const n = days();
    $('buy').disabled = true;
    if (!plan || !n) {
      $('price').textContent = n ? '' : 'Choose between 1 and 3650 days.';
      return;
    }
    const price = uintAt(await subs('calculatePayment(uint256,uint256,uint256)', [['uint256', plan.id], ['uint256', n], ['uint256', 1]]), 0);
    $('price').textContent = `${money(price)} for ${n} day${n === 1 ? '' : 's'} of ${plan.name}`;
    $('price').dataset.amount = price.toString();
    if (!account || !chainOk) { $('balance').textContent = ''; return; }
    const balance = uintAt(await erc20('balanceOf(address)', [['address', account]]), 0);
    $('balance').textContent = `Your balance: ${money(balance)}`;
    $('balance').dataset.amount = balance.toString();
    if (busy) return;
    if (keepNotice) {
      $('buy').disabled = balance < price;
      return;
    }
    if (balance < price) {
      notice('insufficient', `Insufficient balance: this costs ${money(price)} and your wallet holds ${money(balance)}. Add ${token.symbol} to your wallet, or choose fewer days.`);
      return;
    }
    notice('ready', 'Ready. Choose a plan and the number of days, then press Buy.');
    $('buy').disabled = false;
  }

  // ---------- transactions ----------
  function step(name, state, detail) {
    const li = document.querySelector(`#steps li[data-step="${name}"]`);
    li.dataset.state = state;
    if (detail !== undefined) li.querySelector('.detail').textContent = detail;
  }

  // Sends a transaction through the wallet and waits for its receipt; reports
  // into `report(state, text)`; throws Shown on rejection or revert.
  async function send(to, data, report) {
    report('active', 'Waiting for your wallet…');
    notice('busy', 'Confirm the transaction in your wallet.');
    let hash;
    try {
      hash = await wallet('eth_sendTransaction', [{ from: account, to, data }]);
    } catch (e) {
      if (isUserRejection(e)) {
        report('failed', 'Rejected in the wallet.');
        throw fail('rejected', 'You rejected the transaction in your wallet. Nothing was paid.');
      }
      report('failed', e.message);
      if (/revert/i.test(e.message || '')) throw fail('reverted', `The transaction would be reverted by the contract (${e.message}). Nothing was paid.`);
      throw fail('error', `The wallet could not send the transaction: ${e.message}`);
    }
    report('active', `Transaction pending: ${shortHash(hash)}`);
    notice('busy', 'Waiting for the transaction to be confirmed…');
    for (;;) {
      const receipt = await rpc('eth_getTransactionReceipt', [hash]);
      if (receipt && receipt.blockNumber) {
        if (receipt.status !== '0x1') {
          report('failed', `Reverted in block ${BigInt(receipt.blockNumber)}: ${hash}`);
          throw fail('reverted', `The transaction was reverted on chain (${shortHash(hash)}); nothing was paid but gas. The plan may have changed meanwhile: reload the page and try again.`);
        }
        report('done', `Confirmed in block ${BigInt(receipt.blockNumber)}`);
        return receipt;
      }
      await sleep(1000);
    }
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Approves exactly `amount` when the allowance is short; `report` as in send.
  async function ensureAllowance(amount, report) {
    const allowance = uintAt(await erc20('allowance(address,address)', [['address', account], ['address', cfg.subscriptionsContract]]), 0);
    if (allowance >= amount) { report('skipped', `Already allowed (${money(allowance)})`); return; }
    await send(token.address, encodeCall('approve(address,uint256)', [['address', cfg.subscriptionsContract], ['uint256', amount]]), report);
  }

  // The wallet's personal_sign of the public secret, kept in memory for this page.
  async function signSecret(report) {
    if (signatures.has(account)) return signatures.get(account);
    report('active', 'Waiting for your wallet…');
    notice('busy', `Sign the text "${cfg.publicSecret}" in your wallet. It is not a transaction and costs nothing; it is the key to your VM's connection details.`);
    let sig;
    try {
      sig = await wallet('personal_sign', [hex(utf8.encode(cfg.publicSecret)), account]);
    } catch (e) {
      report('failed', 'Rejected in the wallet.');
      if (isUserRejection(e)) throw fail('rejected', 'You rejected the signature request. Nothing was paid; press the button again when you are ready.');
      throw fail('error', `The wallet could not sign: ${e.message}`);
    }
    if (!/^0x[0-9a-fA-F]{130}$/.test(sig)) {
      report('failed', 'Unexpected signature.');
      throw fail('error', 'The wallet returned something that is not a 65-byte signature.');
    }
    signatures.set(account, sig);
    return sig;
  }

  // ---------- buying ----------
  async function buy() {
    const plan = selectedPlan();
    const n = days();
    if (!plan || !n || !account || !chainOk || busy) return;
    busy = true;
    $('buy').disabled = true;
    $('progress-section').hidden = false;
    $('purchase-result').replaceChildren();
    for (const s of ['sign', 'approve', 'pay', 'provision', 'mint']) step(s, 'idle', '');
    try {
      const price = uintAt(await subs('calculatePayment(uint256,uint256,uint256)', [['uint256', plan.id], ['uint256', n], ['uint256', 1]]), 0);
      const sig = await signSecret((s, t) => step('sign', s, t));
      const userEncrypted = V.encrypt(cfg.serverPublicKey, utf8.encode(sig));
      step('sign', 'done', 'Signed and encrypted to the server');
      await ensureAllowance(price, (s, t) => step('approve', s, t));
      const receipt = await send(cfg.subscriptionsContract, encodeCall('buySubscription(uint256,uint256,uint256,bytes)', [
        ['uint256', plan.id], ['uint256', n], ['uint256', 1], ['bytes', userEncrypted]]), (s, t) => step('pay', s, t));
      const topic = keccakHex('SubscriptionCreated(uint256,uint256,address,uint256,uint256,address,bytes)');
      const log = receipt.logs.find((l) => l.address.toLowerCase() === cfg.subscriptionsContract && l.topics[0] === topic);
      if (!log) throw fail('error', 'The purchase was confirmed but its SubscriptionCreated event is missing; contact the operator with the transaction hash.');
      const subscriptionId = BigInt(log.topics[1]);
      $('progress-section').dataset.subscription = subscriptionId.toString();
      step('pay', 'done', `Confirmed: subscription #${subscriptionId}`);
      const tokenId = await followProvisioning(subscriptionId);
      step('mint', 'done', `Access NFT #${tokenId}`);
      notice('done', `Your VM is ready. Its connection details are below and under "My VMs".`);
      const details = await openPayload(tokenId, sig);
      $('purchase-result').replaceChildren(detailsView(details));
      await loadVms();
    } catch (e) {
      if (!(e instanceof Shown)) unexpected(e);
    } finally {
      busy = false;
      quote(true).catch(() => {});
    }
  }

  // Polls blockhostd's public status until the NFT is minted; returns its token id.
  async function followProvisioning(id) {
    step('provision', 'active', 'Waiting for the server to pick up the purchase…');
    notice('busy', 'Payment confirmed. Your VM is being set up; this page follows it (you may close it and come back later: the VM appears under "My VMs").');
    let wait = 1500;
    for (;;) {
      // A network blip or a restarting server must not end the follow-up.
      const resp = await fetch(`api/v1/subscriptions/${id}`).catch(() => null);
      if (resp && resp.status === 429) { await sleep(10000); continue; }
      if (resp && resp.ok) {
        const st = await resp.json();
        step('provision', st.phase === 'Ready' || st.phase === 'Minting' ? 'done' : 'active', st.message);
        if (st.phase === 'Minting') step('mint', 'active', 'Minting…');
        if (st.nftTokenId !== undefined && st.nftTokenId !== null) return st.nftTokenId;
        if (['Failed', 'Cancelled', 'Deleting'].includes(st.phase)) {
          step('provision', 'failed', st.message);
          throw fail('error', `${st.message} (subscription #${id})`);
        }
      }
      await sleep(wait);
      wait = Math.min(wait * 1.2, 5000);
    }
  }

  // ---------- decrypting an access NFT ----------
  async function openPayload(tokenId, sig) {
    if (!window.crypto || !crypto.subtle) throw fail('error', 'This page must be opened over HTTPS to decrypt (the browser offers its crypto only to secure pages).');
    const payload = bytesAt(await nft('getUserEncrypted(uint256)', [['uint256', tokenId]]), 0);
    if (payload.length < 28) throw fail('error', `NFT #${tokenId} holds no connection details yet.`);
    const key = await crypto.subtle.importKey('raw', V.keccak_256(unhex(sig)), 'AES-GCM', false, ['decrypt']);
    let plain;
    try {
      plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: payload.slice(0, 12) }, key, payload.slice(12));
    } catch {
      throw fail('error', `NFT #${tokenId} does not open with this wallet's signature: it was bought with another wallet, or the wallet signs differently.`);
    }
    const d = JSON.parse(new TextDecoder().decode(plain));
    if (typeof d.hostname !== 'string' || typeof d.username !== 'string' || !Number.isInteger(d.port)) {
      throw fail('error', `NFT #${tokenId} holds details in an unexpected form.`);
    }
    return d;
  }

  function detailsView(d) {
    const cmd = d.port === 22 ? `ssh ${d.username}@${d.hostname}` : `ssh -p ${d.port} ${d.username}@${d.hostname}`;
    const field = (label, name, value) => [el('dt', {}, label), el('dd', { 'data-field': name }, String(value))];
    const input = el('input', { readOnly: true, value: cmd, 'aria-label': 'SSH command', class: 'ssh-command' });
    const copy = el('button', { type: 'button' }, 'Copy');
    copy.addEventListener('click', async () => {
      input.select();
      try { await navigator.clipboard.writeText(cmd); copy.textContent = 'Copied'; } catch { document.execCommand?.('copy'); }
    });
    return el('dl', { class: 'details' }, ...field('Host', 'host', d.hostname), ...field('Port', 'port', d.port),
      ...field('User', 'user', d.username), el('div', { class: 'ssh' }, input, copy));
  }

  // ---------- My VMs ----------
  async function loadVms() {
    const box = $('vms');
    if (!account || !chainOk) return;
    box.dataset.state = 'loading';
    const count = Number(uintAt(await nft('balanceOf(address)', [['address', account]]), 0));
    const cards = [];
    for (let i = 0; i < count; i++) {
      const tokenId = uintAt(await nft('tokenOfOwnerByIndex(address,uint256)', [['address', account], ['uint256', i]]), 0);
      cards.push(await vmCard(tokenId));
    }
    box.replaceChildren(...(cards.length ? cards : [el('p', { class: 'muted' }, 'This wallet holds no BlockHost access NFT yet.')]));
    box.dataset.state = 'loaded';
  }

  async function vmCard(tokenId) {
    const card = el('article', { class: 'vm', 'data-token': tokenId.toString() }, el('h3', {}, `VM access NFT #${tokenId}`));
    const status = el('p', { class: 'vm-status', 'data-state': 'idle' });
    const say = (state, text) => { status.dataset.state = state; status.textContent = text; };
    let sub = null;
    const resp = await fetch(`api/v1/nfts/${tokenId}`).catch(() => null);
    const link = resp && resp.ok ? await resp.json() : null;
    if (link) {
      const d = await subs('getSubscription(uint256)', [['uint256', link.subscriptionId]]);
      sub = { id: BigInt(link.subscriptionId), planId: uintAt(d, 0), expiresAt: uintAt(d, 2), active: uintAt(d, 3) === 1n, cancelled: uintAt(d, 4) === 1n };
      const expiry = el('p', { class: 'expiry', 'data-expires': sub.expiresAt.toString() },
        sub.cancelled ? 'Cancelled' : `${sub.active ? 'Expires' : 'Expired'} ${when(sub.expiresAt)}`, el('span', { class: 'muted' }, ` · subscription #${sub.id}`));
      card.append(expiry);
    } else if (resp && resp.status === 404) {
      card.append(el('p', { class: 'muted' }, 'Not a subscription of this server.'));
    } else {
      card.append(el('p', { class: 'muted' }, 'Expiry unavailable right now (the server is busy or unreachable); reload the page in a minute.'));
    }
    const decrypt = el('button', { type: 'button', class: 'decrypt' }, 'Show connection details');
    const actions = el('div', { class: 'actions' }, decrypt);
    decrypt.addEventListener('click', async () => {
      try {
        say('active', 'Sign in your wallet to decrypt…');
        const sig = await signSecret((s, t) => say(s, t));
        const details = await openPayload(tokenId, sig);
        card.querySelector('.details')?.remove();
        card.insertBefore(detailsView(details), status);
        say('done', '');
        notice('done', `Connection details of NFT #${tokenId} decrypted in this browser.`);
      } catch (e) {
        say('failed', e.message);
        if (!(e instanceof Shown)) unexpected(e);
      }
    });
    if (sub && !sub.cancelled) {
      const renewDays = el('input', { type: 'number', min: 1, max: 3650, value: 30, inputMode: 'numeric', class: 'renew-days', 'aria-label': 'Days to add' });
      const renew = el('button', { type: 'button', class: 'renew' }, 'Renew');
      renew.addEventListener('click', () => renewVm(sub, renewDays, renew, say).catch(unexpected));
      actions.append(renewDays, renew);
    }
    card.append(actions, status);
    return card;
  }

  async function renewVm(sub, input, button, say) {
    const n = days(input);
    if (!n || busy) return;
    busy = true;
    button.disabled = true;
    try {
      const price = uintAt(await subs('calculatePayment(uint256,uint256,uint256)', [['uint256', sub.planId], ['uint256', n], ['uint256', 1]]), 0);
      const balance = uintAt(await erc20('balanceOf(address)', [['address', account]]), 0);
      if (balance < price) {
        say('failed', 'Insufficient balance.');
        notice('insufficient', `Insufficient balance: ${n} more days cost ${money(price)} and your wallet holds ${money(balance)}.`);
        return;
      }
      await ensureAllowance(price, (s, t) => say(s, `Allowance: ${t}`));
      notice('busy', `Renewing subscription #${sub.id} for ${n} more day${n === 1 ? '' : 's'}…`);
      await send(cfg.subscriptionsContract, encodeCall('extendSubscription(uint256,uint256,uint256)', [
        ['uint256', sub.id], ['uint256', n], ['uint256', 1]]), (s, t) => say(s, `Renewal: ${t}`));
      const d = await subs('getSubscription(uint256)', [['uint256', sub.id]]);
      notice('done', `Renewed: subscription #${sub.id} now runs until ${when(uintAt(d, 2))}.`);
      await loadVms();
      await quote(true);
    } catch (e) {
      if (!(e instanceof Shown)) throw e;
    } finally {
      busy = false;
      button.disabled = false;
    }
  }

  function unexpected(e) {
    console.error(e);
    notice('error', `Something went wrong: ${e && e.message ? e.message : e}`);
  }

  if (!V) notice('error', 'The page\'s crypto library did not load; reload the page.');
  else start().catch(unexpected);
})();
