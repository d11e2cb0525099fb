//! Serving certificates for the operator's admission webhook. This crate only makes, renews and
//! loads certificates; serving them is the server's job:
//!
//! - [`Bundle`]: a self-managed CA and a serving certificate it signs for the webhook Service's
//!   DNS names, as PEM (what a Secret stores and a `caBundle` carries), renewed before expiry with
//!   the same CA so the API server's trust never lapses.
//! - [`ReloadableCert`]: a rustls certificate resolver whose certificate can be swapped atomically;
//!   the next TLS handshake serves the new one (rotation, or cert-manager's files changing).
//!
//! Storing the bundle in a Secret and patching `caBundle` are the operator's (issue 5).

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;

/// Why a certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("failed to generate a key or certificate")]
    Generate(#[from] rcgen::Error),
    #[error("failed to read PEM ({what})")]
    Pem {
        what: &'static str,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the PEM holds no {0}")]
    Empty(&'static str),
    #[error("the private key is not usable for TLS")]
    Key(#[source] rustls::Error),
}

/// How long the CA and the serving certificate live, and when the serving one is renewed.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub ca: Duration,
    pub serving: Duration,
    /// Renew the serving certificate when less than this is left.
    pub renew_before: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ca: Duration::from_secs(10 * 365 * 86_400),
            serving: Duration::from_secs(90 * 86_400),
            renew_before: Duration::from_secs(30 * 86_400),
        }
    }
}

/// A CA and the serving certificate it signed, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the serving certificate expires.
    pub not_after: SystemTime,
    /// When the CA was made (its identity: renewals keep it).
    pub ca_not_before: SystemTime,
}

impl std::fmt::Debug for Bundle {
    // Private keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

const CA_NAME: &str = "k8s-ai-operator webhook CA";

/// The CA's parameters: the same on every call for the same `not_before`, so renewals can sign
/// with the stored CA key without parsing the CA certificate back.
fn ca_params(not_before: SystemTime, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::from(not_before);
    params.not_after = OffsetDateTime::from(not_before + lifetime);
    params
}

fn serving_cert(
    dns_names: &[String],
    issuer: &Issuer<'_, KeyPair>,
    now: SystemTime,
    lifetimes: Lifetimes,
) -> Result<(String, String, SystemTime), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        dns_names
            .first()
            .map_or("k8s-ai-operator-webhook", String::as_str),
    );
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    // An hour of slack for clocks that run behind ours.
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(3600));
    let not_after = now + lifetimes.serving;
    params.not_after = OffsetDateTime::from(not_after);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

impl Bundle {
    /// A new CA and a serving certificate for `dns_names` (e.g. `svc.ns.svc`), valid from `now`.
    pub fn generate(
        dns_names: &[String],
        now: SystemTime,
        lifetimes: Lifetimes,
    ) -> Result<Self, CertError> {
        let ca_key = KeyPair::generate()?;
        let ca_not_before = now - Duration::from_secs(3600);
        let ca_params = ca_params(ca_not_before, lifetimes.ca);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let (cert_pem, key_pem, not_after) = serving_cert(dns_names, &issuer, now, lifetimes)?;
        Ok(Bundle {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem,
            cert_pem,
            key_pem,
            not_after,
            ca_not_before,
        })
    }

    /// Whether the serving certificate should be renewed at `now`.
    pub fn needs_renewal(&self, now: SystemTime, lifetimes: Lifetimes) -> bool {
        self.not_after
            .duration_since(now)
            .map_or(true, |left| left < lifetimes.renew_before)
    }

    /// A new serving certificate signed by the same CA (so `caBundle` stays valid).
    pub fn renew(
        &self,
        dns_names: &[String],
        now: SystemTime,
        lifetimes: Lifetimes,
    ) -> Result<Self, CertError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(ca_params(self.ca_not_before, lifetimes.ca), ca_key);
        let (cert_pem, key_pem, not_after) = serving_cert(dns_names, &issuer, now, lifetimes)?;
        Ok(Bundle {
            cert_pem,
            key_pem,
            not_after,
            ..self.clone()
        })
    }
}

/// Builds a rustls certified key from PEM certificate chain and private key.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::Pem {
            what: "certificate",
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::Empty("certificate"));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| CertError::Pem {
            what: "private key",
            source,
        })?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(CertError::Key)?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// A server certificate that can be replaced while serving; every handshake reads the current one.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        Ok(ReloadableCert {
            current: RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
        })
    }

    /// Replaces the certificate; a bad one is refused and the current one kept.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        match self.current.write() {
            Ok(mut current) => *current = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| Arc::clone(&k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn names() -> Vec<String> {
        vec!["k8s-ai-operator-webhook.ai-operator-system.svc".to_owned()]
    }

    /// Completes a TLS handshake with a client that trusts only `ca_pem`; returns the server's leaf.
    async fn handshake(server: Arc<rustls::ServerConfig>, ca_pem: &str) -> Result<Vec<u8>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(ca.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serve = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let mut tls = acceptor.accept(tcp).await.ok()?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.ok()?;
            tls.write_all(b"pong").await.ok()
        });
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from(names()[0].clone())
            .map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no certificate")?;
        let _ = serve.await;
        Ok(leaf)
    }

    fn server(resolver: Arc<ReloadableCert>) -> Arc<rustls::ServerConfig> {
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(resolver),
        )
    }

    #[tokio::test]
    async fn a_rotated_certificate_is_served_on_the_next_handshake_and_still_trusted() {
        let now = SystemTime::now();
        let lifetimes = Lifetimes::default();
        let bundle = Bundle::generate(&names(), now, lifetimes).unwrap();
        let resolver = Arc::new(ReloadableCert::new(&bundle.cert_pem, &bundle.key_pem).unwrap());
        let config = server(Arc::clone(&resolver));
        let first = handshake(Arc::clone(&config), &bundle.ca_cert_pem)
            .await
            .unwrap();

        let renewed = bundle
            .renew(&names(), SystemTime::now(), lifetimes)
            .unwrap();
        assert_eq!(
            renewed.ca_cert_pem, bundle.ca_cert_pem,
            "same CA: caBundle stays valid"
        );
        assert_ne!(renewed.cert_pem, bundle.cert_pem);
        resolver
            .replace(&renewed.cert_pem, &renewed.key_pem)
            .unwrap();
        let second = handshake(config, &bundle.ca_cert_pem).await.unwrap();
        assert_ne!(
            first, second,
            "the next handshake serves the new certificate"
        );
        assert_eq!(
            second,
            CertificateDer::pem_slice_iter(renewed.cert_pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
                .to_vec()
        );
    }

    #[tokio::test]
    async fn another_ca_is_not_trusted() {
        let now = SystemTime::now();
        let bundle = Bundle::generate(&names(), now, Lifetimes::default()).unwrap();
        let stranger = Bundle::generate(&names(), now, Lifetimes::default()).unwrap();
        let resolver = Arc::new(ReloadableCert::new(&bundle.cert_pem, &bundle.key_pem).unwrap());
        assert!(
            handshake(server(resolver), &stranger.ca_cert_pem)
                .await
                .is_err()
        );
    }

    #[test]
    fn renewal_is_due_before_expiry() {
        let now = SystemTime::now();
        let lifetimes = Lifetimes::default();
        let bundle = Bundle::generate(&names(), now, lifetimes).unwrap();
        assert!(!bundle.needs_renewal(now, lifetimes));
        assert!(!bundle.needs_renewal(now + Duration::from_secs(59 * 86_400), lifetimes));
        assert!(bundle.needs_renewal(now + Duration::from_secs(61 * 86_400), lifetimes));
        assert!(
            bundle.needs_renewal(now + Duration::from_secs(100 * 86_400), lifetimes),
            "expired"
        );
    }

    #[test]
    fn bad_pem_is_refused_and_the_current_certificate_kept() {
        let bundle = Bundle::generate(&names(), SystemTime::now(), Lifetimes::default()).unwrap();
        let resolver = ReloadableCert::new(&bundle.cert_pem, &bundle.key_pem).unwrap();
        assert!(matches!(
            resolver.replace("not a certificate", &bundle.key_pem),
            Err(CertError::Empty(_))
        ));
        assert!(resolver.replace(&bundle.cert_pem, "garbage").is_err());
        assert!(
            format!("{bundle:?}").contains("not_after")
                && !format!("{bundle:?}").contains("PRIVATE"),
            "no keys in Debug"
        );
    }
}
