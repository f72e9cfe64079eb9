//! TLS for the ext_proc port: a certificate from PEM files, re-read when they change, or a
//! self-signed one made at start (`--secure-serving`).
//!
//! Gateways such as agentgateway always connect to the picker over TLS and do not verify its
//! certificate, so an in-memory self-signed certificate is all they need (the Gateway API
//! Inference Extension's own picker does the same). With `--secure-serving` unset the port serves
//! plaintext beside TLS, told apart by each connection's first byte (a TLS record starts with
//! 0x16, an HTTP/2 preface with `P`), so both the charts' TLS gateways and a plaintext Envoy work. When files are given (cert-manager), the
//! certificate is swapped in place for new handshakes as soon as both files parse again;
//! connections already open keep theirs. Handshakes run concurrently, each bounded in time, so a
//! slow client cannot hold up the accept loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::listener::{Admitted, Gate};
use crate::config::Cli;
use crate::error::Error;

/// Bound on one TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
pub(super) const ACCEPTED_QUEUE: usize = 64;
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// A connection as the gRPC server gets it: TLS, or plaintext where that is served too.
pub type Accepted = Either<TlsStream<Admitted<TcpStream>>, Admitted<TcpStream>>;

/// Where the certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files, checked for changes every `reload`.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
        /// How often the files are checked.
        reload: Duration,
    },
    /// A self-signed certificate for `localhost` and the pod's names, made at start.
    SelfSigned,
}

impl TlsSource {
    /// The certificate the flags ask for: files when given (`--cert-path` alone names a
    /// directory holding `tls.crt` and `tls.key`, as for llm-d), else a self-signed one.
    pub fn from_cli(cli: &Cli) -> Self {
        let reload = cli.cert_reload_interval;
        match (&cli.cert_path, &cli.key_path) {
            (Some(cert), Some(key)) => Self::Files {
                cert: cert.clone(),
                key: key.clone(),
                reload,
            },
            (Some(dir), None) => Self::Files {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
                reload,
            },
            _ => Self::SelfSigned,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The current certificate, swapped whole on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// A TLS acceptor whose certificate can change while it serves.
pub struct Tls {
    source: TlsSource,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    /// The files' contents the current certificate was made from.
    loaded: Option<(Vec<u8>, Vec<u8>)>,
    /// Connections that do not start with a TLS record are served as plaintext.
    plaintext_too: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files or makes the self-signed certificate; errors name the file.
    pub fn new(source: TlsSource) -> Result<Self, Error> {
        let (key, loaded) = match &source {
            TlsSource::SelfSigned => (self_signed()?, None),
            TlsSource::Files { cert, key, .. } => {
                let (c, k) = (read(cert)?, read(key)?);
                (certified(&c, &k)?, Some((c, k)))
            }
        };
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            source,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            loaded,
            plaintext_too: false,
        })
    }

    /// Serves plaintext connections too (`--secure-serving` unset).
    pub fn with_plaintext(mut self, plaintext_too: bool) -> Self {
        self.plaintext_too = plaintext_too;
        self
    }

    /// The certificate chain served now (DER), for tests and logs.
    pub fn certificate(&self) -> Vec<CertificateDer<'static>> {
        self.current.0.read().cert.clone()
    }

    /// Re-reads the files if they changed; keeps the old certificate when the new one does not
    /// load (e.g. caught between writing the certificate and the key). Returns whether it changed.
    pub fn reload(&mut self) -> bool {
        let TlsSource::Files { cert, key, .. } = &self.source else {
            return false;
        };
        let (Ok(c), Ok(k)) = (read(cert), read(key)) else {
            return false;
        };
        if self.loaded.as_ref() == Some(&(c.clone(), k.clone())) {
            return false;
        }
        match certified(&c, &k) {
            Ok(new) => {
                *self.current.0.write() = Arc::new(new);
                self.loaded = Some((c, k));
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS certificate does not load yet; keeping the old one");
                false
            }
        }
    }

    /// Accepts on `listener`, handshakes, and hands the TLS streams to `accepted` until `stop`;
    /// reloads the files every interval meanwhile.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        gate: Arc<Gate>,
        accepted: mpsc::Sender<Accepted>,
        stop: CancellationToken,
    ) {
        let every = match &self.source {
            TlsSource::Files { reload, .. } => *reload,
            TlsSource::SelfSigned => Duration::from_secs(24 * 3600),
        };
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handshakes = JoinSet::new();
        loop {
            while handshakes.try_join_next().is_some() {}
            let full = handshakes.len() >= MAX_HANDSHAKES;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => { self.reload(); }
                Some(_) = handshakes.join_next(), if full => {}
                accepted_tcp = listener.accept(), if !full => {
                    let (tcp, peer) = match accepted_tcp {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "ext_proc accept failed");
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let Some(tcp) = gate.wrap(tcp, peer) else { continue };
                    let (acceptor, out, stop) = (self.acceptor.clone(), accepted.clone(), stop.clone());
                    let plaintext_too = self.plaintext_too;
                    handshakes.spawn(async move {
                        if plaintext_too && !starts_tls(&tcp, &stop).await {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = out.send(Either::Right(tcp)) => {}
                            }
                            return;
                        }
                        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                        let stream = tokio::select! {
                            _ = stop.cancelled() => return,
                            r = handshake => match r {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            },
                        };
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = out.send(Either::Left(stream)) => {}
                        }
                    });
                }
            }
        }
        handshakes.shutdown().await;
    }
}

/// Whether the connection's first byte opens a TLS handshake. A connection silent for the
/// handshake bound, closed, or failing counts as TLS: its handshake then fails as it would.
async fn starts_tls(tcp: &Admitted<TcpStream>, stop: &CancellationToken) -> bool {
    let mut first = [0u8; 1];
    let peek = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.get_ref().peek(&mut first));
    tokio::select! {
        _ = stop.cancelled() => true,
        r = peek => !matches!(r, Ok(Ok(1))) || first[0] == TLS_HANDSHAKE,
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))
}

fn certified(cert: &[u8], key: &[u8]) -> Result<CertifiedKey, Error> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Tls("certificate: no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Tls(format!("key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| Error::Tls(e.to_string()))
}

/// A fresh key pair and a self-signed certificate for `localhost`, `127.0.0.1` and the pod's
/// host name (what a verifying client would dial), valid from now for ten years.
fn self_signed() -> Result<CertifiedKey, Error> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Ok(host) = std::env::var("HOSTNAME")
        && !host.is_empty()
    {
        names.push(host);
    }
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Tls(format!("self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|e| Error::Tls(format!("self-signed key: {e}")))?;
    CertifiedKey::from_der(vec![cert.der().clone()], key, &provider())
        .map_err(|e| Error::Tls(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificates_are_fresh_each_start() {
        let a = Tls::new(TlsSource::SelfSigned).unwrap();
        let b = Tls::new(TlsSource::SelfSigned).unwrap();
        assert_eq!(a.certificate().len(), 1);
        assert_ne!(a.certificate(), b.certificate());
    }

    #[test]
    fn files_reload_only_when_they_change_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let write = |names: &[&str]| {
            let c = rcgen::generate_simple_self_signed(
                names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            std::fs::write(&cert, c.cert.pem()).unwrap();
            std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        };
        write(&["a.example"]);
        let mut tls = Tls::new(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            reload: Duration::from_secs(1),
        })
        .unwrap();
        let first = tls.certificate();
        assert!(!tls.reload(), "unchanged files are not reloaded");
        // Half-written (certificate without its key): the old one stays.
        std::fs::write(&key, "garbage").unwrap();
        assert!(!tls.reload());
        assert_eq!(tls.certificate(), first);
        write(&["b.example"]);
        assert!(tls.reload());
        assert_ne!(tls.certificate(), first);
        std::fs::remove_file(&cert).unwrap();
        assert!(
            !tls.reload(),
            "a missing file keeps the current certificate"
        );
        assert!(
            Tls::new(TlsSource::Files {
                cert,
                key,
                reload: Duration::from_secs(1)
            })
            .unwrap_err()
            .to_string()
            .contains("tls.crt")
        );
    }
}
