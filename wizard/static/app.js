// The BlockHost setup wizard's page. Everything is decided on the server: this
// script shows the stage the server reports, sends what the operator types
// (with the session's CSRF token), and asks the wallet (EIP-1193: window.ethereum
// or the first EIP-6963 announcement) for two signatures. No framework, no
// inline script, textContent only.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  let st = null;          // the last /api/state
  let step = 'proxmox';   // the visible form
  let poll = null;        // finalization poll timer

  // ---------- server ----------
  async function api(method, path, body) {
    const headers = { 'content-type': 'application/json' };
    if (st && st.csrf) headers['x-csrf-token'] = st.csrf;
    const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin' });
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) throw Object.assign(new Error((data && data.error) || `the wizard answered HTTP ${resp.status}`), { status: resp.status, data });
    return data;
  }
  function notice(state, text) {
    const n = $('notice');
    n.dataset.state = state;
    n.textContent = text;
  }

  // ---------- wallet ----------
  function findWallet(waitMs = 400) {
    return new Promise((resolve) => {
      if (window.ethereum) { resolve(window.ethereum); return; }
      const done = (p) => {
        window.removeEventListener('eip6963:announceProvider', onAnnounce);
        clearTimeout(timer);
        resolve(p);
      };
      const onAnnounce = (e) => { if (e.detail && e.detail.provider) done(e.detail.provider); };
      window.addEventListener('eip6963:announceProvider', onAnnounce);
      const timer = setTimeout(() => done(window.ethereum || null), waitMs);
      window.dispatchEvent(new Event('eip6963:requestProvider'));
    });
  }
  const rejected = (e) => e && (e.code === 4001 || e.code === 'ACTION_REJECTED');
  const toHexUtf8 = (text) => '0x' + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, '0')).join('');

  async function signIn() {
    const w = await findWallet();
    if (!w) { notice('error', 'No wallet found in this browser. Install or unlock a wallet extension, then reload.'); return; }
    try {
      notice('busy', 'Waiting for the wallet…');
      const accounts = await w.request({ method: 'eth_requestAccounts' });
      const address = accounts && accounts[0];
      if (!address) throw new Error('the wallet gave no account');
      const chainId = parseInt(await w.request({ method: 'eth_chainId' }), 16);
      const { message } = await api('POST', '/api/login/challenge', { address, chainId });
      notice('busy', 'Sign the sign-in message in your wallet.');
      const signature = await w.request({ method: 'personal_sign', params: [toHexUtf8(message), address] });
      await api('POST', '/api/login/verify', { signature });
      await load();
    } catch (e) {
      if (rejected(e)) notice('rejected', 'You declined in the wallet. Press the button to try again.');
      else notice('error', e.message);
    }
  }

  async function signAccess() {
    const w = await findWallet();
    if (!w) { notice('error', 'No wallet found in this browser.'); return; }
    try {
      const accounts = await w.request({ method: 'eth_requestAccounts' });
      notice('busy', 'Sign the access secret in your wallet.');
      const signature = await w.request({ method: 'personal_sign', params: [toHexUtf8(st.publicSecret), accounts[0]] });
      await api('POST', '/api/login/access', { signature });
      await load();
    } catch (e) {
      if (rejected(e)) notice('rejected', 'You declined in the wallet. Press the button to try again.');
      else notice('error', e.message);
    }
  }

  // ---------- forms ----------
  function fill(form, values) {
    for (const el of form.querySelectorAll('[name]')) {
      const v = values[el.name];
      if (v === undefined) continue;
      const t = el.dataset.type;
      if (t === 'bool') el.checked = !!v;
      else if (t === 'list' || t === 'numbers') el.value = (v || []).join(', ');
      else if (t === 'lines') el.value = (v || []).join('\n');
      else el.value = v === null ? '' : String(v);
    }
    conditions(form);
  }
  function read(form) {
    const out = {};
    for (const el of form.querySelectorAll('[name]')) {
      if (el.closest('#plans')) continue;
      const t = el.dataset.type;
      const v = el.value.trim();
      if (t === 'bool') out[el.name] = el.checked;
      else if (t === 'number') out[el.name] = v === '' ? 0 : Number(v);
      else if (t === 'list') out[el.name] = v.split(/[\s,]+/).filter(Boolean);
      else if (t === 'numbers') out[el.name] = v.split(/[\s,]+/).filter(Boolean).map(Number);
      else if (t === 'lines') out[el.name] = v.split(/\s*\n\s*/).filter(Boolean);
      else out[el.name] = v;
    }
    return out;
  }
  // Shows fields marked data-when="name=value" only when that holds.
  function conditions(form) {
    const vals = read(form);
    for (const el of form.querySelectorAll('[data-when]')) {
      const [k, want] = el.dataset.when.split('=');
      el.hidden = String(vals[k]) !== want;
    }
  }
  function showReport(form, report) {
    for (const p of form.querySelectorAll('.field-error')) p.textContent = '';
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    const errors = (report && report.errors) || {};
    for (const [field, msg] of Object.entries(errors)) {
      const m = /^plans\.(\d+)/.exec(field);
      if (m) {
        const row = form.querySelectorAll('#plans .plan-row')[Number(m[1])];
        const p = row && row.querySelector('.field-error');
        if (p) { p.textContent = (p.textContent ? p.textContent + ' ' : '') + msg; continue; }
      }
      const p = form.querySelector(`.field-error[data-for="${field}"]`);
      if (p) p.textContent = msg;
      const input = form.querySelector(`[name="${field}"]`) || (field === 'password' ? $('pve-password') : field === 'command' ? $('admin-command') : null);
      if (input) input.setAttribute('aria-invalid', 'true');
    }
    const ul = form.querySelector('.warnings');
    if (ul) {
      ul.textContent = '';
      for (const w of (report && report.warnings) || []) {
        const li = document.createElement('li');
        li.textContent = w;
        ul.appendChild(li);
      }
    }
  }

  // ---------- plans ----------
  function planRow(p) {
    const row = document.createElement('div');
    row.className = 'plan-row';
    row.setAttribute('role', 'row');
    // Each input in a label whose caption shows where the table's head does not
    // (narrow screens).
    const cell = (name, value, type, label, caption) => {
      const l = document.createElement('label');
      l.className = 'cell';
      const c = document.createElement('span');
      c.className = 'cell-label';
      c.textContent = caption;
      const i = document.createElement('input');
      i.dataset.plan = name;
      i.value = value;
      i.setAttribute('aria-label', label);
      if (type === 'number') i.inputMode = 'numeric';
      l.append(c, i);
      row.appendChild(l);
    };
    cell('name', p.name, 'text', 'Plan name', 'Name');
    cell('pricePerDayCents', p.pricePerDayCents, 'number', 'Price in US cents per day', 'US cents / day');
    cell('cores', p.cores, 'number', 'Cores', 'Cores');
    cell('memoryMib', p.memoryMib, 'number', 'Memory in MiB', 'Memory (MiB)');
    cell('diskGib', p.diskGib, 'number', 'Disk in GiB', 'Disk (GiB)');
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = 'Remove';
    del.addEventListener('click', () => row.remove());
    row.appendChild(del);
    const err = document.createElement('p');
    err.className = 'field-error';
    row.appendChild(err);
    $('plans').appendChild(row);
  }
  function readPlans() {
    return Array.from($('plans').querySelectorAll('.plan-row'), (row) => {
      const p = {};
      for (const i of row.querySelectorAll('input')) p[i.dataset.plan] = i.dataset.plan === 'name' ? i.value.trim() : Number(i.value.trim() || 0);
      return p;
    });
  }

  // ---------- steps ----------
  const forms = { proxmox: 'form-proxmox', chain: 'form-chain', admin: 'form-admin', summary: 'summary' };
  const order = ['proxmox', 'chain', 'admin', 'summary'];
  function answersOf(name) {
    const form = $(forms[name]);
    const a = read(form);
    if (name === 'chain') a.plans = readPlans();
    return a;
  }
  async function save(name, check) {
    const body = { answers: answersOf(name), check };
    if (name === 'proxmox' && $('pve-password').value) body.password = $('pve-password').value;
    if (name === 'admin' && $('admin-command').value) body.command = $('admin-command').value;
    const r = await api('POST', `/api/steps/${name}`, body);
    if (name === 'proxmox' && body.password) $('pve-password').value = '';
    if (name === 'admin' && body.command) { $('admin-command').value = ''; st.commandStored = true; commandHint(); }
    st.answers[name] = body.answers;
    st.valid = st.valid || {};
    st.valid[name] = r.ok;
    return r;
  }
  function go(name) {
    step = name;
    for (const [k, id] of Object.entries(forms)) $(id).hidden = k !== name;
    for (const b of document.querySelectorAll('#stepnav button')) {
      b.setAttribute('aria-current', b.dataset.go === name ? 'step' : 'false');
      b.dataset.valid = st.valid && st.valid[b.dataset.go] ? 'yes' : 'no';
    }
    if (name === 'summary') summary();
    notice('ready', name === 'summary' ? 'Check everything, then finalize.' : 'Answer, then press "Check and continue". You can go back at any time; your answers are kept on the host.');
  }
  async function leave(to) {
    // Going back or jumping keeps what was typed (saved without checking).
    if (step !== 'summary') {
      try { await save(step, false); } catch (e) { notice('error', e.message); return; }
    }
    go(to);
  }
  async function submit(name) {
    const form = $(forms[name]);
    notice('busy', 'Checking…');
    try {
      const r = await save(name, true);
      showReport(form, r.report);
      const found = (r.report && r.report.found) || {};
      if (name === 'proxmox') {
        $('found-nodes').textContent = found.nodes ? `Online: ${found.nodes.join(', ')}` : '';
        $('found-storages').textContent = found.storages ? `With VM images: ${found.storages.join(', ')}` : '';
        $('found-bridges').textContent = found.bridges ? `Bridges: ${found.bridges.join(', ')}` : '';
      }
      if (name === 'chain' && found.serverAddress) { st.found = found; wallet(found); }
      if (!r.ok) { notice('error', 'Some answers need attention (see the messages below).'); return; }
      go(order[order.indexOf(name) + 1]);
    } catch (e) {
      notice('error', e.message);
    }
  }
  const eth = (wei) => {
    if (wei === undefined || wei === null || wei === '') return '';
    const w = BigInt(wei);
    const whole = w / 10n ** 18n;
    const frac = (w % 10n ** 18n).toString().padStart(18, '0').slice(0, 4);
    return `${whole}.${frac} ETH`;
  };
  let neededWei = null;   // what setup needs, from the last chain check
  function wallet(found) {
    neededWei = found.neededWei || null;
    $('server-wallet').hidden = false;
    $('server-address').textContent = found.serverAddress;
    $('server-balance').textContent = eth(found.balanceWei);
    $('server-needed').textContent = found.neededWei ? `(setup needs up to ${eth(found.neededWei)})` : '';
  }
  async function refreshBalance() {
    try {
      const b = await api('GET', '/api/chain/balance');
      $('server-balance').textContent = eth(b.balanceWei);
      // The check's "send it funds" warning is out of date once the funds are there.
      if (neededWei !== null && BigInt(b.balanceWei) >= BigInt(neededWei)) {
        for (const li of $('form-chain').querySelectorAll('.warnings li')) {
          if (li.textContent.includes(b.address) || li.textContent.includes(b.address.toLowerCase())) li.remove();
        }
      }
    } catch (e) { notice('error', e.message); }
  }
  function summary() {
    const dl = $('summary-list');
    dl.textContent = '';
    const a = st.answers;
    const add = (k, v) => {
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd'); dd.textContent = v;
      dl.append(dt, dd);
    };
    add('Admin wallet', st.admin);
    add('Proxmox', `${a.proxmox.url} as ${a.proxmox.adminUser}; nodes ${a.proxmox.nodes.length ? a.proxmox.nodes.join(', ') : 'all'}; storage ${a.proxmox.storage}; bridge ${a.proxmox.bridge}`);
    add('VMIDs', `${a.proxmox.vmidFirst}–${a.proxmox.vmidLast}, template ${a.proxmox.templateVmid}`);
    add('Addresses', `IPv4 ${a.proxmox.ipv4Cidr} via ${a.proxmox.ipv4Gateway}; IPv6 ${a.proxmox.ipv6Mode === 'manual' ? a.proxmox.ipv6Prefix : 'none'}`);
    add('Grace', `${a.proxmox.graceDays} days`);
    add('Chain', `${a.chain.chainId} via ${a.chain.rpcUrls.join(', ')}`);
    add('Contracts', a.chain.contracts === 'deploy' ? 'deploy new ones' : `reuse ${a.chain.subscriptionsContract} and ${a.chain.nftContract}`);
    add('Payment token', a.chain.stablecoinMode === 'dev' ? 'a test token' : a.chain.stablecoin);
    add('Plans', a.chain.plans.map((p) => `${p.name}: ${p.pricePerDayCents} ¢/day, ${p.cores} cores, ${p.memoryMib} MiB, ${p.diskGib} GiB`).join('; '));
    add('Admin commands', a.admin.enabled ? `ports ${a.admin.ports.join(', ')}, ${a.admin.defaultDurationSecs} s` : 'off');
    add('Host firewall', st.firewall ? (a.admin.enabled ? `default-deny; ports ${a.admin.ports.join(', ')} open on a knock` : 'default-deny; SSH and the Proxmox GUI public') : 'not managed here');
    if (st.found && st.found.serverAddress) add('Server wallet', st.found.serverAddress);
    const ready = order.slice(0, 3).every((s) => st.valid && st.valid[s]);
    $('finalize').disabled = !ready;
    if (!ready) notice('error', 'Some steps are not checked yet; go back to them.');
  }

  function commandHint() {
    $('command-hint').textContent = st.commandStored
      ? 'A command name is stored on the host; leave empty to keep it.'
      : 'The secret word a knock carries (8\u201364 characters). Keep it with the admin key: bhctl admin knock --command-file reads it.';
  }

  // ---------- finalization ----------
  function showRun(run) {
    const ol = $('run-steps');
    ol.textContent = '';
    let failed = null;
    for (const s of run.steps) {
      const li = document.createElement('li');
      li.dataset.step = s.id;
      li.dataset.state = s.status === 'running' ? 'active' : s.status;
      const label = document.createElement('span');
      label.className = 'label';
      label.textContent = s.title;
      li.appendChild(label);
      if (s.error && s.status === 'failed') {
        const d = document.createElement('span');
        d.className = 'detail';
        d.textContent = s.error;
        li.appendChild(d);
        failed = s;
      }
      ol.appendChild(li);
    }
    $('retry').hidden = run.status !== 'failed';
    $('edit').hidden = run.status !== 'failed';
    const o = run.outputs || {};
    const dl = $('run-outputs');
    dl.textContent = '';
    const add = (k, v) => {
      if (v === undefined || v === null || (Array.isArray(v) && !v.length)) return;
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd'); dd.textContent = Array.isArray(v) ? v.map((p) => `${p[0]} (#${p[1]})`).join(', ') : String(v);
      dl.append(dt, dd);
    };
    add('Server wallet', o.serverAddress);
    add('BlockhostSubscriptions', o.subscriptions);
    add('AccessCredentialNFT', o.nft);
    add('Payment token', o.stablecoin);
    add('Plans', o.plans);
    add('Proxmox token', o.tokenId);
    add('Template', o.template);
    add('Root agent', o.rootAgent);
    add('Configuration', o.configFile);
    add('Admin NFT', o.nftTokenId === null || o.nftTokenId === undefined ? null : `#${o.nftTokenId}`);
    document.body.dataset.run = run.status;
    if (run.status === 'done') {
      notice('done', 'This host is set up: blockhostd runs and the wizard has switched itself off. You can close this page.');
    } else if (run.status === 'failed') {
      notice('error', `The step "${failed ? failed.title : '?'}" failed. Fix the cause and press Retry.`);
    } else {
      notice('busy', 'Finalizing… this page follows the progress.');
    }
    return run.status;
  }
  async function follow() {
    clearTimeout(poll);
    try {
      const run = await api('GET', '/api/finalize');
      if (showRun(run) === 'running') poll = setTimeout(follow, 1000);
    } catch (e) {
      // The wizard stops once it is done; the last state shown stays.
      if (document.body.dataset.run !== 'done') {
        notice('error', `${e.message} (retrying)`);
        poll = setTimeout(follow, 2000);
      }
    }
  }
  async function finalize() {
    try {
      const run = await api('POST', '/api/finalize');
      st.stage = 'finalize';
      render();
      showRun(run);
      follow();
    } catch (e) { notice('error', e.message); }
  }

  // ---------- stages ----------
  function render() {
    for (const s of ['code', 'wallet', 'access', 'steps', 'finalize']) $(`stage-${s}`).hidden = st.stage !== s;
    $('host').textContent = st.host ? `— ${st.host}` : '';
    if (st.admin) { $('admin').hidden = false; $('admin').textContent = st.admin; }
    $('public-secret').textContent = st.publicSecret;
    if (st.stage === 'code') { notice('connect', 'Enter the one-time code from the console.'); $('code').focus(); }
    if (st.stage === 'wallet') notice('connect', 'Code accepted. Now sign in with the wallet that will administer this host.');
    if (st.stage === 'access') notice('connect', 'Signed in. One more signature, for your admin NFT.');
    if (st.stage === 'steps') {
      fill($('form-proxmox'), st.answers.proxmox);
      fill($('form-chain'), st.answers.chain);
      fill($('form-admin'), st.answers.admin);
      $('plans').textContent = '';
      for (const p of st.answers.chain.plans) planRow(p);
      if (st.found && st.found.serverAddress) wallet(st.found);
      commandHint();
      $('password-hint').textContent = st.passwordStored ? 'A password is stored (until the token exists); leave empty to keep it.' : 'Used once to create BlockHost\u2019s own restricted token, then deleted.';
      go(step);
    }
    if (st.stage === 'finalize') { showRun(st.finalize); follow(); }
  }
  async function load() {
    try {
      st = await api('GET', '/api/state');
      render();
    } catch (e) { notice('error', e.message); }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('code-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api('POST', '/api/code', { code: $('code').value });
        await load();
      } catch (e) {
        notice(e.status === 403 ? 'locked' : 'error', e.message);
      }
    });
    $('connect').addEventListener('click', signIn);
    $('access-sign').addEventListener('click', signAccess);
    for (const b of document.querySelectorAll('#stepnav button')) b.addEventListener('click', () => leave(b.dataset.go));
    for (const b of document.querySelectorAll('[data-back]')) b.addEventListener('click', () => leave(order[Math.max(0, order.indexOf(step) - 1)]));
    for (const name of ['proxmox', 'chain', 'admin']) {
      const form = $(forms[name]);
      form.addEventListener('submit', (ev) => { ev.preventDefault(); submit(name); });
      form.addEventListener('change', () => conditions(form));
    }
    $('detect').addEventListener('click', async () => {
      try {
        const d = await api('GET', '/api/proxmox/detect');
        $('pve-url').value = d.url;
        if (d.fingerprint) $('pve-fp').value = d.fingerprint;
        notice('ready', d.local ? 'Filled in from this node.' : 'This host has no local Proxmox certificate; enter the fingerprint shown by your node.');
      } catch (e) { notice('error', e.message); }
    });
    $('add-plan').addEventListener('click', () => planRow({ name: '', pricePerDayCents: 100, cores: 1, memoryMib: 1024, diskGib: 10 }));
    $('refresh-balance').addEventListener('click', refreshBalance);
    $('finalize').addEventListener('click', finalize);
    $('retry').addEventListener('click', finalize);
    $('edit').addEventListener('click', () => { st.stage = 'steps'; render(); });
    load();
  });
})();
