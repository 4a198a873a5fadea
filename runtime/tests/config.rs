//! Configuration layering: embedded defaults, then the TOML file, then `CADRE_*` variables, then
//! flags; unknown keys and bad values are refused with the field named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;

use cadre_runtime::{Config, Error, Flags, LogFormat};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn file(name: &str, text: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("cadre-config-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn field(err: Error) -> String {
    match err {
        Error::Config { field, .. } => field,
        other => panic!("not a config error: {other}"),
    }
}

#[test]
fn defaults_need_no_file() {
    let c = Config::load(&Flags::default(), &env(&[])).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("./cadre-data"));
    assert_eq!(c.api_addr.to_string(), "127.0.0.1:7070");
    assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9464");
    assert_eq!(c.log_format, LogFormat::Text);
}

#[test]
fn file_then_environment_then_flags() {
    let path = file(
        "layers",
        "data_dir = \"/from/file\"\napi_addr = \"127.0.0.1:1000\"\nmetrics_addr = \"127.0.0.1:1001\"\nlease_ttl_ms = 20000\n",
    );
    let flags = Flags {
        config: Some(path.clone()),
        api_addr: Some("127.0.0.1:3000".parse().unwrap()),
        ..Flags::default()
    };
    let c = Config::load(
        &flags,
        &env(&[
            ("CADRE_API_ADDR", "127.0.0.1:2000"),
            ("CADRE_DATA_DIR", "/from/env"),
            ("CADRE_LOG_FORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/from/env"), "env beats the file");
    assert_eq!(
        c.api_addr.to_string(),
        "127.0.0.1:3000",
        "the flag beats env and file"
    );
    assert_eq!(
        c.metrics_addr.to_string(),
        "127.0.0.1:1001",
        "the file beats the default"
    );
    assert_eq!(c.lease_ttl_ms, 20_000);
    assert_eq!(c.log_format, LogFormat::Json);
    // CADRE_CONFIG names the file when --config does not.
    let c = Config::load(
        &Flags::default(),
        &env(&[("CADRE_CONFIG", path.to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/from/file"));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bad_input_is_refused_with_its_field() {
    let path = file("unknown", "data_dir = \"/x\"\nlease_ttl = 5\n");
    let flags = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    let err = Config::load(&flags, &env(&[])).unwrap_err();
    assert!(
        err.to_string().contains("lease_ttl"),
        "an unknown key is named: {err}"
    );
    std::fs::remove_file(path).unwrap();
    assert_eq!(
        field(Config::load(&Flags::default(), &env(&[("CADRE_API_ADDR", "nowhere")])).unwrap_err()),
        "CADRE_API_ADDR"
    );
    assert_eq!(
        field(Config::load(&Flags::default(), &env(&[("CADRE_LOG_FORMAT", "xml")])).unwrap_err()),
        "CADRE_LOG_FORMAT"
    );
    assert_eq!(
        field(
            Config::load(&Flags::default(), &env(&[("CADRE_RENEW_EVERY_MS", "9000")])).unwrap_err()
        ),
        "renew_every_ms"
    );
    assert_eq!(
        field(Config::load(&Flags::default(), &env(&[("CADRE_LEASE_TTL_MS", "10")])).unwrap_err()),
        "lease_ttl_ms"
    );
    for bad in ["0", "101"] {
        let vars = [("CADRE_RETENTION_MAX_DISK_USED_PERCENT", bad)];
        assert_eq!(
            field(Config::load(&Flags::default(), &env(&vars)).unwrap_err()),
            "retention.max_disk_used_percent",
            "{bad}"
        );
    }
    let c = Config::load(
        &Flags::default(),
        &env(&[("CADRE_RETENTION_MAX_DISK_USED_PERCENT", "75")]),
    )
    .unwrap();
    assert_eq!(c.retention().max_disk_used_percent, 75);
    assert!(
        c.retention().disk.is_some(),
        "the node watches its data's disk"
    );
    let missing = Flags {
        config: Some(PathBuf::from("/no/such/cadre.toml")),
        ..Flags::default()
    };
    assert_eq!(
        field(Config::load(&missing, &env(&[])).unwrap_err()),
        "--config"
    );
}

#[test]
fn the_node_is_named_by_config_or_by_its_host() {
    let c = Config::load(&Flags::default(), &env(&[("CADRE_NODE_NAME", "gpu-17")])).unwrap();
    assert_eq!(c.node_name(), ("gpu-17".to_owned(), None));
    // Unset: the machine's host name, read from the kernel.
    let c = Config::load(&Flags::default(), &env(&[])).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let (name, problem) = c.node_name();
    assert_eq!(problem, None);
    assert_eq!(name, host.trim());
    // A name that cannot tell nodes apart in `node/worker` is refused with its field.
    for bad in ["", "a b", "rack/7", &"n".repeat(129)] {
        let err = Config::load(&Flags::default(), &env(&[("CADRE_NODE_NAME", bad)])).unwrap_err();
        let text = err.to_string();
        assert_eq!(field(err), "node_name", "{bad:?}: {text}");
    }
    let path = file("node-name", "node_name = \"from-file\"\n");
    let flags = Flags {
        config: Some(path.clone()),
        ..Flags::default()
    };
    assert_eq!(
        Config::load(&flags, &env(&[])).unwrap().node_name().0,
        "from-file"
    );
    std::fs::remove_file(path).unwrap();
}
