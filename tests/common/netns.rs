//! A second "host" for the partition tests: a network namespace joined to this one by a veth
//! pair (`ip netns`, iproute2), with blackhole routes to cut it off. Made by
//! the test itself; where namespaces cannot be made (not root), [`Host::make`] says SKIP, and
//! `CADRE_REQUIRE_NETNS=1` makes that a failure.

use std::process::Command;

/// A namespace `name` at `10.<net>.0.2`, reachable from here at `10.<net>.0.1`.
pub struct Host {
    pub name: String,
    /// This side's address, which the host reaches.
    pub here: String,
    /// The host's address.
    pub there: String,
    veth: String,
    /// The host's end of the pair.
    peer: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Prints SKIP for `test` and why, or fails under `CADRE_REQUIRE_NETNS=1`.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CADRE_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!(
            "{test}: network namespaces and iptables are required (CADRE_REQUIRE_NETNS=1): {why}"
        );
    }
    println!("SKIP {test}: {why}");
}

/// `iptables ARGS` in namespace `ns`.
fn iptables(ns: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables"])
        .args(args)
        .output()
        .map_err(|e| format!("iptables {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Host {
    /// Makes the namespace, or `None` after printing SKIP (a failure under
    /// `CADRE_REQUIRE_NETNS=1`).
    pub fn make(test: &str, net: u8) -> Option<Host> {
        let name = format!("cadre-{}-{net}", std::process::id());
        let veth = format!("cv{}h{net}", std::process::id() % 100_000);
        let peer = format!("cv{}a{net}", std::process::id() % 100_000);
        let here = format!("10.{net}.0.1");
        let there = format!("10.{net}.0.2");
        let host = Host {
            name: name.clone(),
            here: here.clone(),
            there: there.clone(),
            veth: veth.clone(),
            peer: peer.clone(),
        };
        let made = (|| {
            ip(&["netns", "add", &name])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &name])?;
            ip(&["addr", "add", &format!("{here}/24"), "dev", &veth])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{there}/24"),
                "dev",
                &peer,
            ])?;
            ip(&["-n", &name, "link", "set", &peer, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])
        })();
        match made {
            Ok(()) => Some(host),
            Err(reason) => {
                drop(host);
                skip_or_fail(test, &format!("cannot make a network namespace: {reason}"));
                None
            }
        }
    }

    /// Drops every packet both ways, silently (blackhole routes on both sides: the TCP
    /// connection stays open, as in a partition; no error reaches either end).
    pub fn cut(&self) {
        ip(&["route", "add", "blackhole", &format!("{}/32", self.there)]).unwrap();
        ip(&[
            "-n",
            &self.name,
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.here),
        ])
        .unwrap();
    }

    /// Drops what this side sends the host only (an `iptables` rule in the host's namespace;
    /// a blackhole route here would drop the host's packets too, taken as spoofed): what the
    /// host sends still arrives. `Err` where `iptables` cannot be run.
    pub fn cut_one_way(&self) -> Result<(), String> {
        iptables(&self.name, &["-A", "INPUT", "-s", &self.here, "-j", "DROP"])
    }

    /// Heals a [`Host::cut_one_way`].
    pub fn heal_one_way(&self) {
        iptables(&self.name, &["-D", "INPUT", "-s", &self.here, "-j", "DROP"]).unwrap();
    }

    /// Drops `percent` of the packets on the host's link, each way, at random (`iptables`'
    /// statistic match in its namespace). `Err` where `iptables` cannot be run.
    pub fn lose(&self, percent: u32) -> Result<(), String> {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            iptables(
                &self.name,
                &[
                    "-A",
                    chain,
                    dir,
                    &self.peer,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Packets the host's `iptables` rules dropped so far.
    pub fn dropped(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "iptables", "-L", "-v", "-x", "-n",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Heals a [`Host::cut`].
    pub fn heal(&self) {
        ip(&["route", "del", "blackhole", &format!("{}/32", self.there)]).unwrap();
        ip(&[
            "-n",
            &self.name,
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.here),
        ])
        .unwrap();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A cut left in place (a failed test) would cut the next run's namespace too.
        if ip(&["route", "show", &format!("{}/32", self.there)]).is_ok() {
            drop(ip(&[
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.there),
            ]));
        }
        // Deleting the namespace deletes its end of the pair, and with it ours.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("leaving namespace {}: {e}", self.name);
        }
        if ip(&["link", "show", &self.veth]).is_ok() {
            if let Err(e) = ip(&["link", "del", &self.veth]) {
                eprintln!("leaving veth {}: {e}", self.veth);
            }
        }
    }
}
