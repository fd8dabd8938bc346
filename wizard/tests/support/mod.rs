//! Helpers of the wizard's tests: the real `blockhost-wizard` binary on a
//! temporary directory (every path and command of its settings pointed there),
//! an HTTPS client that trusts exactly the certificate the wizard generated and
//! carries its session cookie and CSRF token, anvil, and fakepve with the access
//! API modelled (`fakepve_access.py`).
//!
//! Addresses: 127.0.21.x belongs to these tests (wizards from .1, anvils on
//! .100+, fakepve from .150).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure report

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../../../controller/pve/tests/common/process.rs"]
pub mod fakepve_process;
pub use fakepve_process::FakePveProcess as FakePve;

static NEXT_WIZARD: AtomicU32 = AtomicU32::new(1);
static NEXT_ANVIL: AtomicU32 = AtomicU32::new(100);
static NEXT_PVE: AtomicU32 = AtomicU32::new(150);

/// anvil dev account 0: the admin wallet.
pub const ADMIN: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
pub const ADMIN_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// anvil dev account 1: another wallet (forged sign-ins).
pub const OTHER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// anvil dev account 4: a buyer.
pub const BUYER: &str = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65";
pub const BUYER_KEY: &str = "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";

/// The admin command name the tests choose (a secret the grep looks for too).
pub const ADMIN_COMMAND: &str = "open-sesame-42";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether anvil, fakepve (and, with `browser`, chromium and playwright-core)
/// are installed; with `BLOCKHOST_REQUIRE_TOOLS=1` a missing one fails the test.
pub fn tools(browser: bool) -> bool {
    let root = repo_root();
    let mut need = vec![
        root.join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"),
        root.join(".venv/bin/python"),
    ];
    if browser {
        need.push(PathBuf::from("/usr/bin/chromium"));
        need.push(root.join("node_modules/playwright-core"));
    }
    let missing: Vec<_> = need.iter().filter(|p| !p.exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "BLOCKHOST_REQUIRE_TOOLS=1 but missing {missing:?}; run scripts/setup.sh"
    );
    eprintln!("skipping: missing {missing:?}; run scripts/setup.sh");
    false
}

/// [`tools`], and then the workspace binaries finalization runs (blockhostd,
/// bhctl, the root agent): a missing one fails the test with how to build it.
pub fn ready(browser: bool) -> bool {
    if !tools(browser) {
        return false;
    }
    for bin in ["blockhostd", "bhctl", "blockhost-root-agent"] {
        sibling_bin(bin);
    }
    true
}

/// A binary of the workspace next to the wizard's (cargo gives tests the paths of
/// their own package's binaries only).
pub fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_blockhost-wizard")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build -p blockhost-controller -p bhctl -p blockhost-root-agent --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

pub fn q(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// A running anvil, killed when dropped.
pub struct Anvil {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Anvil {
    /// anvil on its own 127.0.21.x; `block_time`: interval mining (seconds) instead of mining each transaction at once.
    pub fn start(block_time: Option<u64>) -> Anvil {
        let host = format!("127.0.21.{}", NEXT_ANVIL.fetch_add(1, Ordering::SeqCst));
        let port = 18545;
        let mut cmd =
            Command::new(repo_root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"));
        cmd.args([
            "--host",
            &host,
            "--port",
            &port.to_string(),
            "--silent",
            "--chain-id",
            "31337",
            "--max-persisted-states",
            "0",
        ]);
        if let Some(t) = block_time {
            cmd.args(["--block-time", &t.to_string()]);
        }
        let child = cmd.stdout(Stdio::null()).spawn().expect("start anvil");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((host.as_str(), port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "anvil did not listen on {host}:{port}"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
        Anvil {
            child,
            url: format!("http://{host}:{port}"),
            http: reqwest::Client::new(),
        }
    }

    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        let v: Value = self
            .http
            .post(&self.url)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    /// Sends ether from an unlocked dev account and waits until it is mined
    /// (with interval mining that takes up to a block time).
    pub async fn fund(&self, from: &str, to: &str, wei: u128) {
        let hash = self
            .rpc(
                "eth_sendTransaction",
                json!([{"from": from, "to": to, "value": format!("0x{wei:x}")}]),
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .rpc("eth_getTransactionReceipt", json!([hash]))
            .await
            .is_null()
        {
            assert!(Instant::now() < deadline, "the funding was not mined");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn call(&self, to: &str, data: &[u8]) -> Vec<u8> {
        let out = self
            .rpc(
                "eth_call",
                json!([{"to": to, "data": hex0x(data)}, "latest"]),
            )
            .await;
        hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap()
    }

    pub async fn nonce(&self, who: &str) -> u64 {
        q(&self
            .rpc("eth_getTransactionCount", json!([who, "latest"]))
            .await)
    }
}

/// fakepve with the access API modelled.
pub fn start_fakepve() -> FakePve {
    let root = repo_root();
    FakePve::start_script(
        &root,
        &root.join("wizard/tests/fakepve_access.py"),
        "127.0.21",
        &NEXT_PVE,
        &[],
        Stdio::null,
    )
}

/// Where one wizard keeps everything.
pub struct Env {
    pub root: tempfile::TempDir,
    pub listen: String,
    /// Whether the template step builds (a stand-in) and installs (the real
    /// `bhctl template install`) the guest template; see [`Env::with_template`].
    pub template: bool,
    /// Whether the host firewall step starts the real root agent (in a network
    /// namespace of its own; needs root and `unshare`).
    pub firewall: bool,
    /// Another template install command than the real `bhctl template install`.
    pub template_install: Option<String>,
}

/// What the stand-in for `bhctl template build` writes: a small file, not a
/// qcow2 image (fakepve does not read it; the real build is `iso/guest/`'s test).
pub const TEMPLATE_IMAGE: &str = "QFI stand-in guest image for the wizard tests";

/// Whether the root agent can run here for real: root (it needs CAP_NET_ADMIN),
/// `unshare` for a network namespace of its own, and `nft`.
pub fn can_run_root_agent() -> bool {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    root && Path::new("/usr/bin/unshare").exists() && Path::new("/usr/sbin/nft").exists()
}

impl Env {
    pub fn new() -> Env {
        let root = tempfile::tempdir().unwrap();
        let listen = format!(
            "127.0.21.{}:18443",
            NEXT_WIZARD.fetch_add(1, Ordering::SeqCst)
        );
        let firewall = can_run_root_agent();
        if !firewall {
            assert!(
                std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "BLOCKHOST_REQUIRE_TOOLS=1 but the root agent cannot run here (root, unshare, nft)"
            );
            eprintln!("not root or no unshare/nft: the host firewall step is left out");
        }
        let env = Env {
            root,
            listen,
            template: false,
            firewall,
            template_install: None,
        };
        // The stand-in for `systemctl enable --now blockhost-root-agent`: the real
        // agent in a network namespace of its own (its default-deny ruleset lands
        // there, not on the machine running the tests); its socket is a file, so
        // blockhostd reaches it from here.
        let script = env.path("start-root-agent.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\npid={dir}/root-agent.pid\nif [ -f \"$pid\" ] && kill -0 \"$(cat \"$pid\")\" 2>/dev/null; then exit 0; fi\nunshare --net -- \"{bin}\" --config \"$BLOCKHOST_ROOT_AGENT_CONFIG\" >>{dir}/root-agent.log 2>&1 </dev/null &\necho $! > \"$pid\"\n",
                dir = env.root.path().display(),
                bin = Path::new(env!("CARGO_BIN_EXE_blockhost-wizard")).with_file_name("blockhost-root-agent").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The stand-in for `bhctl template build --output X`: writes a small file.
        let script = env.path("build-template.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\n[ \"$1\" = --output ] || {{ echo \"usage: $0 --output FILE\" >&2; exit 2; }}\nprintf '%s' '{}' > \"$2.part\"\nmv \"$2.part\" \"$2\"\n",
                TEMPLATE_IMAGE
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The stand-in for `systemctl enable --now blockhostd`: starts the real
        // blockhostd from the configuration the wizard wrote, once.
        let script = env.path("start-blockhostd.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\npid={dir}/blockhostd.pid\nif [ -f \"$pid\" ] && kill -0 \"$(cat \"$pid\")\" 2>/dev/null; then exit 0; fi\n\"{bin}\" --config \"$BLOCKHOST_CONFIG\" >>{dir}/blockhostd.log 2>&1 </dev/null &\necho $! > \"$pid\"\n",
                dir = env.root.path().display(),
                // Not asserted here: only the finalization tests start it.
                bin = Path::new(env!("CARGO_BIN_EXE_blockhost-wizard")).with_file_name("blockhostd").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub fn etc(&self) -> PathBuf {
        self.path("etc")
    }

    pub fn daemon_socket(&self) -> PathBuf {
        self.path("api.sock")
    }

    /// Turns the template step on: fakepve's own template 9001 (not a BlockHost
    /// one) is removed, its `local` storage takes `import` content and holds the
    /// stand-in image already (fakepve 0.5.0 refuses `content=import` uploads;
    /// `bhctl template install` finds the file by its digest and skips the upload).
    pub fn with_template(&mut self, pve: &mut FakePve) {
        use sha2::Digest;
        self.template = true;
        let sum = hex::encode(sha2::Sha256::digest(self.template_bytes()));
        pve.cmd(json!({"op": "remove_vm", "vmid": 9001}));
        pve.cmd(json!({"op": "storage_content", "storage": "local", "content": "iso,vztmpl,backup,import"}));
        pve.cmd(json!({"op": "store_file", "storage": "local", "name": format!("blockhost-guest-{}.qcow2", &sum[..12]), "size": 64, "content": "import"}));
    }

    /// The bytes the build stand-in writes.
    pub fn template_bytes(&self) -> Vec<u8> {
        TEMPLATE_IMAGE.as_bytes().to_vec()
    }

    /// The wizard's settings as command-line flags.
    pub fn args(&self) -> Vec<String> {
        let p = |r: &str| self.path(r).display().to_string();
        let mut args = vec![
            format!("--listen={}", self.listen),
            format!("--state-dir={}", p("state")),
            format!("--etc-dir={}", p("etc")),
            format!("--issue-dir={}", p("issue.d")),
            format!("--done-marker={}", p("setup-complete")),
            format!("--daemon-start={}", p("start-blockhostd.sh")),
            "--disable-self=".into(),
            "--console-refresh=".into(),
            format!("--local-pve-cert={}", p("no-local-pve.pem")),
            "--host-name=testhost".into(),
            format!("--daemon-store={}", p("state.redb")),
            format!("--daemon-socket={}", p("api.sock")),
            "--socket-group=".into(),
            "--key-owner=".into(),
            "--tx-timeout-secs=60".into(),
            "--health-timeout-secs=30".into(),
            format!("--root-agent-socket={}", p("root-agent.sock")),
            format!("--template-image={}", p("images/guest.qcow2")),
        ];
        if self.firewall {
            args.push(format!("--root-agent-start={}", p("start-root-agent.sh")));
        } else {
            args.push("--root-agent-start=".into());
        }
        if self.template {
            args.push(format!("--template-build={}", p("build-template.sh")));
            args.push(format!(
                "--template-install={}",
                self.template_install.clone().unwrap_or_else(|| format!(
                    "{} template install",
                    Path::new(env!("CARGO_BIN_EXE_blockhost-wizard"))
                        .with_file_name("bhctl")
                        .display()
                ))
            ));
        } else {
            args.push("--template-build=".into());
            args.push("--template-install=".into());
        }
        args
    }

    /// The current one-time code (the test reads it as the operator reads the console).
    pub fn code(&self) -> String {
        let v: Value =
            serde_json::from_slice(&std::fs::read(self.state().join("code.json")).unwrap())
                .unwrap();
        v["code"].as_str().unwrap().to_owned()
    }

    /// Runs `blockhost-wizard new-code`; returns its stdout.
    pub fn new_code(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_blockhost-wizard"))
            .args(self.args())
            .arg("new-code")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The blockhostd and root agent the start scripts launched.
        for f in ["blockhostd.pid", "root-agent.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.path(f)) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
    }
}

/// A running wizard, killed when dropped.
pub struct Wizard {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Wizard {
    pub fn start(env: &Env) -> Wizard {
        let log = env.path("wizard.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_blockhost-wizard"))
            .args(env.args())
            .env("RUST_LOG", "info,blockhost_wizard=debug")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut w = Wizard {
            child,
            base: format!("https://{}", env.listen),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&env.listen).is_err() {
            if let Ok(Some(st)) = w.child.try_wait() {
                panic!("the wizard exited ({st}); log:\n{}", w.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the wizard did not listen; log:\n{}",
                w.log_text()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
        w
    }

    /// Asserts that the wizard, started again, exits at once with success (a set-up host).
    pub fn assert_does_not_serve(env: &Env) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blockhost-wizard"))
            .args(env.args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "{st}");
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the wizard serves on a set-up host");
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own (after finalization).
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the wizard did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Wizard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A browser-like client: trusts the wizard's own certificate, keeps the cookie
/// and the CSRF token, and records every response body (for the secret grep).
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
    pub csrf: String,
    pub bodies: Vec<String>,
}

impl Client {
    pub fn new(env: &Env, base: &str) -> Client {
        let pem = std::fs::read(env.state().join("tls/cert.pem")).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Client {
            http,
            base: base.to_owned(),
            cookie: None,
            csrf: String::new(),
            bodies: vec![],
        }
    }

    pub async fn raw(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        csrf: bool,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        if csrf {
            req = req.header("x-csrf-token", &self.csrf);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        self.bodies.push(text.clone());
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET /api/state, keeping a new cookie and the CSRF token.
    pub async fn state(&mut self) -> Value {
        let (status, headers, v) = self
            .raw(reqwest::Method::GET, "/api/state", None, false)
            .await;
        assert_eq!(status, 200, "{v}");
        if let Some(c) = headers.get("set-cookie") {
            let c = c.to_str().unwrap();
            self.cookie = Some(c.split(';').next().unwrap().to_owned());
        }
        self.csrf = v["csrf"].as_str().unwrap().to_owned();
        v
    }

    pub async fn post(&mut self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, v) = self
            .raw(reqwest::Method::POST, path, Some(body), true)
            .await;
        (s, v)
    }

    pub async fn get(&mut self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.raw(reqwest::Method::GET, path, None, false).await;
        (s, v)
    }

    /// The code, then the admin's SIWE sign-in and access signature with `key`.
    pub async fn sign_in(&mut self, env: &Env, key: &str) {
        self.state().await;
        let (s, v) = self.post("/api/code", json!({"code": env.code()})).await;
        assert_eq!(s, 200, "{v}");
        let k = signing_key(key);
        let address = blockhost_crd::eip191::address_of(k.verifying_key());
        let (s, v) = self
            .post(
                "/api/login/challenge",
                json!({"address": address.to_checksum(), "chainId": 31337}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let sig =
            blockhost_crd::eip191::sign(&k, v["message"].as_str().unwrap().as_bytes()).unwrap();
        let (s, v) = self
            .post("/api/login/verify", json!({"signature": sig.to_hex()}))
            .await;
        assert_eq!(s, 200, "{v}");
        let sig = blockhost_crd::eip191::sign(&k, b"blockhost-access").unwrap();
        let (s, v) = self
            .post("/api/login/access", json!({"signature": sig.to_hex()}))
            .await;
        assert_eq!(s, 200, "{v}");
        self.state().await;
    }
}

pub fn signing_key(hex_key: &str) -> k256::ecdsa::SigningKey {
    k256::ecdsa::SigningKey::from_slice(&hex::decode(hex_key).unwrap()).unwrap()
}

/// Answers for the whole form against `pve` and `anvil`.
pub fn answers(pve: &FakePve, anvil: &Anvil) -> (Value, Value, Value) {
    let proxmox = json!({
        "url": pve.url, "fingerprint": pve.fingerprint, "adminUser": "root@pam",
        "nodes": ["pve1"], "storage": "local-lvm", "bridge": "vmbr0",
        "vmidFirst": 200, "vmidLast": 299, "templateVmid": 9001,
        "ipv4Cidr": "10.21.0.0/24", "ipv4Gateway": "10.21.0.1", "ipv6Mode": "none",
        "ipv6Prefix": "", "ipv6Gateway": "", "nameservers": ["10.21.0.1"], "graceDays": 7
    });
    let chain = json!({
        "chainId": 31337, "rpcUrls": [anvil.url], "contracts": "deploy",
        "subscriptionsContract": "", "nftContract": "", "deploymentBlock": 0,
        "stablecoinMode": "dev", "stablecoin": "", "confirmations": 0,
        "plans": [
            {"name": "basic", "pricePerDayCents": 150, "cores": 1, "memoryMib": 1024, "diskGib": 10},
            {"name": "large", "pricePerDayCents": 500, "cores": 2, "memoryMib": 2048, "diskGib": 20}
        ]
    });
    let admin = json!({"enabled": true, "ports": [22, 8006], "defaultDurationSecs": 300});
    (proxmox, chain, admin)
}

/// Polls the finalization until `pred` holds on its state.
pub async fn wait_finalize(
    c: &mut Client,
    within: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (s, v) = c.get("/api/finalize").await;
        if s == 200 && pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "finalization did not get there: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The steps' answers, checked (the Proxmox password is fakepve's root password);
/// funds the server wallet once the chain step has shown it. Returns the server address.
pub async fn answer_everything(c: &mut Client, pve: &FakePve, anvil: &Anvil) -> String {
    let (proxmox, chain, admin) = answers(pve, anvil);
    let (s, v) = c
        .post(
            "/api/steps/proxmox",
            json!({"answers": proxmox, "check": true, "password": "secret"}),
        )
        .await;
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    let (s, v) = c
        .post("/api/steps/chain", json!({"answers": chain, "check": true}))
        .await;
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    let server = v["report"]["found"]["serverAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    anvil.fund(ADMIN, &server, 10u128 * 10u128.pow(18)).await;
    let (s, v) = c
        .post(
            "/api/steps/admin",
            json!({"answers": admin, "check": true, "command": ADMIN_COMMAND}),
        )
        .await;
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    server
}

/// The host is running: blockhostd (started from the written configuration)
/// answers, mirrors the wizard's plans with their resources, and serves a
/// purchase: the VM is cloned in fakepve with the BlockHost token and runs.
pub async fn purchase_is_served(env: &Env, anvil: &Anvil, pve: &mut FakePve, outputs: &Value) {
    use alloy_primitives::{Address, U256};
    use alloy_sol_types::SolCall;
    use blockhost_chain::bindings::{BlockhostSubscriptions, MockERC20};
    let api = blockhost_api::client::Client::new(env.daemon_socket());
    let prefix = blockhost_api::API_PREFIX;
    // Plans, as bhctl shows them.
    let out = Command::new(sibling_bin("bhctl"))
        .args(["get", "plans", "-o", "json"])
        .env("BLOCKHOST_SOCKET", env.daemon_socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plans: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = plans.to_string();
    assert!(text.contains("basic") && text.contains("large"), "{plans}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p: Value = api
            .get_json(&format!("{prefix}/plans/plan-2"))
            .await
            .unwrap_or(Value::Null);
        if p["spec"]["resources"]["cores"] == 2 && p["spec"]["displayName"] == "large" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "plan-2 has not the wizard's resources: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A buyer pays with the test stablecoin.
    let subs = outputs["subscriptions"].as_str().unwrap().to_owned();
    let token = outputs["stablecoin"].as_str().unwrap().to_owned();
    let buyer: Address = BUYER.parse().unwrap();
    let send = |to: String, data: Vec<u8>| async move {
        let hash = anvil
            .rpc(
                "eth_sendTransaction",
                json!([{"from": BUYER, "to": to, "data": hex0x(&data), "gas": "0x989680"}]),
            )
            .await;
        for _ in 0..600 {
            let r = anvil.rpc("eth_getTransactionReceipt", json!([hash])).await;
            if !r.is_null() {
                assert_eq!(r["status"], "0x1", "{r}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no receipt for {hash}");
    };
    send(
        token.clone(),
        MockERC20::mintCall {
            to: buyer,
            amount: U256::from(1_000_000_000u64),
        }
        .abi_encode(),
    )
    .await;
    send(
        token.clone(),
        MockERC20::approveCall {
            spender: subs.parse().unwrap(),
            value: U256::MAX,
        }
        .abi_encode(),
    )
    .await;
    let key_hex = std::fs::read_to_string(env.etc().join("server.key")).unwrap();
    let server_key = k256::SecretKey::from_slice(&hex::decode(key_hex.trim()).unwrap()).unwrap();
    let sig = blockhost_crd::eip191::sign(&signing_key(BUYER_KEY), b"blockhost-access").unwrap();
    let payload =
        blockhost_chain::user_encrypted::encrypt_signature(&server_key.public_key(), &sig).unwrap();
    send(
        subs.clone(),
        BlockhostSubscriptions::buySubscriptionCall {
            planId: U256::from(1u64),
            days_: U256::from(30u64),
            paymentMethodId: U256::from(1u64),
            userEncrypted: payload.into(),
        }
        .abi_encode(),
    )
    .await;
    pve.cmd(json!({"op": "auto_agent"}));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let vm: Value = api
            .get_json(&format!("{prefix}/virtualmachines/blockhost-001"))
            .await
            .unwrap_or(Value::Null);
        if vm["status"]["phase"] == "Running" && vm["status"]["nftTokenId"].is_number() {
            assert_eq!(vm["status"]["nftTokenId"], 1, "NFT #0 is the admin's: {vm}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the purchase was not served: {vm}\n--- blockhostd ---\n{}",
            std::fs::read_to_string(env.path("blockhostd.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The VM was made through fakepve with blockhostd's own token.
    let vms = pve.cmd(json!({"op": "vms"}));
    assert_eq!(vms.as_array().unwrap().len(), 1, "{vms}");
    let bad: Vec<Value> = pve
        .cmd(json!({"op": "error_answers"}))
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a[2] == json!(403) || a[2] == json!(400))
        .cloned()
        .collect();
    assert!(bad.is_empty(), "Proxmox refused requests: {bad:#?}");
}

/// What fakepve's access model holds: exactly one privilege-separated token with
/// the BlockHost role on the paths it needs, and nothing of root's.
pub fn token_is_least_privilege(pve: &mut FakePve) {
    let a = pve.cmd(json!({"op": "access"}));
    let tokens = a["tokens"].as_object().unwrap();
    assert_eq!(tokens.len(), 1, "{a}");
    assert_eq!(a["tokens"]["blockhost@pve!blockhostd"]["privsep"], 1, "{a}");
    let role: Vec<&str> = a["roles"]["BlockHost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        role,
        blockhost_wizard::finalize::steps::BLOCKHOST_PRIVILEGES,
        "{a}"
    );
    let creations = a["writes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w[0] == "POST" && w[1].as_str().unwrap().ends_with("/token/blockhostd"))
        .count();
    assert_eq!(creations, 1, "one token was ever created: {a}");
    let acl = a["acl"].as_array().unwrap();
    for path in [
        "/vms",
        "/nodes/pve1",
        "/storage/local-lvm",
        "/sdn/zones/localnetwork/vmbr0",
    ] {
        assert!(
            acl.iter().any(|e| e[0] == path
                && e[1] == "BlockHost"
                && e[2] == "token"
                && e[3] == "blockhost@pve!blockhostd"),
            "no BlockHost ACL on {path}: {a}"
        );
    }
    // On `/` only the read-only audit role (the datacenter firewall's options).
    assert_eq!(a["roles"]["BlockHostAudit"], json!(["Sys.Audit"]), "{a}");
    assert!(
        acl.iter()
            .all(|e| (e[1] == "BlockHost" && e[0] != "/")
                || (e[1] == "BlockHostAudit" && e[0] == "/")),
        "the BlockHost role, never on /; on / only BlockHostAudit: {a}"
    );
    assert!(
        acl.iter()
            .any(|e| e[0] == "/" && e[1] == "BlockHostAudit" && e[3] == "blockhost@pve!blockhostd"),
        "no BlockHostAudit ACL on / for the token: {a}"
    );
}

/// The server key's hex appears in none of `texts` nor any file under `dirs`
/// (its own key file apart), nor the admin command name (blockhost.yaml apart).
pub fn server_key_is_nowhere(env: &Env, texts: &[String], dirs: &[PathBuf]) {
    let key = std::fs::read_to_string(env.etc().join("server.key"))
        .unwrap()
        .trim()
        .to_lowercase();
    assert_eq!(key.len(), 64);
    for (i, t) in texts.iter().enumerate() {
        assert!(
            !t.to_lowercase().contains(&key),
            "response {i} holds the server key"
        );
    }
    // The admin command name is a secret too: in blockhost.yaml only.
    for (i, t) in texts.iter().enumerate() {
        assert!(
            !t.contains(ADMIN_COMMAND),
            "response or log {i} holds the admin command name"
        );
    }
    for d in dirs {
        for f in files_under(d) {
            if f == env.etc().join("blockhost.yaml") || f.extension().is_some_and(|e| e == "redb") {
                continue;
            }
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
            assert!(
                !text.contains(ADMIN_COMMAND),
                "{} holds the admin command name",
                f.display()
            );
        }
    }
    let mut checked = 0;
    for d in dirs {
        for f in files_under(d) {
            if f == env.etc().join("server.key") || f.extension().is_some_and(|e| e == "redb") {
                continue;
            }
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes)
                    .to_lowercase()
                    .contains(&key),
                "{} holds the server key",
                f.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 3, "the grep found files to read");
}

/// fakepve holds the template `bhctl template install` made from the stand-in
/// image (tagged, with its digest), and the setup token it used is gone.
pub fn template_is_installed(pve: &mut FakePve, outputs: &Value) {
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(TEMPLATE_IMAGE.as_bytes()));
    let vm = pve.cmd(json!({"op": "vm", "vmid": 9001}));
    let conf = &vm["config"];
    assert_eq!(conf["template"], json!(1), "{vm:#}");
    assert!(
        conf["tags"]
            .as_str()
            .unwrap_or_default()
            .contains("blockhost"),
        "{vm:#}"
    );
    assert!(
        conf["description"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("blockhost-image-sha256={sum}")),
        "{vm:#}"
    );
    assert!(
        outputs["template"].as_str().unwrap().contains("9001"),
        "{outputs}"
    );
    let a = pve.cmd(json!({"op": "access"}));
    assert!(
        a["tokens"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.contains("blockhost-setup")),
        "the template install's token was deleted: {a}"
    );
}

/// blockhostd installed the host firewall through the root agent the wizard
/// started (in the agent's own network namespace), and it is in force.
pub async fn firewall_is_installed(env: &Env) {
    if !env.firewall {
        return;
    }
    let api = blockhost_api::client::Client::new(env.daemon_socket());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r: Value = api.get_json("/firewall").await.unwrap_or(Value::Null);
        if r["inForce"] == json!(true) {
            let rules = r["ruleset"].as_str().unwrap();
            assert!(
                rules.contains("policy drop")
                    && rules.lines().any(|l| l.contains("tcp dport")
                        && l.contains("22")
                        && l.contains("@knock4")),
                "default-deny, SSH behind a knock: {r}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the firewall is not in force: {r}\n--- root agent ---\n{}",
            std::fs::read_to_string(env.path("root-agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let toml = std::fs::read_to_string(env.etc().join("root-agent.toml")).unwrap();
    assert!(toml.contains("allowedUids = [0]"), "{toml}");
}
