"""fakepve for the setup wizard's tests: the pve crate's server script (node pve1,
template 9001, the root token, the stdin/stdout control channel) plus a model of
the access API, which fakepve 0.5.0 only validates (roles, users, API tokens and
ACLs are checked against PVE's schema, then answered from it and forgotten).

Here what the wizard creates is kept: a token created through the API can log in
with the secret the API returned, and every ACL entry is also granted with
fakepve's own permission model (`pve.grant`), so once the wizard has made its
token, requests with it are checked against exactly the privileges given. A
blockhostd that ran on that token and still created its VM proves the role is
enough; the `access` control command shows what was created, so the test can
prove it is not root.

PVE's own rule for a VM's cloud-init settings is modelled too (fakepve 0.5.0
asks VM.Config.HWType for them; PVE asks the cloud-init/network privileges).

Also modelled: `GET /nodes/{node}/network` (fakepve invents one from the schema)
answers the host's bridge vmbr0 on 192.168.77.0/24 and an uplink.

Usage: python fakepve_access.py HOST
"""

import asyncio
import json
import os
import re
import sys
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'controller', 'pve', 'tests'))
import fakepve_server  # noqa: E402  (the shared script)
from fakepve import FakePve  # noqa: E402
from fakepve.server import error, ok  # noqa: E402

ACCESS = re.compile(r'^/api2/json/access/(roles|users|acl)(/.*)?$')
NETWORK = re.compile(r'^/api2/json/nodes/([^/]+)/network$')


class Access(object):
    """Roles, users, tokens and ACL entries as the wizard made them."""

    def __init__(self):
        self.roles = {}
        self.users = {}
        self.tokens = {}
        self.acl = []
        self.writes = []

    def dump(self):
        return {'roles': {k: sorted(v) for k, v in self.roles.items()}, 'users': sorted(self.users),
                'tokens': {k: {'privsep': v['privsep']} for k, v in self.tokens.items()},
                'acl': [list(e) for e in self.acl], 'writes': self.writes}

    def handle(self, pve, method, parts, form):
        if method != 'GET':
            self.writes.append([method, '/'.join(parts)])
        if parts == ['roles']:
            if method == 'GET':
                return [{'roleid': r, 'privs': ','.join(sorted(p)), 'special': 0} for r, p in self.roles.items()]
            role = form['roleid']
            if role in self.roles:
                return error(500, "create role failed: role '{0}' already exists".format(role))
            self.roles[role] = set(p for p in form.get('privs', '').split(',') if p)
            return None
        if parts[0] == 'roles' and len(parts) == 2:
            role = parts[1]
            if role not in self.roles:
                return error(500, "role '{0}' does not exist".format(role))
            if method == 'GET':
                return {p: 1 for p in self.roles[role]}
            privs = set(p for p in form.get('privs', '').split(',') if p)
            self.roles[role] = (self.roles[role] | privs) if form.get('append') in ('1', 1) else privs
            return None
        if parts == ['users']:
            if method == 'GET':
                return [{'userid': u, 'enable': 1} for u in self.users]
            user = form['userid']
            if user in self.users:
                return error(500, "create user failed: user '{0}' already exists".format(user))
            self.users[user] = {'comment': form.get('comment')}
            return None
        if parts[0] == 'users' and len(parts) == 3 and parts[2] == 'token':
            user = parts[1]
            return [{'tokenid': t.split('!')[1], 'privsep': v['privsep']} for t, v in self.tokens.items()
                    if t.split('!')[0] == user]
        if parts[0] == 'users' and len(parts) == 4 and parts[2] == 'token':
            full = '{0}!{1}'.format(parts[1], parts[3])
            # The administrator (fakepve's root@pam) exists without being created.
            if parts[1] not in self.users and parts[1] != pve.user:
                return error(500, "no such user ('{0}')".format(parts[1]))
            if method == 'POST':
                if full in self.tokens:
                    return error(500, "Token already exists.")
                secret = str(uuid.uuid4())
                privsep = int(form.get('privsep', 1))
                self.tokens[full] = {'privsep': privsep}
                pve.apitokens[full] = secret
                return {'full-tokenid': full, 'value': secret, 'info': {'privsep': privsep}}
            if method == 'DELETE':
                self.tokens.pop(full, None)
                pve.apitokens.pop(full, None)
                self.acl = [e for e in self.acl if e[3] != full]
                return None
            if full not in self.tokens:
                return error(500, "no such token '{0}' for user '{1}'".format(parts[3], parts[1]))
            return {'privsep': self.tokens[full]['privsep']}
        if parts[0] == 'users' and len(parts) == 2:
            if parts[1] not in self.users:
                return error(500, "no such user ('{0}')".format(parts[1]))
            return {'enable': 1}
        if parts == ['acl']:
            if method == 'GET':
                return [{'path': p, 'roleid': r, 'type': t, 'ugid': u, 'propagate': prop} for p, r, t, u, prop in self.acl]
            path = form['path']
            for role in [r for r in form.get('roles', '').split(',') if r]:
                if role not in self.roles:
                    return error(500, "role '{0}' does not exist".format(role))
                for kind, key in (('user', 'users'), ('token', 'tokens')):
                    for who in [w for w in form.get(key, '').split(',') if w]:
                        entry = (path, role, kind, who, int(form.get('propagate', 1)))
                        if entry not in self.acl:
                            self.acl.append(entry)
                        # fakepve's own checks: who holds these privileges on path.
                        pve.grant(who, path, *self.roles[role])
            return None
        return error(501, 'fakepve_access: {0} /access/{1} is not modelled'.format(method, '/'.join(parts)))


# Cloud-init settings of a VM's config. PVE (qemu-server's
# check_vm_modify_config_perm) checks these and `ipconfigN` against the
# cloud-init/network privileges; fakepve 0.5.0 falls through to VM.Config.HWType
# for them, which would demand more of the BlockHost role than PVE does.
CLOUDINIT_KEYS = ('ciuser', 'cipassword', 'citype', 'ciupgrade', 'cicustom', 'nameserver', 'searchdomain', 'sshkeys')


def install():
    """Wrap FakePve._answer (before the shared script wraps it to record errors)."""
    original = FakePve._answer
    original_priv = FakePve._config_priv

    def config_priv(self, key):
        if key in CLOUDINIT_KEYS or re.match(r'^ipconfig\d+$', key):
            return 'VM.Config.Cloudinit'
        return original_priv(self, key)
    FakePve._config_priv = config_priv

    async def answer(self, request, handler, generic, path_node):
        m = ACCESS.match(request.path)
        n = NETWORK.match(request.path)
        if not m and not n:
            return await original(self, request, handler, generic, path_node)
        # PVE's own parameter and permission checks first (the generic route).
        response = await original(self, request, handler, generic, path_node)
        if response.status >= 400:
            return response
        if n:
            return ok([
                {'iface': 'vmbr0', 'type': 'bridge', 'active': 1, 'cidr': '192.168.77.10/24', 'bridge_ports': 'eno1'},
                {'iface': 'eno1', 'type': 'eth', 'active': 1},
            ])
        form = {}
        if request.method in ('POST', 'PUT'):
            form = dict(await request.post())
        parts = [urllib.parse.unquote(p) for p in request.path.split('/api2/json/access/', 1)[1].split('/')]
        data = self.access_model.handle(self, request.method, parts, form)
        if hasattr(data, 'status'):
            return data
        return ok(data)
    FakePve._answer = answer


async def serve(host):
    install()
    original_build = fakepve_server.build

    def build(h, nodes, node=None):
        pve = original_build(h, nodes, node)
        pve.access_model = Access()
        return pve
    fakepve_server.build = build
    fakepve_server.command = command_wrapper(fakepve_server.command)
    # The shared script's arguments: no extra node, no real guests.
    args = {'host': host, 'node': [], 'guest_image': None, 'guest_dir': None, 'gateway': [], 'accel': 'auto'}
    await fakepve_server.serve(type('Args', (), args)())


def command_wrapper(shared):
    async def wrapped(pve, cmd):
        if cmd['op'] == 'access':
            return pve.access_model.dump()
        return await shared(pve, cmd)
    return wrapped


if __name__ == '__main__':
    asyncio.run(serve(sys.argv[1]))
