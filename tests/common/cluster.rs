//! Agents for the cluster tests: the real `cadre agent` binary joining a scheduler started by
//! [`super::Server::start_scheduler`], on free ports, each with its own data directory and log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, remove_node_cgroups, Server, BIN};

/// A running `cadre agent`.
pub struct Agent {
    pub child: Option<Child>,
    pub name: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    join: String,
    metrics_port: u16,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// The network namespace it runs in (`ip netns exec`), if not this one.
    pub netns: Option<String>,
}

impl Agent {
    /// Starts agent `name` in `dir/<name>` joining `join` over plain TCP; does not wait for it
    /// to connect.
    pub fn start(dir: &Path, name: &str, join: &str, env: &[(&str, &str)]) -> Agent {
        Agent::start_with(dir, name, join, env, &["--insecure-cluster"])
    }

    /// As [`Agent::start`], with `args` (TLS files, or `--insecure-cluster`).
    pub fn start_with(
        dir: &Path,
        name: &str,
        join: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Agent {
        Agent::launch(dir, name, join, env, args, None)
    }

    /// As [`Agent::start`] (plain TCP), inside network namespace `ns`.
    pub fn start_in_netns(
        dir: &Path,
        name: &str,
        join: &str,
        env: &[(&str, &str)],
        ns: &str,
    ) -> Agent {
        Agent::launch(dir, name, join, env, &["--insecure-cluster"], Some(ns))
    }

    fn launch(
        dir: &Path,
        name: &str,
        join: &str,
        env: &[(&str, &str)],
        args: &[&str],
        netns: Option<&str>,
    ) -> Agent {
        let mut agent = Agent {
            child: None,
            name: name.to_owned(),
            data_dir: dir.join(name),
            log: dir.join(format!("{name}.log")),
            join: join.to_owned(),
            metrics_port: free_port(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            netns: netns.map(str::to_owned),
        };
        agent.spawn();
        agent
    }

    /// Starts the process again, on the same data directory and ports.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, BIN]);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.arg("agent")
            .arg("--join")
            .arg(&self.join)
            .args(&self.args)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
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
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> String {
        ureq::get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and waits (up to 30 s) for a clean exit.
    pub fn stop(&mut self) {
        let child = self.child.take().unwrap();
        super::stop_child(child, "agent", Duration::from_secs(30), || self.log_text());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // An agent killed outright leaves its cgroup parent (a clean stop removes it).
        remove_node_cgroups(&self.log_text());
    }
}

/// Makes a cluster CA in `dir` and certificates for `nodes` (each naming itself and
/// 127.0.0.1) with the real `cadre certs`; returns the TLS flags of node `n` as a function.
pub fn certs(dir: &Path, nodes: &[&str]) {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "cadre {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = dir.to_str().unwrap();
    run(&["certs", "ca", "--dir", d]);
    for node in nodes {
        run(&["certs", "node", node, "--dir", d, "--san", "127.0.0.1"]);
    }
}

/// The TLS flags of `node`, whose certificate is in `dir` with the CA of `ca_dir`.
pub fn tls_args(ca_dir: &Path, dir: &Path, node: &str) -> Vec<String> {
    vec![
        "--tls-ca".to_owned(),
        ca_dir.join("ca.crt").display().to_string(),
        "--tls-cert".to_owned(),
        dir.join(format!("{node}.crt")).display().to_string(),
        "--tls-key".to_owned(),
        dir.join(format!("{node}.key")).display().to_string(),
    ]
}

/// The `node/name` of every worker the scheduler has registered.
pub fn workers(sched: &Server) -> Vec<String> {
    let (status, body) = sched.get("/v1/nodes");
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = body["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            format!(
                "{}/{}",
                w["node"].as_str().unwrap(),
                w["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

/// Waits until the scheduler has exactly `names` (`node/name`, sorted) registered.
pub fn wait_workers(sched: &Server, names: &[&str], within: Duration) {
    let want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    super::wait_for(&format!("workers {want:?}"), within, || {
        workers(sched) == want
    });
}
