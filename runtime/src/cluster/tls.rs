//! Mutual TLS for the cluster (rustls, with aws-lc-rs: its default, with post-quantum hybrid
//! key exchange): a cluster CA signs every node's
//! certificate; the scheduler takes an agent only with a certificate from that CA, and one
//! made for the node the agent says it is; the agent checks the scheduler's certificate
//! against the name it dialled (`--join HOST:PORT`). Files are read with a size limit, as
//! everything read from disk is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::Error;

/// The largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Where a node's cluster certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This node's certificate, signed by the CA.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

fn tls_error(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
pub(crate) fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| tls_error(path.display().to_string(), format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| tls_error(path.display().to_string(), format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(tls_error(
            path.display().to_string(),
            format!("larger than {MAX_PEM_BYTES} bytes: not a certificate or a key"),
        ));
    }
    Ok(bytes)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path.display().to_string(), e))?;
    if certs.is_empty() {
        return Err(tls_error(
            path.display().to_string(),
            "holds no certificate",
        ));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| tls_error(path.display().to_string(), e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(path.display().to_string(), e))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The scheduler's TLS: its certificate, and agents' certificates required and checked
/// against the cluster CA.
pub fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(|e| tls_error("cluster CA", e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| tls_error(files.cert.display().to_string(), e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An agent's TLS: its certificate, and the scheduler's checked against the cluster CA and
/// the name dialled.
pub fn connector(files: &TlsFiles) -> Result<tokio_rustls::TlsConnector, Error> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS versions", e))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| tls_error(files.cert.display().to_string(), e))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Whether `cert` (an agent's, already verified against the CA) was made for node `node`.
pub fn cert_names(cert: &CertificateDer<'_>, node: &str) -> Result<(), String> {
    let name = ServerName::try_from(node)
        .map_err(|e| format!("{node:?} cannot be a certificate's name: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| format!("the certificate is not made for node {node}: {e}"))
}

/// A cluster connection's two halves, plain TCP or TLS.
pub(crate) type Reader = Box<dyn AsyncRead + Unpin + Send>;
/// See [`Reader`].
pub(crate) type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Splits a plain TCP connection, the scheduler's side: dropping the write half shuts the
/// connection down (FIN), so what was written before (a refusal) reaches the peer even when
/// bytes it sent are left unread.
pub(crate) fn plain(stream: TcpStream) -> (Reader, Writer) {
    let (r, w) = stream.into_split();
    (Box::new(r), Box::new(w))
}

/// Splits a plain TCP connection, the agent's side: as a TLS stream is, so the socket closes
/// only when both halves are gone, with the reset the agent sets (see `client.rs`), never the
/// FIN a dropped `into_split` write half sends, which the scheduler takes for the agent's exit.
pub(crate) fn plain_resettable(stream: TcpStream) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(stream);
    (Box::new(r), Box::new(w))
}

/// The scheduler's side of TLS on an accepted connection: the halves, and the agent's
/// certificate.
pub(crate) async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
) -> Result<(Reader, Writer, CertificateDer<'static>), std::io::Error> {
    let tls = acceptor.accept(stream).await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| std::io::Error::other("the agent presented no certificate"))?;
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), Box::new(w), cert))
}

/// The agent's side of TLS on a connection to `addr` (`host:port`, whose host the scheduler's
/// certificate must name).
pub(crate) async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    stream: TcpStream,
) -> Result<(Reader, Writer), std::io::Error> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| std::io::Error::other(format!("{host:?} is not a name TLS can check: {e}")))?;
    let tls = connector.connect(name, stream).await?;
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), Box::new(w)))
}

/// How a refused TLS handshake is logged and counted on the scheduler.
pub(crate) fn refused(peer: SocketAddr, error: &std::io::Error) {
    tracing::warn!(%peer, %error, "cluster TLS handshake refused");
    metrics::counter!(cadre_wire::metrics::HANDSHAKE_REFUSALS,
        "reason" => "tls", "side" => "scheduler")
    .increment(1);
}
