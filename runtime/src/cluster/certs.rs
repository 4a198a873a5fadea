//! `cadre certs`: the cluster's CA and its nodes' certificates (rcgen, ECDSA P-256).
//!
//! `cadre certs ca --dir D` writes `D/ca.crt` and `D/ca.key`; `cadre certs node NAME --dir D
//! [--san HOST,...]` reads them and writes `D/NAME.crt` and `D/NAME.key`, a certificate for
//! both ends of a connection (server and client use) naming `NAME` and the extra names. An
//! agent's certificate must name its node (`--name`), and a scheduler's the host agents dial.
//! Nothing is overwritten; keys are written readable by their owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::Error;

/// How long a CA lasts.
const CA_DAYS: i64 = 10 * 365;
/// How long a node's certificate lasts.
const NODE_DAYS: i64 = 2 * 365;

fn err(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        what: what.into(),
        reason: reason.to_string(),
    }
}

fn validity(params: &mut CertificateParams, days: i64) -> Result<(), Error> {
    let now_s = (cadre_actors::clock::now_ms() / 1000) as i64;
    let now = time::OffsetDateTime::from_unix_timestamp(now_s).map_err(|e| err("clock", e))?;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    Ok(())
}

/// Writes `contents` to a new file `path` (never over an existing one), `0600` for a key.
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| err(path.display().to_string(), format!("cannot create: {e}")))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(path.display().to_string(), format!("cannot write: {e}")))
}

/// Creates the cluster CA in `dir`; returns the certificate's and key's paths.
pub fn create_ca(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| err(dir.display().to_string(), format!("cannot create: {e}")))?;
    let key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "cadre cluster CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS)?;
    let cert = params.self_signed(&key).map_err(|e| err("CA", e))?;
    let (crt, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok((crt, key_path))
}

/// Creates node `name`'s certificate in `dir`, signed by the CA there, naming `name` and
/// `sans`; returns the certificate's and key's paths.
pub fn create_node(dir: &Path, name: &str, sans: &[String]) -> Result<(PathBuf, PathBuf), Error> {
    // The name is also the files' name: only what a node may be called.
    let usable = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !usable {
        return Err(err(
            name,
            "a node's name is letters, digits, '-', '.' and '_' (at most 128, not starting with '.')",
        ));
    }
    let ca_key = std::str::from_utf8(&super::tls::read_pem(&dir.join("ca.key"))?)
        .map_err(|e| err("ca.key", e))?
        .to_owned();
    let ca_crt = std::str::from_utf8(&super::tls::read_pem(&dir.join("ca.crt"))?)
        .map_err(|e| err("ca.crt", e))?
        .to_owned();
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| err("ca.key", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_crt, ca_key).map_err(|e| err("ca.crt", e))?;
    let mut names = vec![name.to_owned()];
    names.extend(sans.iter().filter(|s| s.as_str() != name).cloned());
    let mut params = CertificateParams::new(names).map_err(|e| err(name, e))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, NODE_DAYS)?;
    let key = KeyPair::generate().map_err(|e| err("node key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| err(name, e))?;
    let (crt, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok((crt, key_path))
}
