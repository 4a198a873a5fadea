//! Test harness: starts the real `cadre` binary on free ports in a temporary data directory,
//! talks to its API, runs its CLI, and kills or stops it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cadre");

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cadre-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An example node binary (built by `cargo test`, which builds examples).
pub fn example(name: &str) -> PathBuf {
    let path = Path::new(BIN).parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --examples` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running `cadre serve`.
pub struct Server {
    pub child: Option<Child>,
    bin: PathBuf,
    pub api: String,
    pub metrics: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    api_port: u16,
    metrics_port: u16,
}

impl Server {
    /// Starts a node in `dir/data` with extra environment `env` and waits until it is ready.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_bin(Path::new(BIN), dir, env)
    }

    /// Starts `bin serve` (a node binary with extensions).
    pub fn start_bin(bin: &Path, dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut server = Server {
            child: None,
            bin: bin.to_path_buf(),
            api: String::new(),
            metrics: String::new(),
            data_dir: dir.join("data"),
            log: dir.join("server.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            api_port: free_port(),
            metrics_port: free_port(),
        };
        server.api = format!("http://127.0.0.1:{}", server.api_port);
        server.metrics = format!("http://127.0.0.1:{}/metrics", server.metrics_port);
        server.spawn();
        server
    }

    /// Starts the process again on the same ports and data directory.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .env("CADRE_LOG", "info,actix_server=warn")
            .env("CADRE_LEASE_TTL_MS", "2000")
            .env("CADRE_RENEW_EVERY_MS", "200")
            .env("CADRE_FENCE_MARGIN_MS", "600")
            .env("CADRE_KILL_GRACE_MS", "2000")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        self.wait_ready();
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "node exited with {status} before it was ready; log:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = self.try_get("/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node not ready in 30 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    }

    pub fn try_get(&self, path: &str) -> Result<(u16, Value), ureq::Error> {
        let mut r = Self::agent().get(format!("{}{path}", self.api)).call()?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path).unwrap()
    }

    pub fn get_text(&self, path: &str) -> String {
        let mut r = Self::agent()
            .get(format!("{}{path}", self.api))
            .call()
            .unwrap();
        r.body_mut().read_to_string().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut r = Self::agent()
            .post(format!("{}{path}", self.api))
            .send_json(body)
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn metrics_text(&self) -> String {
        let mut r = Self::agent().get(&self.metrics).call().unwrap();
        r.body_mut().read_to_string().unwrap()
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--api")
            .arg(&self.api)
            .args(args)
            .output()
            .unwrap()
    }

    /// `cadre submit ... -- argv`, returning the id.
    pub fn submit(&self, flags: &[&str], argv: &[&str]) -> u64 {
        let mut args = vec!["submit"];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(argv);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    pub fn job(&self, id: u64) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}"));
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn state(&self, id: u64) -> String {
        self.job(id)["state"].as_str().unwrap().to_owned()
    }

    /// Waits until job `id` is in `state` (or fails with its last view and the log).
    pub fn wait_state(&self, id: u64, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(id);
            if job["state"] == state {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {state} within {within:?}: {job}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kill -SIG pid` through the shell's kill, to stay free of libc in tests.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
