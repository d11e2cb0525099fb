//! STS over the awsQuery protocol: `AssumeRoleWithWebIdentity` (IRSA, verified against the
//! cluster's OIDC keys and the role's trust policy), `AssumeRole` and `GetCallerIdentity`.

use std::{collections::HashMap, time::Duration};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use serde::Deserialize;

use super::{
    Emulator, Principal,
    config::{OidcProvider, glob_match},
    error::{AwsError, xml_escape},
    request_id,
};

const STS_NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

fn sender(status: StatusCode, code: &'static str, message: impl Into<String>) -> AwsError {
    AwsError::new(status, code, message).query()
}

/// Answers one STS request (`POST /`, form-encoded).
pub async fn handle(emulator: &Emulator, headers: &HeaderMap, body: &[u8]) -> Response {
    match dispatch(emulator, headers, body).await {
        Ok(xml) => {
            let mut r = (StatusCode::OK, xml).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
            r
        }
        Err(e) => e.query().into_response(),
    }
}

async fn dispatch(
    emulator: &Emulator,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, AwsError> {
    let params: HashMap<String, String> = serde_urlencoded::from_bytes(body).map_err(|_| {
        sender(
            StatusCode::BAD_REQUEST,
            "MalformedInput",
            "The request body is not form-encoded.",
        )
    })?;
    let action = params.get("Action").map(String::as_str).unwrap_or_default();
    let config = emulator.config();
    let faults = &config.faults;
    if let Some(ms) = faults.sts_delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // An injected outage is recorded like any other answer, so tests can count the calls it took.
    let result = match action {
        _ if faults.sts_unavailable => Err(sender(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service is unavailable. Please try again later.",
        )),
        "AssumeRoleWithWebIdentity" => assume_role_with_web_identity(emulator, &params).await,
        "AssumeRole" => {
            let caller = emulator
                .authenticate(headers, body, "POST", "/", "sts")
                .map_err(AwsError::query)?;
            assume_role(emulator, &caller.principal, &params)
        }
        "GetCallerIdentity" => {
            let caller = emulator
                .authenticate(headers, body, "POST", "/", "sts")
                .map_err(AwsError::query)?;
            Ok(get_caller_identity(&caller.principal))
        }
        other => Err(sender(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("Could not find operation {other} for version 2011-06-15"),
        )),
    };
    emulator.record(super::Record::sts(
        action,
        result.as_ref().err().map(|e| e.code),
    ));
    result
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, AwsError> {
    params.get(name).map(String::as_str).filter(|v| !v.is_empty()).ok_or_else(|| {
        sender(StatusCode::BAD_REQUEST, "ValidationError", format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"))
    })
}

fn duration(emulator: &Emulator, params: &HashMap<String, String>) -> Duration {
    let asked = params
        .get("DurationSeconds")
        .and_then(|d| d.parse::<u64>().ok());
    let limit = emulator.config().credential_lifetime_seconds;
    Duration::from_secs(asked.map_or(limit, |a| a.min(limit)))
}

/// The claims of a Kubernetes service-account token that matter here.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

async fn assume_role_with_web_identity(
    emulator: &Emulator,
    params: &HashMap<String, String>,
) -> Result<String, AwsError> {
    let role_arn = param(params, "RoleArn")?;
    let session = param(params, "RoleSessionName")?;
    let token = param(params, "WebIdentityToken")?;
    let oidc = emulator.config().oidc.clone().ok_or_else(|| {
        sender(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "No OpenIDConnect provider found in your account",
        )
    })?;
    let subject = verify_web_identity(emulator, &oidc, token).await?;
    let role = emulator
        .config()
        .roles
        .iter()
        .find(|r| r.arn == role_arn)
        .cloned();
    let trusted = role
        .as_ref()
        .is_some_and(|r| r.trusted_subjects.iter().any(|p| glob_match(p, &subject)));
    let Some(role) = role.filter(|_| trusted) else {
        return Err(sender(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        ));
    };
    let issued = emulator.issue_role_credentials(&role, session, duration(emulator, params));
    Ok(format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{STS_NS}\">\n  <AssumeRoleWithWebIdentityResult>\n    <SubjectFromWebIdentityToken>{}</SubjectFromWebIdentityToken>\n    <Audience>{}</Audience>\n{}    <Provider>{}</Provider>\n  </AssumeRoleWithWebIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n</AssumeRoleWithWebIdentityResponse>\n",
        xml_escape(&subject),
        xml_escape(&oidc.audience),
        issued.xml(),
        xml_escape(&oidc.issuer),
        request_id()
    ))
}

/// Checks a web identity token as IAM does for an OIDC provider: signature by one of the
/// issuer's keys, issuer, audience, expiry. Returns the subject.
pub(super) async fn verify_web_identity(
    emulator: &Emulator,
    oidc: &OidcProvider,
    token: &str,
) -> Result<String, AwsError> {
    let invalid = |m: &str| {
        sender(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            m.to_owned(),
        )
    };
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| invalid("Couldn't parse the web identity token"))?;
    if header.alg != Algorithm::RS256 {
        return Err(invalid("The web identity token is not signed with RS256"));
    }
    let kid = header.kid.unwrap_or_default();
    let jwk = match emulator.jwks().find(&kid).cloned() {
        Some(jwk) => jwk,
        // An unknown key id may be a rotation: refetch once, as IAM does.
        None => emulator.refresh_jwks(oidc).await.map_err(|e| invalid(&e))?.find(&kid).cloned().ok_or_else(|| {
            invalid("The web identity token was signed with a key the OpenIDConnect provider does not publish")
        })?,
    };
    let key = DecodingKey::from_jwk(&jwk)
        .map_err(|_| invalid("The provider's signing key is unusable"))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[&oidc.issuer]);
    validation.set_audience(&[&oidc.audience]);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
        Ok(data) => Ok(data.claims.sub),
        Err(e) => Err(match e.kind() {
            ErrorKind::ExpiredSignature => sender(
                StatusCode::BAD_REQUEST,
                "ExpiredTokenException",
                "Token expired: current date/time must be before the expiration date/time.",
            ),
            ErrorKind::InvalidAudience => invalid("Incorrect token audience"),
            ErrorKind::InvalidIssuer => invalid(&format!(
                "No OpenIDConnect provider found in your account for the token's issuer (expected {})",
                oidc.issuer
            )),
            ErrorKind::InvalidSignature => invalid("The web identity token's signature is invalid"),
            _ => invalid("The web identity token is invalid"),
        }),
    }
}

/// Fetches the issuer's JSON Web Key Set over HTTPS, anonymously, as IAM does.
pub async fn fetch_jwks(oidc: &OidcProvider) -> Result<JwkSet, String> {
    let url = oidc
        .jwks_url
        .clone()
        .unwrap_or_else(|| format!("{}/openid/v1/jwks", oidc.issuer.trim_end_matches('/')));
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad JWKS URL {url}: {e}"))?;
    let base: http::Uri = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority()
            .map(http::uri::Authority::as_str)
            .unwrap_or_default()
    )
    .parse()
    .map_err(|e| format!("bad JWKS URL {url}: {e}"))?;
    // The AWS SDKs bring aws-lc-rs and kube brings ring: say which one rustls uses here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(base);
    if let Some(ca_file) = &oidc.ca_file {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let certs: Result<Vec<Vec<u8>>, _> = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("reading {ca_file}: {e}"))?
            .map(|c| c.map(|c| c.to_vec()))
            .collect();
        config.root_cert = Some(certs.map_err(|e| format!("reading {ca_file}: {e}"))?);
    }
    let client = kube::Client::try_from(config).map_err(|e| format!("JWKS client: {e}"))?;
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client
        .request_text(request)
        .await
        .map_err(|e| format!("fetching {url}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("parsing {url}: {e}"))
}

fn assume_role(
    emulator: &Emulator,
    caller: &Principal,
    params: &HashMap<String, String>,
) -> Result<String, AwsError> {
    let role_arn = param(params, "RoleArn")?;
    let session = param(params, "RoleSessionName")?;
    let caller_arn = caller.arn();
    let role = emulator
        .config()
        .roles
        .iter()
        .find(|r| r.arn == role_arn)
        .cloned();
    let trusted = role.as_ref().is_some_and(|r| {
        r.trusted_principals
            .iter()
            .any(|p| glob_match(p, &caller_arn))
    });
    let Some(role) = role.filter(|_| trusted) else {
        return Err(sender(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
            ),
        ));
    };
    let issued = emulator.issue_role_credentials(&role, session, duration(emulator, params));
    Ok(format!(
        "<AssumeRoleResponse xmlns=\"{STS_NS}\">\n  <AssumeRoleResult>\n{}  </AssumeRoleResult>\n  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n</AssumeRoleResponse>\n",
        issued.xml(),
        request_id()
    ))
}

fn get_caller_identity(caller: &Principal) -> String {
    format!(
        "<GetCallerIdentityResponse xmlns=\"{STS_NS}\">\n  <GetCallerIdentityResult>\n    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{}</Account>\n  </GetCallerIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n</GetCallerIdentityResponse>\n",
        xml_escape(&caller.arn()),
        xml_escape(&caller.user_id()),
        super::config::ACCOUNT_ID,
        request_id()
    )
}
