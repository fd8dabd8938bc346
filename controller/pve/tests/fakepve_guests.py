"""Real guests for the fakepve harness: VMs cloned from the template are qemu processes.

fakepve (PyPI) models Proxmox VE's API and state; nothing boots. This module subclasses its FakePve so
that, for every VM that is not a template, the power actions, the status and the guest agent are backed
by a real qemu process, the way a Proxmox node does it:

- start: a qcow2 overlay of the template's image (created on the first start, grown to the config's
  disk size), the VM's cores and memory, a NoCloud cloud-init ISO generated from the VM's config as
  qemu-server's Cloudinit.pm generates it (user-data, meta-data, network-config from `ciuser`,
  `sshkeys`, `ipconfig0`, `nameserver`, `searchdomain`, `name`), a tap device `tap<vmid>i0` on the
  bridge, a virtio-serial guest agent channel, a QMP socket and a serial console log;
- shutdown: ACPI (`system_powerdown`), waiting at most the request's timeout, then `forceStop` or
  PVE's "got timeout" task error; stop: the qemu process is terminated (killed after 5 s); a stopped
  VM keeps its overlay; destroy frees the volume, and with it the overlay file;
- status/current, the VM list and cluster/resources: running while the qemu process lives, qmpstatus
  from QMP `query-status`, pid, uptime, memory (the process's RSS) and CPU share from /proc;
- the agent endpoints (ping, file-write, file-read, exec, exec-status and the argument-less queries)
  go to qemu-guest-agent inside the VM with `guest-sync-delimited` first, with PVE's parameter and
  result shapes (file-write content base64-encoded unless encode=0, exec-status output decoded).

Networking is a Proxmox node's: a network namespace of the harness's own holding the bridge (vmbr0)
with the gateway addresses on it; qemu runs inside the namespace and its tap joins the bridge through
an ifup script, as qemu-server's pve-bridge does. The tests reach a VM at its own addresses from
inside the namespace (`ip netns exec NS ...`): no port forwarding.

The VM firewall Proxmox would apply to net0's outgoing traffic is enforced too (`VmFirewalls`): when a
VM starts, its firewall options and `ipfilter-net0` set as stored through the API (with `firewall=1` on
net0 and the datacenter firewall on) become nftables rules on its tap, so a VM that sends from an
address or MAC not its own is dropped at the bridge, as on Proxmox.

Everything the harness creates is removed by `GuestNode.teardown()` (qemu processes, the namespace
with its bridge and taps, overlays, ISOs, sockets); serial logs stay in the work directory for the
test to keep or delete. qemu processes also get SIGKILL if the harness dies (PR_SET_PDEATHSIG), and a
namespace left behind by a harness that was SIGKILLed is removed by the next harness
(`sweep_stale`).
"""

import asyncio
import base64
import ctypes
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse

from fakepve import FakePve
from fakepve.model import PveError, TaskError

NETNS_PREFIX = 'bhguests-'
# How long an agent command may take before PVE reports a timeout (PVE: 10 s for most commands;
# ping is short so that a caller polling for a booting guest is not held up).
AGENT_TIMEOUT = 10.0
PING_TIMEOUT = 3.0
# PVE gives up a stop after this and kills.
STOP_KILL_SECS = 5.0
PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf('SC_CLK_TCK')


def die_with_parent():
    """preexec_fn: the child gets SIGKILL when the harness dies, so no qemu outlives a killed test."""
    libc = ctypes.CDLL('libc.so.6', use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run(*argv, check=True):
    """Runs a short host command (ip, qemu-img, xorriso); its stderr becomes the error text."""
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and done.returncode != 0:
        raise RuntimeError('{0} failed ({1}): {2}'.format(' '.join(argv), done.returncode, done.stderr.strip()))
    return done.stdout


def sweep_stale():
    """Removes namespaces (and their qemu processes) of harnesses that no longer run."""
    try:
        names = os.listdir('/run/netns')
    except FileNotFoundError:
        return
    for name in names:
        found = re.fullmatch(re.escape(NETNS_PREFIX) + r'(\d+)', name)
        if not found:
            continue
        pid = int(found.group(1))
        if pid == os.getpid() or os.path.exists('/proc/{0}'.format(pid)):
            continue
        for p in run('ip', 'netns', 'pids', name, check=False).split():
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run('ip', 'netns', 'del', name, check=False)


def image_size(path):
    """Virtual size in bytes of a disk image."""
    return int(json.loads(run('qemu-img', 'info', '--output=json', path))['virtual-size'])


def split_props(text):
    """('first', {key: value}) of a PVE property string like 'virtio=AA:..,bridge=vmbr0'."""
    first, props = None, {}
    for i, part in enumerate(str(text).split(',')):
        key, eq, val = part.partition('=')
        if i == 0 and not eq:
            first = part
        else:
            props[key] = val
    return first, props


def parse_size(text):
    """Bytes of a PVE size like '10G', '512M' or a plain number of bytes."""
    m = re.fullmatch(r'(\d+(?:\.\d+)?)([KMGT]?)', str(text))
    if not m:
        return 0
    return int(float(m.group(1)) * {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}[m.group(2)])


# ---------------------------------------------------------------- cloud-init (NoCloud, as PVE writes it)

def hostname_fqdn(config, vmid):
    """qemu-server's get_hostname_fqdn: the name, or VM<vmid>; the domain from searchdomain."""
    name = config.get('name') or 'VM{0}'.format(vmid)
    if '.' in name:
        host, _, domain = name.partition('.')
    else:
        host = name
        searches = (config.get('searchdomain') or '').split()
        domain = searches[0] if searches else None
    return host, ('{0}.{1}'.format(host, domain) if domain else host)


def user_data(config, vmid):
    """The #cloud-config Proxmox writes from ciuser, cipassword, sshkeys and ciupgrade."""
    host, fqdn = hostname_fqdn(config, vmid)
    lines = ['#cloud-config', 'hostname: ' + host, 'manage_etc_hosts: true', 'fqdn: ' + fqdn]
    user = config.get('ciuser')
    if user is not None:
        lines.append('user: ' + user)
        if user == 'root':
            lines.append('disable_root: False')
    if config.get('cipassword') is not None:
        lines.append('password: ' + config['cipassword'])
    if config.get('sshkeys') is not None:
        keys = [k.strip() for k in urllib.parse.unquote(config['sshkeys']).split('\n')]
        lines.append('ssh_authorized_keys:')
        lines.extend('  - ' + k for k in keys if k)
    lines += ['chpasswd:', '  expire: False']
    if user != 'root':
        lines += ['users:', '  - default']
    if str(config.get('ciupgrade', '1')) not in ('0', 'false'):
        lines.append('package_upgrade: true')
    return '\n'.join(lines) + '\n'


def network_config(config, vmid):
    """NoCloud network-config version 1 from the netN/ipconfigN pairs and the DNS settings; each NIC
    matched by the MAC qemu gives it (guest_mac, with the same vmid)."""
    out = ['version: 1', 'config:']
    for key in sorted(k for k in config if re.fullmatch(r'net\d+', k)):
        n = key[3:]
        if not config.get('ipconfig' + n):
            continue
        mac = guest_mac(config[key], vmid)
        ipc = dict(split_props('x,' + config['ipconfig' + n])[1])
        out += ['  - type: physical', '    name: eth' + n, "    mac_address: '{0}'".format(mac.lower()),
                '    subnets:']
        ip = ipc.get('ip')
        if ip == 'dhcp':
            out.append('    - type: dhcp4')
        elif ip:
            iface = ipaddress.ip_interface(ip)
            out += ['    - type: static', "      address: '{0}'".format(iface.ip),
                    "      netmask: '{0}'".format(iface.netmask)]
            if ipc.get('gw'):
                out.append("      gateway: '{0}'".format(ipc['gw']))
        ip6 = ipc.get('ip6')
        if ip6 == 'dhcp':
            out.append('    - type: dhcp6')
        elif ip6 == 'auto':
            out.append('    - type: ipv6_slaac')
        elif ip6:
            out += ['    - type: static6', "      address: '{0}'".format(ip6)]
            if ipc.get('gw6'):
                out.append("      gateway: '{0}'".format(ipc['gw6']))
    servers = (config.get('nameserver') or '').split()
    searches = (config.get('searchdomain') or '').split()
    if servers or searches:
        out.append('  - type: nameserver')
        if servers:
            out.append('    address:')
            out.extend("    - '{0}'".format(s) for s in servers)
        if searches:
            out.append('    search:')
            out.extend("    - '{0}'".format(s) for s in searches)
    return '\n'.join(out) + '\n'


def guest_mac(net_value, vmid):
    """The MAC of a netN value (model=MAC); a stable one from the vmid when it has none."""
    first, props = split_props(net_value)
    for key, val in props.items():
        if key not in ('bridge', 'firewall', 'tag', 'rate', 'mtu', 'queues', 'link_down', 'trunks', 'model',
                       'macaddr') and re.fullmatch(r'([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}', val or ''):
            return val
    if props.get('macaddr'):
        return props['macaddr']
    return 'BC:24:11:{0:02X}:{1:02X}:{2:02X}'.format((vmid >> 16) & 0xff, (vmid >> 8) & 0xff, vmid & 0xff)


def write_cloudinit_iso(config, vmid, path):
    """The cidata ISO (user-data, meta-data, network-config); instance-id changes with the config."""
    ud, nc = user_data(config, vmid), network_config(config, vmid)
    instance = hashlib.sha1((ud + nc).encode()).hexdigest()
    staging = path + '.d'
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for name, text in (('user-data', ud), ('network-config', nc), ('meta-data', 'instance-id: {0}\n'.format(instance))):
        with open(os.path.join(staging, name), 'w') as f:
            f.write(text)
    run('xorriso', '-as', 'mkisofs', '-quiet', '-o', path, '-V', 'cidata', '-J', '-r', staging)
    shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- one qemu process

class AgentTimeout(Exception):
    """The guest agent did not answer in time."""


class Guest(object):
    """The qemu process of one VM, its sockets and its serial log."""

    def __init__(self, node, vmid):
        self.node = node
        self.vmid = vmid
        self.run_dir = os.path.join(node.workdir, 'run', str(vmid))
        self.qmp_path = os.path.join(self.run_dir, 'qmp.sock')
        self.qga_path = os.path.join(self.run_dir, 'qga.sock')
        self.proc = None
        self.name = str(vmid)
        self.started_at = None
        self.exited = None
        self.qmpstatus = 'stopped'
        self.agent_lock = asyncio.Lock()
        self.sync_id = int(time.time()) % 100000 * 1000 + vmid % 1000
        self.cpu_sample = None
        self.stats = {}
        # (seconds since the harness started, what): start, agent-first-answer, file-write, exit.
        self.events = []

    def note(self, what):
        self.events.append([round(time.time() - self.node.t0, 3), what])

    @property
    def running(self):
        return self.proc is not None and self.proc.returncode is None

    def serial_path(self, name=None):
        return os.path.join(self.node.log_dir, '{0}-{1}.serial.log'.format(self.vmid, name or self.name))

    async def start(self, config, name):
        os.makedirs(self.run_dir, exist_ok=True)
        for sock in (self.qmp_path, self.qga_path):
            if os.path.exists(sock):
                os.unlink(sock)
        disks = self.node.disks_for(self.vmid, config)
        iso = os.path.join(self.run_dir, 'cloudinit.iso')
        write_cloudinit_iso(config, self.vmid, iso)
        cores = int(config.get('cores', 1)) * int(config.get('sockets', 1))
        memory = int(str(config.get('memory', 512)).split('=')[-1])
        mac = guest_mac(config.get('net0', ''), self.vmid)
        tap = 'tap{0}i0'.format(self.vmid)
        self.name = name
        serial = self.serial_path()
        argv = ['ip', 'netns', 'exec', self.node.netns, self.node.qemu,
                '-name', '{0},debug-threads=on'.format(name), '-accel', self.node.accel,
                '-machine', 'pc', '-smp', str(cores), '-m', str(memory),
                '-display', 'none', '-vga', 'none', '-nodefaults', '-no-user-config',
                '-chardev', 'file,id=serial0,path={0},append=on'.format(serial), '-serial', 'chardev:serial0',
                '-qmp', 'unix:{0},server=on,wait=off'.format(self.qmp_path),
                '-chardev', 'socket,path={0},server=on,wait=off,id=qga0'.format(self.qga_path),
                '-device', 'virtio-serial', '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
                '-device', 'virtio-scsi-pci,id=scsihw0']
        for i, path in enumerate(disks):
            argv += ['-drive', 'file={0},if=none,id=drive-scsi{1},format=qcow2,cache=unsafe,discard=unmap'.format(
                path, i), '-device', 'scsi-hd,bus=scsihw0.0,scsi-id={0},drive=drive-scsi{0}{1}'.format(
                i, ',bootindex=100' if i == 0 else '')]
        argv += ['-drive', 'file={0},if=ide,index=2,media=cdrom,readonly=on'.format(iso),
                 '-netdev', 'tap,id=net0,ifname={0},script={1},downscript=no'.format(tap, self.node.ifup),
                 '-device', 'virtio-net-pci,netdev=net0,mac={0}'.format(mac),
                 '-device', 'virtio-rng-pci']
        log = open(os.path.join(self.run_dir, 'qemu.stderr'), 'ab')
        self.proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                         preexec_fn=die_with_parent)
        log.close()
        self.started_at = time.time()
        self.exited = asyncio.get_running_loop().create_future()
        self.note('qemu-start')
        asyncio.ensure_future(self._reap(self.proc, self.exited))
        # The start task ends once qemu answers QMP, as PVE's does once the process runs.
        deadline = time.time() + 30
        while True:
            if not self.running:
                raise TaskError('start failed: QEMU exited with code {0}: {1}'.format(
                    self.proc.returncode, self.stderr_tail()))
            try:
                self.qmpstatus = (await self.qmp('query-status'))['status']
                break
            except (OSError, ValueError, asyncio.TimeoutError):
                if time.time() > deadline:
                    await self.kill()
                    raise TaskError('start failed: QEMU did not answer on its QMP socket within 30 s')
                await asyncio.sleep(0.05)

    def stderr_tail(self):
        try:
            with open(os.path.join(self.run_dir, 'qemu.stderr'), 'rb') as f:
                return f.read()[-2000:].decode('utf-8', 'replace').strip()
        except OSError:
            return ''

    async def _reap(self, proc, exited):
        code = await proc.wait()
        self.qmpstatus = 'stopped'
        self.note('qemu-exit {0}'.format(code))
        if not exited.done():
            exited.set_result(code)
        self.node.on_exit(self)

    async def wait_exit(self, timeout):
        if not self.running:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def kill(self):
        """Terminate qemu (SIGTERM, SIGKILL after STOP_KILL_SECS); the overlay stays."""
        if not self.running:
            return
        # `ip netns exec` execs qemu, so the child's pid is qemu's.
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        if not await self.wait_exit(STOP_KILL_SECS):
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            await self.wait_exit(STOP_KILL_SECS)

    async def qmp(self, command, arguments=None, timeout=5.0):
        """One QMP command on a fresh connection; returns its `return`."""
        async def talk():
            reader, writer = await asyncio.open_unix_connection(self.qmp_path)
            try:
                await reader.readline()  # greeting
                writer.write(b'{"execute":"qmp_capabilities"}\n')
                await writer.drain()
                while 'return' not in json.loads(await reader.readline() or b'{"return":null}'):
                    pass
                msg = {'execute': command}
                if arguments:
                    msg['arguments'] = arguments
                writer.write(json.dumps(msg).encode() + b'\n')
                await writer.drain()
                while True:
                    line = await reader.readline()
                    if not line:
                        raise ValueError('QMP closed')
                    reply = json.loads(line)
                    if 'return' in reply:
                        return reply['return']
                    if 'error' in reply:
                        raise PveError(500, 'VM {0} qmp command \'{1}\' failed - {2}'.format(
                            self.vmid, command, reply['error'].get('desc')))
            finally:
                writer.close()
        return await asyncio.wait_for(talk(), timeout)

    async def agent(self, command, arguments=None, timeout=AGENT_TIMEOUT):
        """One guest-agent command: guest-sync-delimited first, then the command; returns its `return`."""
        async with self.agent_lock:
            return await asyncio.wait_for(self._agent(command, arguments), timeout)

    async def _agent(self, command, arguments):
        reader, writer = await asyncio.open_unix_connection(self.qga_path, limit=16 * 1024 * 1024)
        try:
            self.sync_id += 1
            sync = self.sync_id
            # 0xFF first: resets the agent's parser if an earlier client left half a command behind.
            writer.write(b'\xff' + json.dumps({'execute': 'guest-sync-delimited', 'arguments': {'id': sync}}).encode()
                         + b'\n')
            await writer.drain()
            while True:
                line = await reader.readuntil(b'\n')
                line = line.split(b'\xff')[-1].strip()
                if not line:
                    continue
                try:
                    if json.loads(line).get('return') == sync:
                        break
                except ValueError:
                    continue  # a stale, partial answer of an earlier client
            msg = {'execute': command}
            if arguments is not None:
                msg['arguments'] = arguments
            writer.write(json.dumps(msg).encode() + b'\n')
            await writer.drain()
            if command in ('guest-shutdown',):
                return None  # the agent does not answer a shutdown
            while True:
                reply = json.loads((await reader.readuntil(b'\n')).strip())
                if 'error' in reply:
                    raise PveError(500, 'Agent error: {0}'.format(reply['error'].get('desc')))
                if 'return' in reply:
                    return reply['return']
        finally:
            writer.close()

    def sample(self):
        """cpu (share of one host core per guest core), mem (RSS bytes), from /proc."""
        if not self.running:
            self.stats = {}
            return
        try:
            with open('/proc/{0}/stat'.format(self.proc.pid)) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            rss = int(fields[21]) * os.sysconf('SC_PAGE_SIZE')
        except (OSError, IndexError, ValueError):
            return
        now = time.time()
        cpu = 0.0
        if self.cpu_sample:
            t0, k0 = self.cpu_sample
            if now > t0:
                cpu = (ticks - k0) / CLK_TCK / (now - t0)
        self.cpu_sample = (now, ticks)
        self.stats = {'mem': rss, 'memhost': rss, 'cpu': round(cpu, 4), 'pid': self.proc.pid}


# ---------------------------------------------------------------- the node: namespace, bridge, work dir

class GuestNode(object):
    """Host-side resources of the real-guest mode, shared by all VMs."""

    def __init__(self, image, workdir, gateways, bridge='vmbr0', accel='tcg', qemu='qemu-system-x86_64'):
        self.image = os.path.abspath(image)
        self.workdir = os.path.abspath(workdir)
        self.log_dir = os.path.join(self.workdir, 'serial')
        self.images_dir = os.path.join(self.workdir, 'images')
        self.gateways = list(gateways)
        self.bridge = bridge
        self.accel = accel
        self.qemu = qemu
        self.netns = '{0}{1}'.format(NETNS_PREFIX, os.getpid())
        self.ifup = os.path.join(self.workdir, 'run', 'ifup')
        self.guests = {}
        self.t0 = time.time()
        self.pve = None

    def setup(self):
        if not os.path.isfile(self.image):
            raise RuntimeError('the guest image {0} does not exist; build it first'.format(self.image))
        for d in (self.log_dir, self.images_dir, os.path.dirname(self.ifup)):
            os.makedirs(d, exist_ok=True)
        sweep_stale()
        # qemu-server's pve-bridge, reduced: the new tap joins the bridge and comes up.
        with open(self.ifup, 'w') as f:
            f.write('#!/bin/sh\nip link set "$1" master {0} && ip link set "$1" up\n'.format(self.bridge))
        os.chmod(self.ifup, 0o755)
        run('ip', 'netns', 'add', self.netns)
        ns = ['ip', '-n', self.netns]
        run(*ns, 'link', 'set', 'lo', 'up')
        run(*ns, 'link', 'add', self.bridge, 'type', 'bridge')
        for gw in self.gateways:
            extra = ['nodad'] if ':' in gw else []
            run(*ns, 'addr', 'add', gw, 'dev', self.bridge, *extra)
        run(*ns, 'link', 'set', self.bridge, 'up')

    async def teardown(self):
        await asyncio.gather(*(g.kill() for g in self.guests.values()), return_exceptions=True)
        run('ip', 'netns', 'del', self.netns, check=False)
        shutil.rmtree(self.images_dir, ignore_errors=True)
        shutil.rmtree(os.path.join(self.workdir, 'run'), ignore_errors=True)

    def guest(self, vmid):
        if vmid not in self.guests:
            self.guests[vmid] = Guest(self, vmid)
        return self.guests[vmid]

    def volume_path(self, volid):
        return os.path.join(self.images_dir, re.sub(r'[^A-Za-z0-9._-]', '_', volid) + '.qcow2')

    def disks_for(self, vmid, config):
        """The overlay files of the VM's disks (boot disk first): created on first use, grown to size=."""
        paths = []
        for key in sorted(config, key=lambda k: (k[:4], int(re.sub(r'\D', '', k) or 0))):
            if not re.fullmatch(r'(scsi|virtio|sata|ide)\d+', key):
                continue
            volume, props = split_props(config[key])
            if props.get('media') == 'cdrom' or 'cloudinit' in (volume or ''):
                continue
            path = self.volume_path(volume)
            want = parse_size(props.get('size', '0'))
            if not os.path.exists(path):
                if not paths:
                    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', self.image, path)
                else:
                    run('qemu-img', 'create', '-q', '-f', 'qcow2', path, str(want or 1 << 30))
            if want and image_size(path) < want:
                run('qemu-img', 'resize', '-q', path, str(want))
            paths.append(path)
        if not paths:
            raise TaskError('VM {0} has no disk to boot from'.format(vmid))
        return paths

    def overlays_of(self, vmid):
        """The disk files of a VM (vm-<vmid>-disk-N volumes) that exist."""
        if not os.path.isdir(self.images_dir):
            return []
        mark = 'vm-{0}-disk-'.format(vmid)
        return sorted(f for f in os.listdir(self.images_dir) if mark in f)

    def free_volume(self, volid):
        path = self.volume_path(volid)
        if os.path.exists(path):
            os.unlink(path)

    def on_exit(self, guest):
        """qemu ended (powered off inside, stopped, crashed): the VM is stopped in the API too."""
        if self.pve is None:
            return
        vm = self.pve.vm(guest.vmid)
        if vm is not None and not (guest.running):
            vm.status = vm.qmpstatus = 'stopped'
            vm.stats = {}

    async def sample_forever(self):
        """Refreshes the status fields of running VMs twice a second."""
        while True:
            await asyncio.sleep(0.5)
            for g in list(self.guests.values()):
                if not g.running:
                    continue
                g.sample()
                try:
                    g.qmpstatus = (await g.qmp('query-status', timeout=2))['status']
                except (OSError, ValueError, asyncio.TimeoutError, PveError):
                    pass
                vm = self.pve.vm(g.vmid) if self.pve else None
                if vm is not None:
                    vm.qmpstatus = g.qmpstatus
                    vm.stats = dict(g.stats)

    async def standalone_boot(self, address, gateway, vmid=999, memory=1024, cores=1, limit=1800):
        """Boots the image alone (no API, no blockhostd) with the same qemu settings and a cloud-init
        drive giving it `address`; returns seconds from qemu's start to the guest agent's first answer
        and to sshd accepting TCP on port 22, then stops it and removes its overlay."""
        g = Guest(self, vmid)
        volume = 'local-lvm:vm-{0}-disk-0'.format(vmid)
        config = {'name': 'standalone-boot', 'cores': cores, 'memory': memory, 'ciuser': 'bench',
                  'scsi0': volume + ',size=4G', 'net0': 'virtio,bridge=' + self.bridge,
                  'ipconfig0': 'ip={0},gw={1}'.format(address, gateway), 'agent': '1'}
        host = address.split('/')[0]
        out = {}
        self.guests[vmid] = g
        try:
            await g.start(config, config['name'])
            t0 = g.started_at
            deadline = t0 + limit
            while time.time() < deadline and len(out) < 2 and g.running:
                if 'agent_secs' not in out:
                    try:
                        await g.agent('guest-ping', None, 1.0)
                        out['agent_secs'] = round(time.time() - t0, 2)
                    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                        pass
                if 'sshd_secs' not in out:
                    probe = await asyncio.create_subprocess_exec(
                        'ip', 'netns', 'exec', self.netns, 'timeout', '2', 'bash', '-c',
                        'exec 3<>/dev/tcp/{0}/22'.format(host), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    if await probe.wait() == 0:
                        out['sshd_secs'] = round(time.time() - t0, 2)
                await asyncio.sleep(0.25)
        finally:
            await g.kill()
            self.guests.pop(vmid, None)
            self.free_volume(volume)
        out['accel'] = self.accel
        return out

    def describe(self):
        out = []
        for vmid, g in sorted(self.guests.items()):
            vm = self.pve.vm(vmid) if self.pve else None
            out.append({'vmid': vmid, 'name': g.name, 'exists': vm is not None, 'running': g.running, 'epoch': self.t0,
                        'pid': g.proc.pid if g.proc else None,
                        'qmpstatus': g.qmpstatus, 'serial_log': g.serial_path(), 'events': g.events,
                        'overlay_files': self.overlays_of(vmid)})
        return out


def real_guest_pve(base=FakePve):
    """A FakePve subclass whose non-template VMs are GuestNode's qemu processes."""

    class RealGuestPve(base):
        guest_node = None

        def _real(self, vm):
            return self.guest_node is not None and not vm.template

        async def task(self, node, ttype, tid, user, body, vm=None, lock=True, log=()):
            # As on PVE, a task runs on after the request that started it returns (a shutdown takes as
            # long as the guest needs); clients poll tasks/{upid}/status.
            saved = self.time_scale
            self.time_scale = 1.0
            try:
                return await super().task(node, ttype, tid, user, body, vm=vm, lock=lock, log=log)
            finally:
                self.time_scale = saved

        async def _do_start(self, vm, user, p):
            if not self._real(vm):
                return await super()._do_start(vm, user, p)

            async def body():
                if vm.lock and vm.lock != 'suspended':
                    raise TaskError('VM is locked ({0})'.format(vm.lock))
                g = self.guest_node.guest(vm.vmid)
                if vm.status == 'running' or g.running:
                    raise TaskError('VM {0} already running'.format(vm.vmid))
                if vm.start_error:
                    raise TaskError(vm.start_error)
                vm.apply_pending()
                try:
                    await g.start(vm.config, vm.name)
                    await enforce_vm_firewall(self, vm)
                except RuntimeError as e:
                    raise TaskError('start failed: {0}'.format(e)) from e
                vm.status = 'running'
                vm.qmpstatus = g.qmpstatus
                vm.started_at = g.started_at
            return await self.task(vm.node, 'qmstart', vm.vmid, user, body, vm=vm)

        async def _do_stop(self, vm, user, p):
            if not self._real(vm):
                return await super()._do_stop(vm, user, p)
            if not p.get('skiplock'):
                self._check_lock(vm)

            async def body():
                await self.guest_node.guest(vm.vmid).kill()
                vm.status = vm.qmpstatus = 'stopped'
            return await self.task(vm.node, 'qmstop', vm.vmid, user, body, vm=vm)

        async def _powerdown(self, vm, p):
            if not self._real(vm):
                return await super()._powerdown(vm, p)
            timeout = int(p.get('timeout') or self.shutdown_default_timeout)
            g = self.guest_node.guest(vm.vmid)
            if g.running:
                try:
                    await g.qmp('system_powerdown')
                except (OSError, ValueError, asyncio.TimeoutError):
                    pass
                g.note('acpi-powerdown')
            if await g.wait_exit(timeout):
                vm.status = vm.qmpstatus = 'stopped'
                return None
            if str(p.get('forceStop', '0')) in ('1', 'true'):
                await g.kill()
                vm.status = vm.qmpstatus = 'stopped'
                return 'VM still running - terminating now with SIGTERM'
            raise TaskError('VM quit/powerdown failed - got timeout')

        async def _do_reset(self, vm, user, p):
            if not self._real(vm):
                return await super()._do_reset(vm, user, p)
            self._need_running(vm)
            self._check_lock(vm)

            async def body():
                await self.guest_node.guest(vm.vmid).qmp('system_reset')
            return await self.task(vm.node, 'qmreset', vm.vmid, user, body, vm=vm)

        async def _do_reboot(self, vm, user, p):
            if not self._real(vm):
                return await super()._do_reboot(vm, user, p)
            self._need_running(vm)
            self._check_lock(vm)

            async def body():
                await self._powerdown(vm, p)
                vm.apply_pending()
                g = self.guest_node.guest(vm.vmid)
                await g.start(vm.config, vm.name)
                vm.status, vm.qmpstatus, vm.started_at = 'running', g.qmpstatus, g.started_at
            return await self.task(vm.node, 'qmreboot', vm.vmid, user, body, vm=vm)

        async def _do_suspend(self, vm, user, p):
            if not self._real(vm):
                return await super()._do_suspend(vm, user, p)
            self._need_running(vm)
            self._check_lock(vm)
            if str(p.get('todisk', '0')) in ('1', 'true'):
                raise PveError(501, 'suspend to disk is not supported by this stand-in')

            async def body():
                g = self.guest_node.guest(vm.vmid)
                await g.qmp('stop')
                vm.qmpstatus = g.qmpstatus = 'paused'
            return await self.task(vm.node, 'qmsuspend', vm.vmid, user, body, vm=vm)

        async def _do_resume(self, vm, user, p):
            if not self._real(vm):
                return await super()._do_resume(vm, user, p)
            self._need_running(vm)

            async def body():
                g = self.guest_node.guest(vm.vmid)
                await g.qmp('cont')
                vm.qmpstatus = g.qmpstatus = 'running'
            return await self.task(vm.node, 'qmresume', vm.vmid, user, body, vm=vm)

        def _routes_qemu(self):
            # fakepve answers a qemu disk resize from the API schema alone; PVE records the new
            # size= in the drive's config, which the guest's disk (disks_for) and maxdisk follow.
            return super()._routes_qemu() + [('PUT', '/nodes/{node}/qemu/{vmid}/resize', self._qm_resize)]

        async def _qm_resize(self, v, user):
            """PVE::API2::Qemu's resize_vm: grow only, `+N` relative or an absolute size."""
            vm = self.find(v['node'], v['vmid'])
            self.require(user, '/vms/{0}'.format(vm.vmid), 'VM.Config.Disk')
            if not str(v.get('skiplock', '0')) in ('1', 'true'):
                self._check_lock(vm)
            disk, text = v['disk'], str(v['size'])
            if vm.config.get(disk) is None:
                raise PveError(500, "disk '{0}' does not exist".format(disk))
            volume, props = split_props(vm.config[disk])
            size, request = parse_size(props.get('size', '0')), parse_size(text.lstrip('+'))
            if not request:
                raise PveError(400, "invalid format - unable to parse size '{0}'".format(text))
            new = size + request if text.startswith('+') else request
            if new < size:
                raise PveError(500, 'shrinking disks is not supported')

            async def body():
                # A running guest's overlay grows at its next start (disks_for); PVE would
                # block_resize it live, which the VM's kernel sees at once.
                props['size'] = '{0}G'.format(new >> 30) if new % (1 << 30) == 0 else str(new)
                vm.config[disk] = ','.join([volume] + ['{0}={1}'.format(k, x) for k, x in props.items()])
            return await self.task(vm.node, 'resize', vm.vmid, user, body, vm=vm)

        def _qm_free(self, volid):
            super()._qm_free(volid)
            if self.guest_node is not None:
                self.guest_node.free_volume(volid)

        def _vm_usage(self, vm):
            data = super()._vm_usage(vm)
            if self._real(vm) and vm.status == 'running':
                g = self.guest_node.guest(vm.vmid)
                data['uptime'] = int(time.time() - g.started_at) if g.started_at else 0
            return data

        def _vm_status(self, vm, listing=False):
            data = super()._vm_status(vm, listing)
            if self._real(vm) and vm.status == 'running' and 'pid' in vm.stats:
                data['pid'] = vm.stats['pid']
            return data

        async def _agent_call(self, match, values):
            vm = self.find(values['node'], values['vmid'])
            if not self._real(vm):
                return await super()._agent_call(match, values)
            command = match.template.rsplit('/', 1)[1]
            g = self.guest_node.guest(vm.vmid)
            if vm.status != 'running' or not g.running:
                raise PveError(500, 'VM {0} is not running'.format(vm.vmid))
            if str(vm.config.get('agent', '0')).split(',')[0].split('=')[-1] != '1':
                raise PveError(500, 'No QEMU guest agent configured')
            timeout = PING_TIMEOUT if command == 'ping' else AGENT_TIMEOUT
            try:
                result = await self._real_agent(g, command, values, timeout)
            except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                raise PveError(500, "VM {0} qmp command 'guest-{1}' failed - got timeout".format(
                    vm.vmid, command)) from None
            if not any(e[1] == 'agent-up' for e in g.events):
                g.note('agent-up')
            g.note('agent ' + command)
            return result

        async def _real_agent(self, g, command, v, timeout):
            """PVE's PVE::API2::Qemu::Agent, one command: its arguments and its result shape."""
            if command == 'file-write':
                content = v['content']
                b64 = content if str(v.get('encode', 1)) in ('0', 'false') else base64.b64encode(
                    content.encode()).decode()
                handle = await g.agent('guest-file-open', {'path': v['file'], 'mode': 'wb'}, timeout)
                try:
                    await g.agent('guest-file-write', {'handle': handle, 'buf-b64': b64}, timeout)
                finally:
                    await g.agent('guest-file-close', {'handle': handle}, timeout)
                return None
            if command == 'file-read':
                handle = await g.agent('guest-file-open', {'path': v['file'], 'mode': 'r'}, timeout)
                try:
                    got = await g.agent('guest-file-read', {'handle': handle, 'count': 16 * 1024 * 1024}, timeout)
                finally:
                    await g.agent('guest-file-close', {'handle': handle}, timeout)
                out = {'content': base64.b64decode(got.get('buf-b64', '')).decode('utf-8', 'replace')}
                if not got.get('eof', True):
                    out['truncated'] = True
                return out
            if command == 'exec':
                argv = list(v['command'])
                args = {'path': argv[0], 'arg': argv[1:], 'capture-output': True}
                if v.get('input-data') is not None:
                    args['input-data'] = base64.b64encode(v['input-data'].encode()).decode()
                return await g.agent('guest-exec', args, timeout)
            if command == 'exec-status':
                res = await g.agent('guest-exec-status', {'pid': int(v['pid'])}, timeout)
                for key in ('out-data', 'err-data'):
                    if key in res:
                        res[key] = base64.b64decode(res[key]).decode('utf-8', 'replace')
                return res
            if command == 'shutdown':
                await g.agent('guest-shutdown', None, timeout)
                return {'result': None}
            if command == 'ping':
                await g.agent('guest-ping', None, timeout)
                return {'result': {}}
            # The argument-less queries (info, get-osinfo, network-get-interfaces, ...).
            return {'result': await g.agent('guest-' + command, None, timeout)}

    return RealGuestPve


# ---------------------------------------------------------------- accelerator

PROBE_SECS = 120
PROBE_SILENT_SECS = 30


async def probe_kvm(image, workdir, qemu='qemu-system-x86_64'):
    """Boots IMAGE (read-only, -snapshot) under KVM until its guest agent answers: True if it does.

    A /dev/kvm that exists is no proof: under nested or para-virtualised KVM the guest kernel can die
    early with a KVM internal error (the VM then sits in QMP status internal-error)."""
    d = os.path.join(workdir, 'run', 'kvm-probe')
    os.makedirs(d, exist_ok=True)
    qmp, qga = os.path.join(d, 'qmp.sock'), os.path.join(d, 'qga.sock')
    proc = await asyncio.create_subprocess_exec(
        qemu, '-accel', 'kvm', '-machine', 'pc', '-m', '512', '-snapshot', '-display', 'none', '-vga', 'none',
        '-nodefaults', '-no-user-config', '-qmp', 'unix:{0},server=on,wait=off'.format(qmp),
        '-serial', 'file:{0}'.format(os.path.join(workdir, 'kvm-probe.serial.log')),
        '-chardev', 'socket,path={0},server=on,wait=off,id=qga0'.format(qga), '-device', 'virtio-serial',
        '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0', '-device', 'virtio-scsi-pci,id=s',
        '-drive', 'file={0},if=none,id=d0,format=qcow2'.format(image), '-device', 'scsi-hd,bus=s.0,drive=d0',
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    probe = Guest.__new__(Guest)
    probe.vmid, probe.qmp_path, probe.qga_path, probe.proc = 0, qmp, qga, proc
    probe.agent_lock, probe.sync_id = asyncio.Lock(), 1
    started = time.time()
    deadline = started + PROBE_SECS
    serial = os.path.join(workdir, 'kvm-probe.serial.log')
    ok = False
    try:
        while time.time() < deadline and proc.returncode is None:
            # Firmware and GRUB write to the serial console within a second; silence for
            # PROBE_SILENT_SECS means the vCPU is stuck (seen with para-virtualised KVM).
            if time.time() - started > PROBE_SILENT_SECS and not (os.path.exists(serial) and os.path.getsize(serial)):
                break
            try:
                status = (await probe.qmp('query-status', timeout=2))['status']
                if status in ('internal-error', 'guest-panicked', 'shutdown'):
                    break
                await probe.agent('guest-ping', None, timeout=2)
                ok = True
                break
            except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, PveError):
                await asyncio.sleep(0.5)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    return ok


async def choose_accel(wanted, image, workdir, qemu='qemu-system-x86_64'):
    """tcg or kvm: as asked, or (auto) KVM when a probe boot under it works, cached per machine."""
    if wanted != 'auto':
        return wanted
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return 'tcg'
    key = {'kernel': os.uname().release, 'qemu': run(qemu, '--version').splitlines()[0],
           'image': os.path.basename(image), 'mtime': int(os.stat(image).st_mtime)}
    cache = os.path.join(os.path.dirname(os.path.abspath(workdir)), 'accel-probe.json')
    try:
        with open(cache) as f:
            known = json.load(f)
        if known.get('key') == key:
            return known['accel']
    except (OSError, ValueError, KeyError):
        pass
    accel = 'kvm' if await probe_kvm(image, workdir, qemu) else 'tcg'
    with open(cache, 'w') as f:
        json.dump({'key': key, 'accel': accel}, f)
    return accel


# ---------------------------------------------------------------- the VM firewall, enforced

def mac_link_local(mac):
    """The EUI-64 IPv6 link-local address of a MAC, the one PVE adds to every ipfilter set."""
    b = [int(x, 16) for x in mac.split(':')]
    b[0] ^= 0x02
    eui = b[:3] + [0xff, 0xfe] + b[3:]
    return str(ipaddress.IPv6Address(bytes([0xfe, 0x80] + [0] * 6 + eui)))


def _on(options, key, default):
    value = options.get(key)
    return default if value is None else str(value) not in ('0', 'false', '')


def vm_firewall_rules(vmid, net0, fw, cluster):
    """nft rules (bridge family, one chain's worth) doing what pve-firewall does for net0's outgoing
    traffic, from the VM's firewall config as fakepve keeps it; None when Proxmox would filter nothing
    (datacenter firewall off, `firewall` not on the NIC, or the VM's firewall off).

    Mirrors PVE::Firewall's ruleset_create_vm_chain for direction OUT: DHCP first unless `dhcp` is 0,
    then the MAC filter (unless `macfilter` is 0), router advertisements dropped unless `radv`, the
    `ipfilter-net0` set (with the MAC's link-local address) when `ipfilter` is on or the set exists,
    then neighbour discovery. ARP is held to the set's IPv4 addresses the way PVE's ebtables rules
    hold it. `policy_out` is not modelled (the reconciler sets ACCEPT)."""
    _, props = split_props(net0)
    options = fw.get('options', {})
    if not (_on(cluster, 'enable', False) and _on(props, 'firewall', False) and _on(options, 'enable', False)):
        return None
    mac = guest_mac(net0, vmid).lower()
    rules = []
    if _on(options, 'dhcp', True):
        rules.append('udp sport 68 udp dport 67 accept')
        rules.append('udp sport 546 udp dport 547 accept')
    if _on(options, 'macfilter', True):
        rules.append('ether saddr != {0} drop'.format(mac))
    if not _on(options, 'radv', False):
        rules.append('icmpv6 type nd-router-advert drop')
    entries = fw.get('ipset', {}).get('ipfilter-net0')
    if _on(options, 'ipfilter', False) or entries is not None:
        allowed = {4: [], 6: [mac_link_local(mac)]}
        excluded = {4: [], 6: []}
        for entry in entries or []:
            try:
                net = ipaddress.ip_network(entry['cidr'], strict=False)
            except ValueError:
                continue  # an alias: not modelled
            (excluded if entry.get('nomatch') else allowed)[net.version].append(str(net))
        if _on(options, 'ndp', True):
            # Duplicate address detection comes from the unspecified address.
            rules.append('ip6 saddr :: icmpv6 type nd-neighbor-solicit accept')
        for family, match, arp in ((4, 'ip saddr', 'arp saddr ip'), (6, 'ip6 saddr', None)):
            kind = 'ip' if family == 4 else 'ip6'
            if excluded[family]:
                rules.append('ether type {0} {1} {{ {2} }} drop'.format(kind, match, ', '.join(excluded[family])))
            if allowed[family]:
                rules.append('ether type {0} {1} != {{ {2} }} drop'.format(kind, match, ', '.join(allowed[family])))
                if arp:
                    rules.append('ether type arp {0} != {{ {1} }} drop'.format(arp, ', '.join(allowed[family])))
            else:
                rules.append('ether type {0} drop'.format(kind))
                if arp:
                    rules.append('ether type arp drop')
    return rules


class VmFirewalls(object):
    """The node's enforcement of its VMs' firewalls: one nftables table `bridge pvefw` in the node's
    namespace, a chain per running VM that has a firewall, entered from `prerouting` by the VM's tap.
    The whole table is rewritten in one `nft -f` transaction whenever a VM's rules change."""

    TABLE = 'pvefw'

    def __init__(self, node):
        self.node = node
        self.chains = {}

    def apply(self, vmid, net0, fw, cluster):
        rules = vm_firewall_rules(vmid, net0, fw, cluster)
        if rules is None:
            self.chains.pop(vmid, None)
        else:
            self.chains[vmid] = rules
        self._write()
        return rules

    def _write(self):
        lines = ['table bridge {0} {{}}'.format(self.TABLE), 'delete table bridge {0}'.format(self.TABLE),
                 'table bridge {0} {{'.format(self.TABLE),
                 '  chain prerouting {',
                 '    type filter hook prerouting priority -200; policy accept;']
        for vmid in sorted(self.chains):
            lines.append('    iifname "tap{0}i0" jump vm{0}'.format(vmid))
        lines.append('  }')
        for vmid, rules in sorted(self.chains.items()):
            lines.append('  chain vm{0} {{'.format(vmid))
            lines.extend('    ' + r for r in rules)
            lines.append('  }')
        lines.append('}')
        script = '\n'.join(lines) + '\n'
        done = subprocess.run(['ip', 'netns', 'exec', self.node.netns, 'nft', '-f', '-'], input=script,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError('nft refused the VM firewall ({0}):\n{1}'.format(done.stderr.strip(), script))


async def enforce_vm_firewall(pve, vm):
    """The hook of a start: what Proxmox's firewall would do for this VM's tap, from its config now. A
    firewall that cannot be put in place stops the VM again (the start fails, as it would on PVE)."""
    node = pve.guest_node
    firewalls = node.__dict__.setdefault('vm_firewalls', VmFirewalls(node))
    fw = pve._fw()['guests'].get(int(vm.vmid), {})
    try:
        rules = firewalls.apply(vm.vmid, vm.config.get('net0', ''), fw, pve.firewall_config('cluster')['options'])
    except RuntimeError:
        await node.guest(vm.vmid).kill()
        raise
    node.guest(vm.vmid).note('firewall {0}'.format('off' if rules is None else '{0} rules'.format(len(rules))))


async def guest_exec(node, vmid, argv, timeout=60):
    """Runs argv inside a running guest through its agent (guest-exec), as root; waits for it to end and
    returns {exitcode, out, err}. For tests that act from inside a VM."""
    g = node.guest(int(vmid))
    started = await g.agent('guest-exec', {'path': argv[0], 'arg': list(argv[1:]), 'capture-output': True})
    deadline = time.time() + timeout
    while True:
        st = await g.agent('guest-exec-status', {'pid': started['pid']})
        if st.get('exited'):
            decode = lambda key: base64.b64decode(st.get(key, '')).decode('utf-8', 'replace')  # noqa: E731
            return {'exitcode': st.get('exitcode'), 'out': decode('out-data'), 'err': decode('err-data')}
        if time.time() > deadline:
            raise RuntimeError('{0} did not end within {1} s in VM {2}'.format(argv, timeout, vmid))
        await asyncio.sleep(0.2)
