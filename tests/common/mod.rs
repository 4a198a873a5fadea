//! Test harness: starts the real `cadre` binary on free ports in a temporary data directory,
//! talks to its API, runs its CLI, and kills or stops it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cluster;
pub mod netns;
pub mod tmpfs;

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

pub fn free_port() -> u16 {
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
    /// More arguments of `serve`.
    args: Vec<String>,
    /// What says it has started: `/readyz` (a worker is registered), or `/healthz` for a
    /// scheduler without a worker of its own.
    ready: &'static str,
}

impl Server {
    /// Starts a node in `dir/data` with extra environment `env` and waits until it is ready.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_bin(Path::new(BIN), dir, env)
    }

    /// Starts `bin serve` (a node binary with extensions).
    pub fn start_bin(bin: &Path, dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_bin_in(bin, dir, &dir.join("data"), env, Vec::new(), "/readyz")
    }

    /// Starts a node with its data directory at `data_dir` (its log stays in `dir`).
    pub fn start_in(dir: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_bin_in(Path::new(BIN), dir, data_dir, env, Vec::new(), "/readyz")
    }

    /// Starts `bin serve` with `args` and waits until it answers `ready`.
    fn start_bin_in(
        bin: &Path,
        dir: &Path,
        data_dir: &Path,
        env: &[(&str, &str)],
        args: Vec<String>,
        ready: &'static str,
    ) -> Server {
        let mut server = Server {
            child: None,
            bin: bin.to_path_buf(),
            api: String::new(),
            metrics: String::new(),
            data_dir: data_dir.to_path_buf(),
            log: dir.join("server.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            api_port: free_port(),
            metrics_port: free_port(),
            args,
            ready,
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
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        self.wait_ready();
    }

    /// The `serve` command line of this node (its ports, data directory and environment),
    /// without its output redirected.
    pub fn command(&self) -> Command {
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
            // Pruning for disk space would make what a test keeps depend on how full the CI
            // machine's disk is (a test that wants it sets its own).
            .env("CADRE_RETENTION_MAX_DISK_USED_PERCENT", "100");
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts a scheduler with no worker of its own that accepts agents on `cluster_port`
    /// (plain TCP), and waits until it answers `/healthz`.
    pub fn start_scheduler(dir: &Path, cluster_port: u16, env: &[(&str, &str)]) -> Server {
        Server::start_scheduler_with(dir, cluster_port, env, &["--insecure-cluster"])
    }

    /// As [`Server::start_scheduler`], with `args` (TLS files, or `--insecure-cluster`).
    pub fn start_scheduler_with(
        dir: &Path,
        cluster_port: u16,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        Server::start_scheduler_on(dir, &format!("127.0.0.1:{cluster_port}"), env, args)
    }

    /// As [`Server::start_scheduler_with`], accepting agents on `cluster_addr`.
    pub fn start_scheduler_on(
        dir: &Path,
        cluster_addr: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let args = [
            "--cluster-addr",
            cluster_addr,
            "--no-local-worker",
            "--name",
            "sched",
        ]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
        Server::start_bin_in(
            Path::new(BIN),
            dir,
            &dir.join("data"),
            env,
            args,
            "/healthz",
        )
    }

    /// Starts the (stopped) node once more, expecting it to refuse to start: waits at most
    /// `within` for it to exit (failing when it is still running then) and returns its status
    /// and output (also written to `output`).
    pub fn start_refused(
        &self,
        output: &Path,
        within: Duration,
    ) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none(), "the node is still running");
        run_within(&mut self.command(), output, within)
    }

    /// A job's view, or the status and error body when the API does not have it (404 for a
    /// job unknown or pruned by retention).
    pub fn job_or_error(&self, id: u64) -> (u16, Value) {
        self.get(&format!("/v1/jobs/{id}"))
    }

    /// Whether no job is lost, queued, leased or running (everything accepted has ended).
    /// The states are asked in the order a job moves through them, so none slips between two
    /// questions.
    pub fn drained(&self) -> bool {
        ["lost", "queued", "leased", "running"].iter().all(|state| {
            let (status, body) = self.get(&format!("/v1/jobs?state={state}&limit=1"));
            assert_eq!(status, 200, "{body}");
            body["jobs"].as_array().unwrap().is_empty()
        })
    }

    /// Waits until the node has drained ([`Server::drained`] twice in a row), failing with the
    /// log after `within`.
    pub fn wait_drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !(self.drained() && self.drained()) {
            assert!(
                Instant::now() < deadline,
                "jobs still queued or running after {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ids of the jobs in `state` (at most 1000).
    pub fn ids_in(&self, state: &str) -> Vec<u64> {
        let (status, body) = self.get(&format!("/v1/jobs?state={state}&limit=1000"));
        assert_eq!(status, 200, "{body}");
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .collect()
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
            if let Ok((200, _)) = self.try_get(self.ready) {
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

    /// SIGTERM, and waits (up to a minute) for the node to drain and exit 0.
    pub fn stop(&mut self) {
        let child = self.child.take().unwrap();
        stop_child(child, "node", Duration::from_secs(60), || self.log_text());
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
        // A node killed outright leaves its cgroup parent (a clean stop removes it).
        remove_node_cgroups(&self.log_text());
    }
}

/// SIGTERM to `child`, then waits up to `within` for it to exit 0 (`what` and its `log` in
/// the failure).
pub fn stop_child(mut child: Child, what: &str, within: Duration, log: impl Fn() -> String) {
    signal(child.id(), "TERM");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{what} exited with {status}; log:\n{}",
                log()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not stop within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of the samples of metric `name` in Prometheus text whose labels hold all of
/// `labels` (`key="value"` strings).
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The ids a submission answered.
pub fn ids(body: &Value) -> Vec<u64> {
    body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {body}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
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

/// A reply read off a raw connection ([`read_reply`]): the status, the headers (names in
/// lowercase) and the body as JSON (or as a string when it is not JSON).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl RawReply {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    /// The API's `host:port`, for raw connections.
    pub fn api_addr(&self) -> &str {
        self.api.trim_start_matches("http://")
    }

    /// Opens a connection to the API and writes `method path` with `Content-Length: declared`
    /// (when given), then only `body`: a client that declares more than it sends stalls the
    /// node's read of the rest. Read the answer with [`read_reply`].
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        declared: Option<usize>,
        body: &[u8],
    ) -> std::net::TcpStream {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(self.api_addr()).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n",
            self.api_addr()
        );
        if let Some(n) = declared {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        stream.flush().unwrap();
        stream
    }

    /// Sends a whole request with any method (and `body`, when given) and reads the reply.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> RawReply {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut stream = self.raw(method, path, Some(bytes.len()), &bytes);
        read_reply_to(&mut stream, method)
    }

    /// Waits (at most `within`) for the process to exit, and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {within:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Reads one HTTP/1.1 reply off `stream` (each read waits at most 30 s): the head, then a body
/// of `Content-Length` bytes, a chunked body, or what comes until the node closes.
pub fn read_reply(stream: &mut std::net::TcpStream) -> RawReply {
    read_reply_to(stream, "GET")
}

/// [`read_reply`] to a request of `method`: a reply to `HEAD` has no body, whatever its
/// `Content-Length` says.
pub fn read_reply_to(stream: &mut std::net::TcpStream, method: &str) -> RawReply {
    use std::io::{BufRead, BufReader, Read};
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if method == "HEAD" {
        // No body follows.
    } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body).unwrap();
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    RawReply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// Waits until `path` holds a pid and its newline (`echo $$ > path`), and returns the pid.
pub fn wait_pid_file(path: &Path, within: Duration) -> u32 {
    wait_for(&format!("pid file {}", path.display()), within, || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    });
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether this machine lets jobs run in cgroups (root with a writable cgroup tree). Where it
/// does not, prints `SKIP: <test>: <reason>` and returns false, or fails where
/// `CADRE_REQUIRE_CGROUPS=1`.
pub fn cgroups_or_skip(test: &str) -> bool {
    let tree = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup")
    } else {
        Path::new("/sys/fs/cgroup/memory")
    };
    let probe = tree.join(format!("cadre-probe-{}-{test}", std::process::id()));
    let reason = match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            return true;
        }
        Err(e) => format!("{} is not writable: {e}", tree.display()),
    };
    if std::env::var("CADRE_REQUIRE_CGROUPS").as_deref() == Ok("1") {
        panic!("cgroups required (CADRE_REQUIRE_CGROUPS=1) but unavailable: {reason}");
    }
    println!("SKIP: {test}: {reason}");
    false
}

/// The cgroup parent a node named in its log: `parent=cadre-...` in the text log,
/// `"parent":"cadre-..."` in the JSON one.
fn node_cgroup_parent(log: &str) -> Option<&str> {
    let named = |key: &str| {
        log.split(key)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
            .filter(|p| p.starts_with("cadre-"))
    };
    named("parent=").or_else(|| named("\"parent\":\""))
}

/// Where the cgroup parent a node named in its log is, in each hierarchy of this process (v1:
/// one per controller; v2: one); empty when the log names none.
pub fn node_cgroup_dirs(log: &str) -> Vec<std::path::PathBuf> {
    let Some(parent) = node_cgroup_parent(log) else {
        return Vec::new();
    };
    // This process's own group per hierarchy (`id:controllers:/path`), where the node made it.
    let mut dirs = Vec::new();
    for line in std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
    {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(own)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = if controllers.is_empty() {
            "/sys/fs/cgroup".to_owned()
        } else {
            format!("/sys/fs/cgroup/{}", controllers.trim_start_matches("name="))
        };
        dirs.push(
            Path::new(&mount)
                .join(own.trim_start_matches('/'))
                .join(parent),
        );
    }
    dirs
}

/// Removes, best effort, the cgroup parent a stopped node named in its log and every group
/// in it, killing what still runs there: a node killed outright leaves them behind, and a parent
/// with groups inside cannot be removed alone (every test run once left a few dozen).
pub fn remove_node_cgroups(log: &str) {
    // A parent that is not there any more (a clean stop removed it) is not made again.
    if !node_cgroup_dirs(log).iter().any(|d| d.exists()) {
        return;
    }
    let Some(parent) = node_cgroup_parent(log).map(str::to_owned) else {
        return;
    };
    // The node's own sweep and removal, as its next start on the same data directory would run
    // them: the groups a killed node left (its jobs', its spares) are killed and removed, then
    // the parent. On a thread of its own: this runs in `Drop`, perhaps inside a runtime.
    // Best effort, in `Drop`: what fails is printed (test.sh then fails the run on a group left
    // behind where cgroups are required).
    let cleanup = std::thread::spawn(move || {
        let cgroups = match cadre_cpu::cgroup::Cgroups::open(&parent) {
            Ok(cgroups) => cgroups,
            Err(e) => return eprintln!("cgroup parent {parent}: not opened to remove: {e}"),
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => return eprintln!("cgroup parent {parent}: no runtime to remove it: {e}"),
        };
        runtime.block_on(async {
            if let Err(e) = cgroups.sweep().await {
                eprintln!("cgroup parent {parent}: sweep failed: {e}");
            }
            if let Err(e) = cgroups.remove().await {
                eprintln!("cgroup parent {parent}: not removed: {e}");
            }
        });
    });
    if cleanup.join().is_err() {
        eprintln!("the cgroup cleanup thread panicked");
    }
}

/// `env`'s output as a map.
pub fn env_map(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs `cmd` to its end with its output in `log`, killing it and failing when it is still
/// running after `within`; returns its status and output.
pub fn run_within(
    cmd: &mut Command,
    log: &Path,
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let file = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, std::fs::read_to_string(log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {within:?}; output:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the client threads of a load test (sets `stop`), waits for each, and returns what they
/// recorded as accepted by the node.
pub fn stop_clients<T: Clone>(
    stop: &std::sync::atomic::AtomicBool,
    clients: Vec<std::thread::JoinHandle<()>>,
    accepted: &std::sync::Mutex<T>,
) -> T {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    accepted.lock().unwrap().clone()
}
