"""fakepve for blockhost-pve's integration tests, driven over stdin/stdout.

Started by tests/common/mod.rs as `python fakepve_server.py HOST [--node NAME ...]`. It serves a fake
Proxmox VE on https://HOST:8006 with:

- an API token `root@pam!blockhost` = `s3cret-token` (and ticket login root@pam / secret),
- template VM 9001 (`debian-12-template`) on node pve1 with a cloud-init drive and a 3 GiB disk,
- time_scale 0, so tasks finish before the request that started them returns.

Once listening it prints one JSON line: {"url", "fingerprint"} (SHA-256 of the DER certificate,
colon-separated upper-case hex, the way PVE shows it). Then it reads one JSON command per line on
stdin and answers each with one JSON line on stdout: {"ok": true, "result": ...} or {"ok": false,
"error": "..."}. It exits when stdin closes, so a test that dies never leaves a server behind.

Why a control channel rather than arguments: faults are injected in the middle of a test (after the
clone, before the start), which a command line cannot express.

Besides fault injection and inspection, the channel offers what the controller's end-to-end tests
need: `vms` (every non-template VM), `error_answers` (method, path, status and message of every
answer with status >= 400 the server gave, so a test can prove that no request failed PVE's
parameter validation), `auto_agent` (every VM's guest agent answers from then on, including
clones made later: a daemon under test cannot be told "now set the agent" between its own steps),
and the firewall fakepve keeps: `firewall` (a VM's options and IP sets, null when none is kept),
`cluster_firewall` (the datacenter switch) and `firewall_edit` (drift made behind the API).

With `--guest-image IMAGE --guest-dir DIR --gateway ADDR/LEN ...` the VMs cloned from the template are
real qemu guests booting overlays of IMAGE in a network namespace of their own (see fakepve_guests.py);
the hello line then also names the namespace (`netns`), the accelerator (`accel`) and the serial log
directory (`serial_dir`), and the `guests` command describes every qemu process. On exit (stdin
closed, SIGTERM or SIGINT) the qemu processes, the namespace and the overlays are removed; the serial
logs stay in DIR/serial. `guest_exec` runs a command inside a running real guest (through its agent) and
returns its exit code and output.
"""

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading

try:
    from fakepve import FakePve
    from fakepve.certs import make_cert
except ImportError as exc:  # pragma: no cover - the Rust side turns this into a loud failure
    print(json.dumps({'fatal': 'fakepve is not importable ({0}); run scripts/setup.sh'.format(exc)}), flush=True)
    sys.exit(3)

TOKEN_ID = 'root@pam!blockhost'
TOKEN_SECRET = 's3cret-token'
TEMPLATE = 9001


def record_error_answers():
    """Wrap FakePve._answer so that every error status it returns is kept in pve.error_answers.

    fakepve's own request log holds no status; this is the one place every answer to an
    authenticated request passes (schema validation included)."""
    original = FakePve._answer

    async def answer(self, request, handler, generic, path_node):
        response = await original(self, request, handler, generic, path_node)
        if response.status >= 400:
            text = getattr(response, 'text', None)
            self.error_answers.append([request.method, request.path, response.status, text])
        return response
    FakePve._answer = answer


def build(host, nodes, node=None):
    record_error_answers()
    cls = FakePve
    if node is not None:
        from fakepve_guests import real_guest_pve
        cls = real_guest_pve(FakePve)
    pve = cls(user='root@pam', password='secret', host=host, port=8006)
    template_bytes = 3 * 1024 ** 3
    if node is not None:
        from fakepve_guests import image_size
        pve.guest_node = node
        node.pve = pve
        template_bytes = image_size(node.image)
    pve.time_scale = 0
    pve.apitokens[TOKEN_ID] = TOKEN_SECRET
    pve.error_answers = []
    pve.auto_agent = False
    for node in nodes:
        pve.add_node(node)
    pve.storages['local-lvm'].setdefault('volumes', {})['base-9001-disk-0'] = {
        'content': 'images', 'format': 'raw', 'size': template_bytes, 'vmid': TEMPLATE, 'ctime': 0}
    pve.add_vm(TEMPLATE, 'debian-12-template', node='pve1', template=True, config={
        'cores': 1, 'memory': 1024, 'ostype': 'l26', 'scsihw': 'virtio-scsi-single', 'agent': 'enabled=1',
        'scsi0': 'local-lvm:base-9001-disk-0,size={0}M'.format(template_bytes >> 20), 'ide2': 'local-lvm:vm-9001-cloudinit,media=cdrom',
        'net0': 'virtio=BC:24:11:00:90:01,bridge=vmbr0', 'boot': 'order=scsi0', 'template': 1})
    return pve


def vm_state(vm):
    return {'vmid': vm.vmid, 'node': vm.node, 'name': vm.name, 'status': vm.status, 'qmpstatus': vm.qmpstatus,
            'lock': vm.lock, 'config': vm.config, 'pending': vm.pending}


async def command(pve, cmd):
    """Run one control command; returns its JSON-able result."""
    op = cmd['op']
    if op == 'fail':
        pve.fail(cmd['method'], cmd['suffix'], status=cmd.get('status'), message=cmd.get('message'),
                 error=cmd.get('error'), times=cmd.get('times'))
        return None
    if op == 'vm':
        vm = pve.vm(cmd['vmid'])
        return vm_state(vm) if vm else None
    if op == 'set':
        # Any FakeVm attribute: agent, start_error, shutdown_secs, acpi, ...
        setattr(pve.vm(cmd['vmid']), cmd['attr'], cmd['value'])
        return None
    if op == 'agent_requests':
        return pve.vm(cmd['vmid']).agent_requests
    if op == 'snapshot_lock':
        pve.snapshot_lock(cmd['vmid'], cmd.get('lock', 'backup'))
        return None
    if op == 'unlock':
        pve.unlock(cmd['vmid'])
        return None
    if op == 'hold_config_lock':
        await pve.hold_config_lock(cmd['vmid'], cmd.get('secs'))
        return None
    if op == 'release_config_lock':
        pve.release_config_lock(cmd['vmid'])
        return None
    if op == 'requests':
        return [[m, p] for m, p, _body in pve.requests]
    if op == 'revoke_tickets':
        pve.revoke_tickets()
        return None
    if op == 'ticket_ttl':
        pve.ticket_ttl = cmd['secs']
        return None
    if op == 'hang':
        # Every later request gets no answer for `secs` seconds (the test's client times out first).
        pve.flaky_network(hang_rate=1.0, hang_secs=cmd.get('secs', 30))
        return None
    if op == 'vms':
        return [vm_state(vm) for vm in pve.vms if not vm.config.get('template')]
    if op == 'error_answers':
        return pve.error_answers
    if op == 'auto_agent':
        pve.auto_agent = True
        return None
    if op == 'guests':
        node = getattr(pve, 'guest_node', None)
        return node.describe() if node else []
    if op == 'guest_exec':
        from fakepve_guests import guest_exec
        return await guest_exec(pve.guest_node, cmd['vmid'], cmd['argv'], cmd.get('timeout', 60))
    if op == 'standalone_boot':
        return await pve.guest_node.standalone_boot(cmd['address'], cmd['gateway'], memory=cmd.get('memory', 1024))
    if op == 'lose_quorum':
        pve.lose_quorum()
        return None
    # Template installation (bhctl template install): fakepve refuses uploads with
    # content=import, so tests place the image file themselves and set storage content.
    if op == 'storage_content':
        pve.storages[cmd['storage']]['content'] = cmd['content']
        return None
    if op == 'store_file':
        pve.store_file(cmd['storage'], cmd['name'], cmd['size'], cmd.get('content', 'iso'))
        return None
    if op == 'remove_vm':
        vm = pve.vm(cmd['vmid'])
        if vm is not None:
            pve.vms.remove(vm)
        return None
    # The firewall fakepve keeps (it stores it; nothing enforces it but the real-guest node).
    if op == 'firewall':
        conf = pve._fw()['guests'].get(int(cmd['vmid']))
        return None if conf is None else {'options': conf['options'], 'ipset': conf['ipset']}
    if op == 'cluster_firewall':
        pve.firewall_config('cluster')['options']['enable'] = 1 if cmd.get('enable', True) else 0
        return None
    if op == 'firewall_edit':
        # Drift behind the API: options merged, named IP sets replaced by plain entries.
        conf = pve.firewall_config('vm', vmid=cmd['vmid'])
        conf['options'].update(cmd.get('options', {}))
        for name, cidrs in cmd.get('ipset', {}).items():
            conf['ipset'][name] = [{'cidr': cidr} for cidr in cidrs]
        return None
    if op == 'storage_volumes':
        return sorted(pve.storages[cmd['storage']].get('volumes', {}))
    raise ValueError('unknown op {0!r}'.format(op))


async def answer_agents(pve):
    """With auto_agent on, give every VM without an answering agent one (checked every 20 ms)."""
    while True:
        await asyncio.sleep(0.02)
        if pve.auto_agent:
            for vm in pve.vms:
                if vm.agent is None and not vm.config.get('template'):
                    vm.agent = {}


async def serve(args):
    node = None
    if args.guest_image:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from fakepve_guests import GuestNode, choose_accel
        accel = await choose_accel(args.accel, args.guest_image, args.guest_dir)
        node = GuestNode(args.guest_image, args.guest_dir, args.gateway, accel=accel)
        node.setup()
    try:
        await serve_pve(args, node)
    finally:
        if node is not None:
            await node.teardown()


async def serve_pve(args, node):
    pve = build(args.host, args.node, node)
    tmp = tempfile.mkdtemp(prefix='blockhost-fakepve-')
    try:
        certfile, keyfile, der = make_cert(tmp, hosts=(args.host,))
        await pve.start(certfile, keyfile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    digest = hashlib.sha256(der).hexdigest().upper()
    fingerprint = ':'.join(digest[i:i + 2] for i in range(0, len(digest), 2))
    hello = {'url': pve.url, 'fingerprint': fingerprint}
    loop = asyncio.get_running_loop()
    sampler = None
    if node is not None:
        hello.update(netns=node.netns, accel=node.accel, serial_dir=node.log_dir)
        sampler = asyncio.create_task(node.sample_forever())
    print(json.dumps(hello), flush=True)
    agents = asyncio.create_task(answer_agents(pve))
    lines = asyncio.Queue()

    def read_stdin():
        # A daemon thread: a signal can end the server while it still waits for a line.
        for text in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, text)
        loop.call_soon_threadsafe(lines.put_nowait, '')
    threading.Thread(target=read_stdin, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lines.put_nowait, '')
    while True:
        line = await lines.get()
        if not line:
            break  # the test went away, or a signal
        try:
            reply = {'ok': True, 'result': await command(pve, json.loads(line))}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the test as text
            reply = {'ok': False, 'error': '{0}: {1}'.format(type(exc).__name__, exc)}
        print(json.dumps(reply, default=str), flush=True)
    agents.cancel()
    if sampler is not None:
        sampler.cancel()
    await pve.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('host')
    parser.add_argument('--node', action='append', default=[], help='an extra node besides pve1')
    parser.add_argument('--guest-image', help='qcow2 image of the template: clones boot it in qemu')
    parser.add_argument('--guest-dir', help='work directory of the real guests (overlays, sockets, serial logs)')
    parser.add_argument('--gateway', action='append', default=[],
                        help="an address/len the bridge carries (the network section's gateways)")
    parser.add_argument('--accel', default='auto', choices=('auto', 'tcg', 'kvm'),
                        help='auto: KVM if a probe boot under /dev/kvm works, else TCG')
    args = parser.parse_args()
    if args.guest_image and not args.guest_dir:
        parser.error('--guest-image needs --guest-dir')
    asyncio.run(serve(args))


if __name__ == '__main__':
    main()
