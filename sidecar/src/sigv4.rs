//! SigV4 for the request the sidecar signs on every call: Converse, a `POST` of a JSON body.
//!
//! `aws-sigv4` signs any request, so it builds the canonical request generically (a `String` per
//! part, `fmt` for each line, the headers sorted) and derives the signing key afresh each time,
//! which showed in profiles of the sidecar as a large share of its CPU. The Converse request
//! always has the same shape, so its canonical request is written in one pass, hashed with ring,
//! and the signing key (four HMACs) is derived once a day per region and key pair. A test keeps
//! the result equal to `aws-sigv4`'s.

use std::{fmt::Write as _, sync::Mutex, time::SystemTime};

use aws_credential_types::Credentials;
use http::{HeaderValue, Request, header};
use ring::{digest, hmac};

/// The signing name of Bedrock Runtime (its endpoint prefix is `bedrock-runtime`).
const SERVICE: &str = "bedrock";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Signing keys kept at once: one per region and key pair in use (rotating role credentials bring
/// a new pair each refresh, so the oldest is dropped first).
const KEYS_KEPT: usize = 8;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the request has no {0} header to sign")]
    MissingHeader(&'static str),
    #[error("the {0} header is not visible ASCII")]
    NotAscii(&'static str),
    #[error(
        "a query string or a `.`/`..` path segment, which this signer does not canonicalise: {0}"
    )]
    UnsupportedUri(String),
    #[error("the clock is before 1970 or past 9999")]
    Clock,
}

/// The day's signing keys, derived once and reused by every call signed that day.
#[derive(Default)]
pub struct SigV4Signer {
    keys: Mutex<Vec<DayKey>>,
}

struct DayKey {
    date: String,
    region: String,
    access_key_id: String,
    secret: String,
    key: hmac::Key,
}

impl SigV4Signer {
    /// Signs `req` (its `host` and `content-type` headers, method, path and `body`) for Bedrock
    /// Runtime in `region` at `now`: adds `x-amz-date`, `x-amz-security-token` when the credentials
    /// have a session token, and `authorization`.
    pub fn sign<B>(
        &self,
        req: &mut Request<B>,
        region: &str,
        credentials: &Credentials,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), SignError> {
        let (amz_date, date) = timestamps(now)?;
        let token = credentials.session_token();
        let host = header_str(req, header::HOST, "host")?;
        let content_type = header_str(req, header::CONTENT_TYPE, "content-type")?;
        let uri = req.uri();
        if uri.query().is_some() || uri.path().split('/').any(|s| s == "." || s == "..") {
            return Err(SignError::UnsupportedUri(uri.to_string()));
        }

        // The canonical request: headers in name order, values trimmed (none of ours has inner
        // runs of spaces), the path URI-encoded a second time as every service but S3 expects.
        let mut canonical = String::with_capacity(512 + token.map_or(0, str::len));
        canonical.push_str(req.method().as_str());
        canonical.push('\n');
        encode_path(&mut canonical, uri.path());
        canonical.push_str("\n\ncontent-type:");
        canonical.push_str(content_type.trim());
        canonical.push_str("\nhost:");
        canonical.push_str(host.trim());
        canonical.push_str("\nx-amz-date:");
        canonical.push_str(&amz_date);
        if let Some(token) = token {
            canonical.push_str("\nx-amz-security-token:");
            canonical.push_str(token.trim());
        }
        let signed_headers = if token.is_some() {
            "content-type;host;x-amz-date;x-amz-security-token"
        } else {
            "content-type;host;x-amz-date"
        };
        canonical.push_str("\n\n");
        canonical.push_str(signed_headers);
        canonical.push('\n');
        push_hex(
            &mut canonical,
            digest::digest(&digest::SHA256, body).as_ref(),
        );

        let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
        let mut string_to_sign = String::with_capacity(160);
        let _ = write!(string_to_sign, "{ALGORITHM}\n{amz_date}\n{scope}\n");
        push_hex(
            &mut string_to_sign,
            digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref(),
        );
        let key = self.signing_key(&date, region, credentials);
        let signature = hmac::sign(&key, string_to_sign.as_bytes());

        let mut authorization = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature=",
            credentials.access_key_id()
        );
        push_hex(&mut authorization, signature.as_ref());

        let headers = req.headers_mut();
        headers.insert("x-amz-date", ascii_value(amz_date, "x-amz-date")?);
        if let Some(token) = token {
            let mut value = ascii_value(token.to_owned(), "x-amz-security-token")?;
            value.set_sensitive(true);
            headers.insert("x-amz-security-token", value);
        }
        let mut value = ascii_value(authorization, "authorization")?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
        Ok(())
    }

    /// The key of `date` (YYYYMMDD) for `region` and the credentials' key pair, derived on first
    /// use.
    fn signing_key(&self, date: &str, region: &str, credentials: &Credentials) -> hmac::Key {
        let secret = credentials.secret_access_key();
        let same = |k: &DayKey| {
            k.date == date
                && k.region == region
                && k.access_key_id == credentials.access_key_id()
                && k.secret == secret
        };
        // A poisoned lock only means another thread panicked mid-update: derive without the cache.
        let Ok(mut keys) = self.keys.lock() else {
            return derive_key(secret, date, region);
        };
        if let Some(k) = keys.iter().find(|k| same(k)) {
            return k.key.clone();
        }
        let key = derive_key(secret, date, region);
        // Yesterday's keys are of no use any more; past that, the oldest goes.
        keys.retain(|k| k.date == date);
        if keys.len() >= KEYS_KEPT {
            keys.remove(0);
        }
        keys.push(DayKey {
            date: date.to_owned(),
            region: region.to_owned(),
            access_key_id: credentials.access_key_id().to_owned(),
            secret: secret.to_owned(),
            key: key.clone(),
        });
        key
    }
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
fn derive_key(secret: &str, date: &str, region: &str) -> hmac::Key {
    let mut k = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes()),
        date.as_bytes(),
    );
    for part in [region, SERVICE, "aws4_request"] {
        k = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()),
            part.as_bytes(),
        );
    }
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

/// (`20261127T033000Z`, `20261127`): the request's time and the scope's date, in UTC.
fn timestamps(now: SystemTime) -> Result<(String, String), SignError> {
    let at = jiff::tz::TimeZone::UTC
        .to_datetime(jiff::Timestamp::try_from(now).map_err(|_| SignError::Clock)?);
    if !(0..=9999).contains(&at.year()) {
        return Err(SignError::Clock);
    }
    let date = format!("{:04}{:02}{:02}", at.year(), at.month(), at.day());
    let amz_date = format!(
        "{date}T{:02}{:02}{:02}Z",
        at.hour(),
        at.minute(),
        at.second()
    );
    Ok((amz_date, date))
}

fn header_str<'a, B>(
    req: &'a Request<B>,
    name: header::HeaderName,
    label: &'static str,
) -> Result<&'a str, SignError> {
    req.headers()
        .get(name)
        .ok_or(SignError::MissingHeader(label))?
        .to_str()
        .map_err(|_| SignError::NotAscii(label))
}

fn ascii_value(value: String, label: &'static str) -> Result<HeaderValue, SignError> {
    HeaderValue::try_from(value).map_err(|_| SignError::NotAscii(label))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
}

/// Appends `path` URI-encoded as SigV4's canonical path wants it (`/` kept; empty is `/`).
fn encode_path(out: &mut String, path: &str) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        uri_encode(out, segment);
    }
}

/// Appends `value` URI-encoded: RFC 3986's unreserved characters kept, every other byte `%XX`
/// (upper case), as AWS encodes both a path label and a canonical path segment.
pub(crate) fn uri_encode(out: &mut String, value: &str) {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(UPPER[usize::from(b >> 4)]));
            out.push(char::from(UPPER[usize::from(b & 0xF)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use aws_sigv4::{
        http_request::{SignableBody, SignableRequest, SigningSettings, sign},
        sign::v4,
    };

    use super::*;

    fn request(host: &str, path: &str) -> Request<()> {
        Request::post(format!("http://{host}{path}"))
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "ai-sidecar/test")
            .body(())
            .unwrap()
    }

    /// What `aws-sigv4`, the SDK's signer, adds to the same request with default settings.
    fn reference(
        host: &str,
        path: &str,
        region: &str,
        credentials: &Credentials,
        body: &[u8],
        now: SystemTime,
    ) -> Request<()> {
        let mut req = request(host, path);
        let identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SERVICE)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()));
        let signable = SignableRequest::new(
            "POST",
            req.uri().to_string(),
            headers,
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
        req
    }

    fn headers(req: &Request<()>) -> Vec<(String, String)> {
        let mut out: Vec<_> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn signs_as_aws_sigv4_does() {
        let long_term = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let temporary = Credentials::new(
            "ASIAIOSFODNN7EXAMPLE",
            "secret/with+symbols=",
            Some("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ==".into()),
            None,
            "test",
        );
        let paths = [
            "/model/anthropic.claude-haiku-4-5-20251001-v1%3A0/converse",
            "/model/us.amazon.nova-lite-v1%3A0/converse",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-3-70b-instruct-v1%3A0/converse",
            "/model/mistral.mistral-large-2407-v1~0/converse",
        ];
        let hosts = [
            "bedrock-runtime.us-east-1.amazonaws.com",
            "127.0.0.1:4566",
            "[::1]:8080",
        ];
        let bodies: [&[u8]; 3] = [
            b"",
            br#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#,
            "{\"system\":[{\"text\":\"r\u{e9}sum\u{e9} \u{1F600}\"}]}".as_bytes(),
        ];
        let signer = SigV4Signer::default();
        // Midnight, a leap day, a time of day, and the next day with the same key pair (a new key).
        let times = [0, 1_709_164_800, 1_795_748_885, 1_795_835_285];
        let mut cases = 0;
        for (i, path) in paths.iter().enumerate() {
            for (j, host) in hosts.iter().enumerate() {
                for (k, body) in bodies.iter().enumerate() {
                    for credentials in [&long_term, &temporary] {
                        let at = times[(i + j + k) % times.len()];
                        let now = UNIX_EPOCH + Duration::from_secs(at);
                        let region = ["us-east-1", "eu-central-1"][(i + k) % 2];
                        let mut ours = request(host, path);
                        signer
                            .sign(&mut ours, region, credentials, body, now)
                            .unwrap();
                        let theirs = reference(host, path, region, credentials, body, now);
                        assert_eq!(headers(&ours), headers(&theirs), "{host}{path} at {at}");
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 72);
        // Every region and day above derived its key once; today's are kept, older days dropped.
        assert!(signer.keys.lock().unwrap().len() <= KEYS_KEPT);
    }

    #[test]
    fn secrets_are_marked_sensitive() {
        let credentials = Credentials::new("ASIAX", "s", Some("token".into()), None, "test");
        let mut req = request("localhost", "/model/m/converse");
        SigV4Signer::default()
            .sign(
                &mut req,
                "us-east-1",
                &credentials,
                b"{}",
                SystemTime::now(),
            )
            .unwrap();
        assert!(req.headers()["authorization"].is_sensitive());
        assert!(req.headers()["x-amz-security-token"].is_sensitive());
        assert!(!req.headers()["x-amz-date"].is_sensitive());
    }

    #[test]
    fn a_new_key_pair_gets_a_new_key() {
        let signer = SigV4Signer::default();
        let now = SystemTime::now();
        let sign = |akid: &str, secret: &str| {
            let mut req = request("localhost", "/model/m/converse");
            let credentials = Credentials::new(akid, secret, None, None, "test");
            signer
                .sign(&mut req, "us-east-1", &credentials, b"{}", now)
                .unwrap();
            req.headers()["authorization"].to_str().unwrap().to_owned()
        };
        let first = sign("AKIDONE", "one");
        assert_eq!(sign("AKIDONE", "one"), first);
        // The same key id with another secret must not reuse the cached key.
        let other = sign("AKIDONE", "two");
        assert_ne!(other, first);
        assert_eq!(signer.keys.lock().unwrap().len(), 2);
    }

    #[test]
    fn refuses_what_it_does_not_canonicalise() {
        let credentials = Credentials::new("AKID", "s", None, None, "test");
        let signer = SigV4Signer::default();
        for path in ["/model/m/converse?x=1", "/model/../converse"] {
            let mut req = request("localhost", path);
            let err = signer
                .sign(&mut req, "us-east-1", &credentials, b"", SystemTime::now())
                .unwrap_err();
            assert!(matches!(err, SignError::UnsupportedUri(_)), "{path}: {err}");
        }
        let mut req = Request::post("http://localhost/model/m/converse")
            .header(header::HOST, "localhost")
            .body(())
            .unwrap();
        let err = signer
            .sign(&mut req, "us-east-1", &credentials, b"", SystemTime::now())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the request has no content-type header to sign"
        );
    }
}
