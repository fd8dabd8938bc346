// BlockHost signing page logic. The session id travels in the URL fragment (never
// sent to the server in a request line, so it stays out of access logs); the page
// fetches the pending message, shows it verbatim, asks an EIP-1193 wallet to
// personal_sign it with the expected account, and posts the signature back.
'use strict';

const $ = (id) => document.getElementById(id);

function setState(state, text) {
  const s = $('status');
  s.dataset.state = state;
  s.textContent = text;
}

function showSignature(sig) {
  $('signature').value = sig;
  $('manual').hidden = false;
}

// personal_sign takes the message as 0x-hex of its UTF-8 bytes.
function toHex(text) {
  return '0x' + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function main() {
  const id = location.hash.slice(1);
  if (!/^[0-9a-f]{32}$/.test(id)) {
    setState('error', 'This link is incomplete: open the exact URL shown in your SSH terminal.');
    return;
  }
  let session;
  try {
    const r = await fetch(`/api/session/${id}`, { cache: 'no-store' });
    if (!r.ok) {
      setState('expired', 'This login request has expired or was already answered. Start a new SSH login.');
      return;
    }
    session = await r.json();
  } catch (e) {
    setState('error', 'Cannot reach the signing service.');
    return;
  }
  $('message').textContent = session.message;
  $('request').hidden = false;
  if (!window.ethereum || typeof window.ethereum.request !== 'function') {
    setState('no-wallet', `No browser wallet found. Sign the message below with wallet ${session.address} by other means (e.g. blockhost-login sign) and paste the signature into your SSH terminal.`);
    $('sign').disabled = true;
    return;
  }
  setState('ready', `Sign with wallet ${session.address}.`);
  $('sign').addEventListener('click', () => sign(id, session));
}

async function sign(id, session) {
  const wanted = session.address.toLowerCase();
  let accounts;
  try {
    accounts = await window.ethereum.request({ method: 'eth_requestAccounts' });
  } catch (e) {
    setState('rejected', 'The wallet refused to connect. Try again and approve the connection.');
    return;
  }
  const account = (accounts || []).find((a) => String(a).toLowerCase() === wanted);
  if (!account) {
    setState('wrong-account', `Wrong account: the wallet offered ${(accounts || []).join(', ') || 'none'}, but this login needs ${session.address}. Switch accounts in your wallet and press Sign again.`);
    return;
  }
  let sig;
  try {
    setState('signing', 'Confirm the signature in your wallet…');
    sig = await window.ethereum.request({ method: 'personal_sign', params: [toHex(session.message), account] });
  } catch (e) {
    if (e && e.code === 4001) {
      setState('rejected', 'You rejected the signature request. Press Sign to try again.');
    } else {
      setState('error', `The wallet could not sign: ${e && e.message ? e.message : e}`);
    }
    return;
  }
  showSignature(sig);
  try {
    const r = await fetch(`/api/session/${id}`, { method: 'POST', body: sig, headers: { 'content-type': 'text/plain' } });
    if (r.ok) {
      $('sign').disabled = true;
      setState('done', 'Signed. Return to your SSH terminal (press Enter if it is still waiting).');
    } else {
      const p = await r.json().catch(() => ({}));
      setState('error', `The service did not accept the signature (${p.error || r.status}). Paste it into your SSH terminal instead.`);
    }
  } catch (e) {
    setState('error', 'Could not send the signature. Paste it into your SSH terminal instead.');
  }
}

main();
