//! The EKS Pod Identity agent: `GET /v1/credentials` with a pod's projected service-account token
//! (audience `pods.eks.amazonaws.com`) as the `Authorization` header, answered with temporary
//! credentials of the role associated with the token's service account, in the container
//! credentials format the SDKs read. The real agent (a DaemonSet on `169.254.170.23:80`) gets them
//! from EKS Auth's `AssumeRoleForPodIdentity`; its refusals are kept: a token that does not verify,
//! and a service account without an association.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{Emulator, config::OidcProvider, iso8601, random_token};

/// The service principal EKS assumes Pod Identity roles as.
const SERVICE_PRINCIPAL: &str = "pods.eks.amazonaws.com";

/// A refusal: its code (for the request log) and the agent's answer.
type Refusal = (&'static str, Response);

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    let answer = (
        status,
        Json(json!({"code": code, "message": message.into()})),
    );
    (code, answer.into_response())
}

/// Answers the agent's one route.
pub async fn credentials(State(emulator): State<Emulator>, headers: HeaderMap) -> Response {
    let answer = issue(&emulator, &headers).await;
    emulator.record(super::Record::sts(
        "AssumeRoleForPodIdentity",
        answer.as_ref().err().map(|(code, _)| *code),
    ));
    match answer {
        Ok(body) => Json(body).into_response(),
        Err((code, response)) => {
            tracing::debug!(code, "pod identity refused");
            response
        }
    }
}

async fn issue(emulator: &Emulator, headers: &HeaderMap) -> Result<serde_json::Value, Refusal> {
    let denied = |message: String| refused(StatusCode::FORBIDDEN, "AccessDeniedException", message);
    let invalid_token =
        |message: String| refused(StatusCode::BAD_REQUEST, "InvalidTokenException", message);
    let config = emulator.config();
    let (Some(pod_identity), Some(oidc)) = (config.pod_identity.clone(), config.oidc.clone())
    else {
        return Err(denied(
            "EKS Pod Identity is not set up in this cluster (no agent configuration)".into(),
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            invalid_token(
                "The Authorization header with the service account token is missing".into(),
            )
        })?;
    // The cluster's issuer and keys, with the agent's audience.
    let provider = OidcProvider {
        audience: pod_identity.audience.clone(),
        ..oidc
    };
    let subject = super::sts::verify_web_identity(emulator, &provider, token)
        .await
        .map_err(|e| invalid_token(e.message))?;
    let account = subject
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    let association = account.and_then(|(namespace, service_account)| {
        pod_identity
            .associations
            .iter()
            .find(|a| a.namespace == namespace && a.service_account == service_account)
    });
    let Some(association) = association else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("No Pod Identity association for {subject}"),
        ));
    };
    let role = config
        .roles
        .iter()
        .find(|r| r.arn == association.role_arn)
        .cloned()
        .ok_or_else(|| {
            denied(format!(
                "The associated role {} does not exist",
                association.role_arn
            ))
        })?;
    // EKS assumes the role as the service principal, which its trust policy must allow.
    if !role
        .trusted_principals
        .iter()
        .any(|p| p == SERVICE_PRINCIPAL)
    {
        return Err(denied(format!(
            "The trust policy of {} does not allow {SERVICE_PRINCIPAL} to call sts:AssumeRole and sts:TagSession",
            role.arn
        )));
    }
    // EKS names the session after the cluster and the pod; the token's service account here.
    let session = format!(
        "eks-e2e-{}-{}",
        account.map_or("pod", |(_, sa)| sa),
        random_token(4)
    );
    let session: String = session.chars().take(64).collect();
    let issued = emulator.issue_role_credentials(
        &role,
        &session,
        std::time::Duration::from_secs(config.credential_lifetime_seconds),
    );
    Ok(json!({
        "AccessKeyId": issued.access_key_id,
        "SecretAccessKey": issued.secret_access_key,
        "Token": issued.session_token,
        "AccountId": super::config::ACCOUNT_ID,
        "Expiration": iso8601(issued.expiration),
    }))
}
