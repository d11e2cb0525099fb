//! SigV4 verification: rebuild the canonical request with `aws-sigv4`, re-sign it with the
//! secret we issued, and compare, as AWS does. Errors carry AWS's codes and wording.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use axum::http::{HeaderMap, StatusCode};

use super::error::AwsError;

/// What a valid signature tells us about the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedBy {
    pub access_key_id: String,
    pub region: String,
}

/// The secret behind an access key, as the credential store knows it.
#[derive(Clone, Debug)]
pub struct KnownKey {
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expires: Option<SystemTime>,
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn incomplete() -> AwsError {
    AwsError::new(
        StatusCode::FORBIDDEN,
        "IncompleteSignatureException",
        "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
    )
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AwsError> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        AwsError::new(
            StatusCode::FORBIDDEN,
            "IncompleteSignatureException",
            "Unsupported signing algorithm: only AWS4-HMAC-SHA256 is accepted.",
        )
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (credential, signed, signature) = (
        credential.ok_or_else(incomplete)?,
        signed.ok_or_else(incomplete)?,
        signature.ok_or_else(incomplete)?,
    );
    let mut scope = credential.split('/');
    let (Some(access_key_id), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(incomplete());
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Parses `x-amz-date` (`20261125T152300Z`).
pub fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let bytes = value.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| value.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Verifies the request's signature for `service`, looking the key up with `lookup`.
pub fn verify(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    service: &str,
    max_skew: Duration,
    lookup: impl FnOnce(&str) -> Option<KnownKey>,
) -> Result<SignedBy, AwsError> {
    let auth_header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AwsError::new(
                StatusCode::FORBIDDEN,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })?;
    let auth = parse_authorization(auth_header)?;
    if auth.service != service {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{service}'."),
        ));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let time = parse_amz_date(amz_date).ok_or_else(|| {
        AwsError::new(
            StatusCode::FORBIDDEN,
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    })?;
    if !amz_date.starts_with(auth.date) {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.",
        ));
    }
    let now = SystemTime::now();
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > max_skew {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            format!(
                "Signature expired: {amz_date} is now earlier or later than the allowed window of {} seconds.",
                max_skew.as_secs()
            ),
        ));
    }
    let key = lookup(auth.access_key_id).ok_or_else(|| {
        AwsError::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    })?;
    let sent_token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    if sent_token != key.session_token.as_deref() {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if key.expires.is_some_and(|e| e <= now) {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "ExpiredTokenException",
            "The security token included in the request is expired",
        ));
    }

    let signed_headers = auth
        .signed_headers
        .iter()
        .filter_map(|name| Some((*name, headers.get(*name)?.to_str().ok()?)));
    let signable = SignableRequest::new(
        method,
        path_and_query,
        signed_headers,
        SignableBody::Bytes(body),
    )
    .map_err(|e| {
        AwsError::new(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            format!("The request could not be canonicalized: {e}"),
        )
    })?;
    let identity = Credentials::new(
        auth.access_key_id,
        key.secret_access_key,
        key.session_token,
        None,
        "emulator",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| AwsError::internal())?
        .into();
    let expected = sign(signable, &params)
        .map_err(|_| AwsError::internal())?
        .into_parts()
        .1;
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(AwsError::new(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(SignedBy {
        access_key_id: auth.access_key_id.to_owned(),
        region: auth.region.to_owned(),
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_outside_the_skew_window_is_refused() {
        let identity = Credentials::new("AKID", "secret", None, None, "test").into();
        let then = SystemTime::now() - Duration::from_mins(10);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("bedrock")
            .time(then)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers = [("host", "127.0.0.1:1234")];
        let signable = SignableRequest::new(
            "GET",
            "/foundation-models",
            headers.iter().copied(),
            SignableBody::Bytes(b""),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut request = http::Request::builder()
            .uri("/foundation-models")
            .body(())
            .unwrap();
        request
            .headers_mut()
            .insert("host", "127.0.0.1:1234".parse().unwrap());
        instructions.apply_to_request_http1x(&mut request);
        let lookup = |_: &str| {
            Some(KnownKey {
                secret_access_key: "secret".into(),
                session_token: None,
                expires: None,
            })
        };
        let err = verify(
            "GET",
            "/foundation-models",
            request.headers(),
            b"",
            "bedrock",
            Duration::from_mins(5),
            lookup,
        )
        .unwrap_err();
        assert_eq!(err.code, "InvalidSignatureException");
        assert!(
            err.message.starts_with("Signature expired"),
            "{}",
            err.message
        );
        // The same request is fine with a wider window: only the skew was wrong.
        verify(
            "GET",
            "/foundation-models",
            request.headers(),
            b"",
            "bedrock",
            Duration::from_mins(15),
            lookup,
        )
        .unwrap();
    }

    #[test]
    fn parses_amz_dates() {
        let t = parse_amz_date("19700102T000001Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 86_401);
        let t = parse_amz_date("20261125T152300Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_795_620_180
        );
        assert!(parse_amz_date("2026-11-25T15:23:00Z").is_none());
        assert!(parse_amz_date("20261325T152300Z").is_none());
    }

    #[test]
    fn a_request_signed_by_aws_sigv4_verifies_and_a_tampered_one_does_not() {
        let creds = Credentials::new("AKID", "secret", Some("token".into()), None, "test");
        let identity = creds.into();
        let now = SystemTime::now();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("bedrock")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let body = br#"{"messages":[]}"#;
        let path = "/model/anthropic.claude-haiku-4-5-20251001-v1%3A0/converse";
        let host = [
            ("host", "127.0.0.1:1234"),
            ("content-type", "application/json"),
        ];
        let signable = SignableRequest::new(
            "POST",
            path,
            host.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut request = http::Request::builder()
            .method("POST")
            .uri(path)
            .body(())
            .unwrap();
        for (k, v) in host {
            request.headers_mut().insert(k, v.parse().unwrap());
        }
        instructions.apply_to_request_http1x(&mut request);
        let lookup = |_: &str| {
            Some(KnownKey {
                secret_access_key: "secret".into(),
                session_token: Some("token".into()),
                expires: None,
            })
        };
        let skew = Duration::from_mins(5);
        let ok = verify(
            "POST",
            path,
            request.headers(),
            body,
            "bedrock",
            skew,
            lookup,
        )
        .unwrap();
        assert_eq!(ok.region, "us-east-1");
        let err = verify(
            "POST",
            path,
            request.headers(),
            b"{}",
            "bedrock",
            skew,
            lookup,
        )
        .unwrap_err();
        assert_eq!(err.code, "InvalidSignatureException");
        let err = verify("POST", path, request.headers(), body, "sts", skew, lookup).unwrap_err();
        assert_eq!(err.code, "InvalidSignatureException");
        let wrong_secret = |_: &str| {
            Some(KnownKey {
                secret_access_key: "nope".into(),
                session_token: Some("token".into()),
                expires: None,
            })
        };
        assert_eq!(
            verify(
                "POST",
                path,
                request.headers(),
                body,
                "bedrock",
                skew,
                wrong_secret
            )
            .unwrap_err()
            .code,
            "InvalidSignatureException"
        );
        let expired = |_: &str| {
            Some(KnownKey {
                secret_access_key: "secret".into(),
                session_token: Some("token".into()),
                expires: Some(now - Duration::from_secs(1)),
            })
        };
        assert_eq!(
            verify(
                "POST",
                path,
                request.headers(),
                body,
                "bedrock",
                skew,
                expired
            )
            .unwrap_err()
            .code,
            "ExpiredTokenException"
        );
        assert_eq!(
            verify(
                "POST",
                path,
                request.headers(),
                body,
                "bedrock",
                skew,
                |_| None
            )
            .unwrap_err()
            .code,
            "UnrecognizedClientException"
        );
    }
}
