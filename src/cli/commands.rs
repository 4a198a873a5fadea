//! The one-shot commands (`cadre status`, `list`, `cancel`, `logs`, `failures`, `nodes`): one or
//! two API calls each, printed as text or as the API's JSON, and the text helpers they print with.

use std::io::{Read, Write};

use serde_json::Value;

use super::{CliError, Client};

impl Client {
    /// `cadre status ID`.
    pub fn status(&self, id: u64) -> Result<(), CliError> {
        let reply = self.get(&format!("/v1/jobs/{id}"))?;
        if !self.print_json(&reply) {
            let b = &reply.body;
            println!("job       {}", b["id"]);
            println!("name      {}", b["name"].as_str().unwrap_or(""));
            println!("state     {}", b["state"].as_str().unwrap_or(""));
            println!("attempt   {}", b["attempt"]);
            println!("resources {}", resources_text(&b["spec"]["resources"]));
            let (requeues, failures) = (
                b["requeues"].as_u64().unwrap_or(0),
                b["failures"].as_u64().unwrap_or(0),
            );
            if requeues > 0 || failures > 0 {
                println!("retried   {requeues} lost, {failures} failed");
            }
            if let Some(w) = b.get("waiting") {
                match (
                    w.get("kind").and_then(Value::as_str),
                    w.get("reason").and_then(Value::as_str),
                ) {
                    (Some("retry"), _) => println!(
                        "waiting   retry after failure {}, not before {} ms since the epoch",
                        w["failures"], w["not_before_ms"]
                    ),
                    (_, Some(reason)) => println!("waiting   unplaceable: {reason}"),
                    _ => println!("waiting   queued, {} ahead", w["position"]),
                }
            }
            if let Some(o) = b.get("outcome") {
                if let Some(code) = o.get("exit_code").filter(|c| !c.is_null()) {
                    println!("exit code {code}");
                }
                if let Some(signal) = o.get("signal").filter(|c| !c.is_null()) {
                    println!("signal    {signal}");
                }
                if let Some(error) = o.get("error").and_then(Value::as_str) {
                    println!("error     {error}");
                }
                if let Some(note) = logs_note(o) {
                    println!("output    {note}");
                }
            }
            if let Some(loss) = b.get("last_loss").and_then(Value::as_str) {
                println!("last loss {loss}");
            }
        }
        Ok(())
    }

    /// `cadre list`.
    pub fn list(
        &self,
        state: Option<&str>,
        limit: usize,
        after: Option<u64>,
    ) -> Result<(), CliError> {
        let mut path = format!("/v1/jobs?limit={limit}");
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        let reply = self.get(&path)?;
        if !self.print_json(&reply) {
            println!("{}", list_header());
            for j in reply.body["jobs"].as_array().map_or(&[][..], Vec::as_slice) {
                println!("{}", list_row(j));
            }
            if let Some(next) = reply.body.get("next").filter(|n| !n.is_null()) {
                println!("more: --after {next}");
            }
        }
        Ok(())
    }

    /// `cadre cancel ID`.
    pub fn cancel(&self, id: u64) -> Result<(), CliError> {
        let reply = self.post(&format!("/v1/jobs/{id}/cancel"), &Value::Null)?;
        if !self.print_json(&reply) {
            println!("{id} {}", reply.body["state"].as_str().unwrap_or(""));
        }
        Ok(())
    }

    /// `cadre logs [-f] ID`.
    pub fn logs(&self, id: u64, follow: bool, stderr: bool) -> Result<(), CliError> {
        let stream = if stderr { "stderr" } else { "stdout" };
        let url = self.url(&format!(
            "/v1/jobs/{id}/logs?stream={stream}&follow={follow}"
        ));
        let response = self.agent.get(url).call();
        let mut response = response.map_err(|e| {
            CliError::other(format!("cannot reach the cadre API at {}: {e}", self.base))
        })?;
        if response.status().as_u16() >= 400 {
            return self.finish(Ok(response)).map(|_| ());
        }
        let mut reader = response.body_mut().as_reader();
        let mut out = std::io::stdout().lock();
        let mut buf = [0u8; 8192];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| CliError::other(format!("reading logs: {e}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| CliError::other(format!("writing logs: {e}")))?;
            out.flush()
                .map_err(|e| CliError::other(format!("writing logs: {e}")))?;
        }
        // Say so when the output was not kept whole (over its cap, or a disk that refused it).
        if let Ok(reply) = self.get(&format!("/v1/jobs/{id}")) {
            if let Some(note) = logs_note(&reply.body["outcome"]) {
                eprintln!("cadre: {note}");
            }
        }
        Ok(())
    }

    /// `cadre failures`.
    pub fn failures(&self) -> Result<(), CliError> {
        let reply = self.get("/v1/failures")?;
        if !self.print_json(&reply) {
            let list = reply.body["failures"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            println!(
                "{} failures recorded (total {})",
                list.len(),
                reply.body["total"]
            );
            for f in list {
                println!(
                    "#{} {} kind={} restarts={} {}",
                    f["seq"],
                    f["path"].as_str().unwrap_or(""),
                    f["kind"].as_str().unwrap_or(""),
                    f["restart_count"],
                    f["message"].as_str().unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// `cadre drain NODE [--undo]`.
    pub fn drain(&self, node: &str, undo: bool) -> Result<(), CliError> {
        let path = format!("/v1/nodes/{node}/drain");
        let reply = if undo {
            self.delete(&path)?
        } else {
            self.post(&path, &Value::Null)?
        };
        if !self.print_json(&reply) {
            let workers = reply.body["workers"].as_array().map_or(0, Vec::len);
            if undo {
                println!("{node}: takes work again ({workers} worker(s))");
            } else {
                println!(
                    "{node}: draining ({workers} worker(s)): no new work, running jobs finish"
                );
            }
        }
        Ok(())
    }

    /// `cadre nodes`.
    pub fn nodes(&self) -> Result<(), CliError> {
        let reply = self.get("/v1/nodes")?;
        if !self.print_json(&reply) {
            let b = &reply.body;
            println!(
                "queued {}  running {}  jobs {}  draining {}",
                b["queued"], b["running"], b["jobs"], b["draining"]
            );
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let ago = |ms: &Value| now_ms.saturating_sub(ms.as_u64().unwrap_or(0));
            for w in b["workers"].as_array().map_or(&[][..], Vec::as_slice) {
                let gpus = w["capacity"]["gpus"].as_array().map_or(0, Vec::len);
                let unhealthy = w["free"]["unhealthy_gpus"].as_array().map_or(0, Vec::len);
                println!(
                    "worker {:>4}  {}/{}  {}  {}  dc={}  cpu={}/{}m  mem={}/{}  gpus={}/{}{}  leases={}  up {} s  renewed {} ms ago",
                    w["worker"],
                    w["node"].as_str().unwrap_or(""),
                    w["name"].as_str().unwrap_or(""),
                    w["state"].as_str().unwrap_or("alive"),
                    w["address"].as_str().unwrap_or("local"),
                    w["datacenter"].as_str().unwrap_or(""),
                    w["free"]["cpu_millis"],
                    w["capacity"]["cpu_millis"],
                    w["free"]["memory_bytes"],
                    w["capacity"]["memory_bytes"],
                    w["free"]["gpus"],
                    gpus,
                    if unhealthy > 0 {
                        format!(" ({unhealthy} unhealthy)")
                    } else {
                        String::new()
                    },
                    w["leases"],
                    ago(&w["registered_ms"]) / 1000,
                    ago(&w["renewed_ms"]),
                );
            }
            for d in b["departed"].as_array().map_or(&[][..], Vec::as_slice) {
                println!(
                    "worker {:>4}  {}/{}  dead  {}  dc={}  {} s ago: {}",
                    d["worker"],
                    d["node"].as_str().unwrap_or(""),
                    d["name"].as_str().unwrap_or(""),
                    d["address"].as_str().unwrap_or("local"),
                    d["datacenter"].as_str().unwrap_or(""),
                    ago(&d["died_ms"]) / 1000,
                    d["reason"].as_str().unwrap_or(""),
                );
            }
        }
        Ok(())
    }
}

/// What a job reserves, for `cadre status`.
pub fn resources_text(r: &Value) -> String {
    let cpu = r["cpu_millis"].as_u64().unwrap_or(0);
    let cpu = if cpu == 0 {
        "no CPU reserved (cpu_millis 0: the lowest CPU weight)".to_owned()
    } else {
        format!("{} CPU ({cpu} millicores)", cpu as f64 / 1000.0)
    };
    let memory = match r["memory_bytes"].as_u64().unwrap_or(0) {
        0 => "no memory limit".to_owned(),
        bytes => format!("{bytes} bytes of memory"),
    };
    format!(
        "{cpu}, {memory}, {} GPU(s)",
        r["gpus"].as_u64().unwrap_or(0)
    )
}

/// What became of a job's output when not all of it was kept, from its outcome.
pub fn logs_note(outcome: &Value) -> Option<String> {
    let logs = outcome.get("logs").filter(|l| !l.is_null())?;
    let mut parts = Vec::new();
    if let Some(dropped) = logs["dropped_bytes"].as_u64().filter(|&d| d > 0) {
        parts.push(format!(
            "{dropped} bytes of output dropped past the per-stream cap (its head and tail are kept)"
        ));
    }
    if let Some(error) = logs["write_error"].as_str() {
        parts.push(format!("output incomplete: {error}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The header of `cadre list`.
pub fn list_header() -> String {
    format!("{:>8}  {:<10}  {:>7}  NAME", "ID", "STATE", "ATTEMPT")
}

/// One row of `cadre list`, aligned with [`list_header`] (numbers as numbers: a JSON value's
/// own formatting ignores widths).
pub fn list_row(j: &Value) -> String {
    format!(
        "{:>8}  {:<10}  {:>7}  {}",
        j["id"].as_u64().unwrap_or(0),
        j["state"].as_str().unwrap_or(""),
        j["attempt"].as_u64().unwrap_or(0),
        j["name"].as_str().unwrap_or("")
    )
}
