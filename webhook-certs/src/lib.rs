//! Serving certificates for the operator's admission webhook. This crate only makes, rotates and
//! loads certificates; serving them and storing them are the operator's job:
//!
//! - [`Bundle`]: a self-managed CA and the serving certificate it signs for the webhook Service's
//!   DNS names, as PEM (what a Secret stores and a `caBundle` carries), with the rotation state:
//!   [`Bundle::advance`] renews the serving certificate before expiry with the same CA, and
//!   replaces the CA in three steps (announce the next CA, switch to it, forget the old one), each
//!   an `overlap` apart, so the API server trusts every certificate a replica may still serve.
//! - [`ReloadableCert`]: a rustls certificate resolver whose certificate can be swapped atomically;
//!   the next TLS handshake serves the new one (rotation, or cert-manager's files changing).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
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
    #[error("the private key is not usable for TLS, or is not the certificate's")]
    Key(#[source] rustls::Error),
    #[error("the stored bundle has no valid {0:?}")]
    Field(&'static str),
}

/// How long the CA and the serving certificate live, and when each is replaced.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub ca: Duration,
    /// Start replacing the CA when less than this is left (longer than `serving`, so a serving
    /// certificate never outlives its CA).
    pub ca_renew_before: Duration,
    pub serving: Duration,
    /// Renew the serving certificate when less than this is left.
    pub renew_before: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Lifetimes {
            ca: Duration::from_secs(10 * 365 * DAY),
            ca_renew_before: Duration::from_secs(365 * DAY),
            serving: Duration::from_secs(90 * DAY),
            renew_before: Duration::from_secs(30 * DAY),
        }
    }
}

/// A certificate authority: its certificate and key as PEM, and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct Authority {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Authority {
    // Private keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

const CA_NAME: &str = "k8s-ai-operator webhook CA";
/// Slack for clocks that run behind ours.
const CLOCK_SLACK: Duration = Duration::from_secs(3600);

/// `t` without its fraction of a second: what a Secret stores, so state read back compares equal.
fn whole_seconds(t: SystemTime) -> SystemTime {
    t.duration_since(UNIX_EPOCH)
        .map_or(t, |d| UNIX_EPOCH + Duration::from_secs(d.as_secs()))
}

/// The CA's identity; what an issuer needs to sign (its name), whatever its validity.
fn ca_params(not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
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
    params.not_after = OffsetDateTime::from(not_after);
    params
}

impl Authority {
    /// A new CA valid from `now` for `lifetime`.
    pub fn generate(now: SystemTime, lifetime: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let not_after = now + lifetime;
        let cert = ca_params(now - CLOCK_SLACK, not_after).self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Signs a serving certificate for `dns_names` (IP addresses become IP SANs), valid from
    /// `now` for `lifetime` but never past the CA's own expiry. Returns (cert, key, not_after).
    fn sign_serving(
        &self,
        dns_names: &[String],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(String, String, SystemTime), CertError> {
        let issuer = Issuer::new(
            ca_params(now, self.not_after),
            KeyPair::from_pem(&self.key_pem)?,
        );
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
        params.not_before = OffsetDateTime::from(now - CLOCK_SLACK);
        let not_after = (now + lifetime).min(self.not_after);
        params.not_after = OffsetDateTime::from(not_after);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem(), not_after))
    }
}

/// The self-managed webhook certificates: the CA, the serving certificate it signed, and the
/// state of a CA replacement in progress.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca: Authority,
    /// The CA that replaces `ca`, trusted (in `caBundle`) since `.1` but not yet signing.
    pub next_ca: Option<(Authority, SystemTime)>,
    /// The replaced CA's certificate, still trusted since its retirement at `.1`, because
    /// replicas may still serve a certificate it signed until they reload.
    pub previous_ca: Option<(String, SystemTime)>,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the serving certificate expires.
    pub not_after: SystemTime,
    /// The names the serving certificate is for.
    pub dns_names: Vec<String>,
}

impl std::fmt::Debug for Bundle {
    // Private keys never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("not_after", &self.not_after)
            .field("ca", &self.ca)
            .field("rotating_ca", &self.next_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// What [`Bundle::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing was due.
    Unchanged,
    /// A new serving certificate from the same CA.
    RenewedServing,
    /// A next CA was made and should now be trusted (added to `caBundle`).
    AnnouncedCa,
    /// The serving certificate is now signed by the next CA; the old CA is still trusted.
    SwitchedCa,
    /// The old CA is no longer trusted.
    RetiredCa,
}

impl Bundle {
    /// A new CA and a serving certificate for `dns_names` (e.g. `svc.ns.svc`), valid from `now`.
    pub fn generate(
        dns_names: &[String],
        now: SystemTime,
        lifetimes: Lifetimes,
    ) -> Result<Self, CertError> {
        let now = whole_seconds(now);
        let ca = Authority::generate(now, lifetimes.ca)?;
        let (cert_pem, key_pem, not_after) = ca.sign_serving(dns_names, now, lifetimes.serving)?;
        Ok(Bundle {
            ca,
            next_ca: None,
            previous_ca: None,
            cert_pem,
            key_pem,
            not_after,
            dns_names: dns_names.to_vec(),
        })
    }

    /// Whether the serving certificate should be renewed at `now` (or is for other names).
    pub fn needs_renewal(&self, now: SystemTime, lifetimes: Lifetimes) -> bool {
        self.not_after
            .duration_since(now)
            .map_or(true, |left| left < lifetimes.renew_before)
    }

    /// Takes at most one step of rotation that is due at `now`. A CA replacement waits `overlap`
    /// between its steps: long enough for the `caBundle` change to reach the API server and for
    /// every replica to load the new serving certificate.
    pub fn advance(
        &mut self,
        dns_names: &[String],
        now: SystemTime,
        lifetimes: Lifetimes,
        overlap: Duration,
    ) -> Result<Step, CertError> {
        let now = whole_seconds(now);
        let waited = |since: SystemTime| now.duration_since(since).is_ok_and(|d| d >= overlap);
        if let Some((_, retired)) = &self.previous_ca
            && waited(*retired)
        {
            self.previous_ca = None;
            return Ok(Step::RetiredCa);
        }
        if let Some((next, announced)) = &self.next_ca
            && waited(*announced)
        {
            let (cert_pem, key_pem, not_after) =
                next.sign_serving(dns_names, now, lifetimes.serving)?;
            let old = std::mem::replace(&mut self.ca, next.clone());
            self.previous_ca = Some((old.cert_pem, now));
            self.next_ca = None;
            (self.cert_pem, self.key_pem, self.not_after) = (cert_pem, key_pem, not_after);
            self.dns_names = dns_names.to_vec();
            return Ok(Step::SwitchedCa);
        }
        let ca_due = self
            .ca
            .not_after
            .duration_since(now)
            .map_or(true, |left| left < lifetimes.ca_renew_before);
        if ca_due && self.next_ca.is_none() && self.previous_ca.is_none() {
            self.next_ca = Some((Authority::generate(now, lifetimes.ca)?, now));
            return Ok(Step::AnnouncedCa);
        }
        if self.needs_renewal(now, lifetimes) || self.dns_names != dns_names {
            (self.cert_pem, self.key_pem, self.not_after) =
                self.ca.sign_serving(dns_names, now, lifetimes.serving)?;
            self.dns_names = dns_names.to_vec();
            return Ok(Step::RenewedServing);
        }
        Ok(Step::Unchanged)
    }

    /// The CA certificates the API server must trust now (`caBundle`): the current one, and the
    /// next or previous one during a replacement.
    pub fn ca_bundle(&self) -> String {
        let mut out = self.ca.cert_pem.clone();
        if let Some((next, _)) = &self.next_ca {
            out.push_str(&next.cert_pem);
        }
        if let Some((previous, _)) = &self.previous_ca {
            out.push_str(previous);
        }
        out
    }

    /// The bundle as string fields, as a Secret stores them (`tls.crt`, `tls.key`, `ca.crt` are
    /// the usual names, so other tools can read the Secret).
    pub fn to_fields(&self) -> BTreeMap<String, String> {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string()
        };
        let mut fields = BTreeMap::from([
            ("tls.crt".to_owned(), self.cert_pem.clone()),
            ("tls.key".to_owned(), self.key_pem.clone()),
            ("ca.crt".to_owned(), self.ca.cert_pem.clone()),
            ("ca.key".to_owned(), self.ca.key_pem.clone()),
            ("ca-bundle.crt".to_owned(), self.ca_bundle()),
            ("tls-not-after".to_owned(), secs(self.not_after)),
            ("ca-not-after".to_owned(), secs(self.ca.not_after)),
            ("dns-names".to_owned(), self.dns_names.join(",")),
        ]);
        if let Some((next, since)) = &self.next_ca {
            fields.insert("ca-next.crt".to_owned(), next.cert_pem.clone());
            fields.insert("ca-next.key".to_owned(), next.key_pem.clone());
            fields.insert("ca-next-not-after".to_owned(), secs(next.not_after));
            fields.insert("ca-next-since".to_owned(), secs(*since));
        }
        if let Some((previous, since)) = &self.previous_ca {
            fields.insert("ca-previous.crt".to_owned(), previous.clone());
            fields.insert("ca-previous-since".to_owned(), secs(*since));
        }
        fields
    }

    /// Reads back what [`Bundle::to_fields`] wrote.
    pub fn from_fields(fields: &BTreeMap<String, String>) -> Result<Self, CertError> {
        let text = |key: &'static str| {
            fields
                .get(key)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or(CertError::Field(key))
        };
        let time = |key: &'static str| -> Result<SystemTime, CertError> {
            let secs: u64 = text(key)?.parse().map_err(|_| CertError::Field(key))?;
            Ok(UNIX_EPOCH + Duration::from_secs(secs))
        };
        let next_ca = match fields.get("ca-next.crt") {
            Some(_) => Some((
                Authority {
                    cert_pem: text("ca-next.crt")?,
                    key_pem: text("ca-next.key")?,
                    not_after: time("ca-next-not-after")?,
                },
                time("ca-next-since")?,
            )),
            None => None,
        };
        let previous_ca = match fields.get("ca-previous.crt") {
            Some(_) => Some((text("ca-previous.crt")?, time("ca-previous-since")?)),
            None => None,
        };
        let bundle = Bundle {
            ca: Authority {
                cert_pem: text("ca.crt")?,
                key_pem: text("ca.key")?,
                not_after: time("ca-not-after")?,
            },
            next_ca,
            previous_ca,
            cert_pem: text("tls.crt")?,
            key_pem: text("tls.key")?,
            not_after: time("tls-not-after")?,
            dns_names: text("dns-names")?.split(',').map(str::to_owned).collect(),
        };
        // Refuse a pair that would not serve, rather than find out at the next handshake.
        certified_key(&bundle.cert_pem, &bundle.key_pem)?;
        Ok(bundle)
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
    // A key of another certificate (files caught mid-rotation) would fail every handshake.
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(CertError::Key)
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
        let first = handshake(Arc::clone(&config), &bundle.ca.cert_pem)
            .await
            .unwrap();

        let mut renewed = bundle.clone();
        let due_now = Lifetimes {
            renew_before: lifetimes.serving * 2,
            ..lifetimes
        };
        let step = renewed
            .advance(
                &names(),
                SystemTime::now(),
                due_now,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(step, Step::RenewedServing);
        assert_eq!(
            renewed.ca.cert_pem, bundle.ca.cert_pem,
            "same CA: caBundle stays valid"
        );
        assert_ne!(renewed.cert_pem, bundle.cert_pem);
        resolver
            .replace(&renewed.cert_pem, &renewed.key_pem)
            .unwrap();
        let second = handshake(config, &bundle.ca.cert_pem).await.unwrap();
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
            handshake(server(resolver), &stranger.ca.cert_pem)
                .await
                .is_err()
        );
    }

    /// Whether `cert_pem` verifies for `names()[0]` against the CAs in `ca_bundle`, at `at`.
    fn trusted(cert_pem: &str, ca_bundle: &str, at: SystemTime) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from(names()[0].clone()).unwrap();
        let now =
            rustls_pki_types::UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], now)
            .is_ok()
    }

    #[test]
    fn through_years_of_rotations_every_served_certificate_is_trusted_by_old_and_new_bundles() {
        const HOUR: u64 = 3600;
        let lifetimes = Lifetimes {
            ca: Duration::from_secs(20 * 24 * HOUR),
            ca_renew_before: Duration::from_secs(6 * 24 * HOUR),
            serving: Duration::from_secs(4 * 24 * HOUR),
            renew_before: Duration::from_secs(2 * 24 * HOUR),
        };
        let overlap = Duration::from_secs(HOUR);
        let start = SystemTime::now();
        let mut bundle = Bundle::generate(&names(), start, lifetimes).unwrap();
        let mut steps = Vec::new();
        for hour in 1..=(60 * 24) {
            let now = start + Duration::from_secs(hour * HOUR);
            let before = bundle.clone();
            let step = bundle.advance(&names(), now, lifetimes, overlap).unwrap();
            // A replica that has not reloaded yet, and an API server that has not seen the new
            // caBundle yet, must both still work.
            assert!(
                trusted(&before.cert_pem, &bundle.ca_bundle(), now),
                "{step:?} at hour {hour}: old certificate, new bundle"
            );
            assert!(
                trusted(&bundle.cert_pem, &before.ca_bundle(), now),
                "{step:?} at hour {hour}: new certificate, old bundle"
            );
            assert!(trusted(&bundle.cert_pem, &bundle.ca_bundle(), now));
            if step != Step::Unchanged {
                steps.push(step);
            }
            let round_trip = Bundle::from_fields(&bundle.to_fields()).unwrap();
            assert!(round_trip == bundle, "a Secret holds the whole state");
        }
        let count = |s: Step| steps.iter().filter(|x| **x == s).count();
        assert!(count(Step::SwitchedCa) >= 3, "{steps:?}");
        assert_eq!(count(Step::AnnouncedCa), count(Step::SwitchedCa));
        assert!(count(Step::RenewedServing) >= 10, "{steps:?}");
        let switch = steps.iter().position(|s| *s == Step::SwitchedCa).unwrap();
        assert_eq!(
            &steps[switch - 1..=switch + 1],
            [Step::AnnouncedCa, Step::SwitchedCa, Step::RetiredCa]
        );
    }

    #[test]
    fn a_damaged_stored_bundle_is_refused() {
        let bundle = Bundle::generate(&names(), SystemTime::now(), Lifetimes::default()).unwrap();
        let mut fields = bundle.to_fields();
        fields.remove("ca.key");
        assert!(matches!(
            Bundle::from_fields(&fields),
            Err(CertError::Field("ca.key"))
        ));
        let mut fields = bundle.to_fields();
        fields.insert("tls.key".into(), "garbage".into());
        assert!(Bundle::from_fields(&fields).is_err());
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
        let other = Bundle::generate(&names(), SystemTime::now(), Lifetimes::default()).unwrap();
        assert!(
            matches!(
                resolver.replace(&bundle.cert_pem, &other.key_pem),
                Err(CertError::Key(_))
            ),
            "a key of another certificate is refused"
        );
        assert!(
            format!("{bundle:?}").contains("not_after")
                && !format!("{bundle:?}").contains("PRIVATE"),
            "no keys in Debug"
        );
    }
}
