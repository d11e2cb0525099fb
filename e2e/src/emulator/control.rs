//! The Bedrock control plane: guardrails (create, get, update, version, delete, list) and the
//! foundation-model catalogue of each region.

use std::{collections::HashMap, time::SystemTime};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    Caller, Emulator, Record,
    config::ACCOUNT_ID,
    error::AwsError,
    guardrails::{Guardrail, Policy},
    iso8601, random_token,
};

fn done(
    emulator: &Emulator,
    operation: &str,
    caller: Option<&Caller>,
    result: Result<(StatusCode, Value), AwsError>,
) -> Response {
    emulator.record(Record {
        service: "bedrock",
        operation: operation.to_owned(),
        region: caller.map(|c| c.region.clone()),
        principal: caller.map(|c| c.principal.arn()),
        error: result.as_ref().err().map(|e| e.code),
        ..Record::default()
    });
    match result {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, AwsError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| AwsError::validation("The request body is not valid JSON."))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(AwsError::validation(
            "The request body must be a JSON object.",
        ))
    }
}

fn not_found(id: &str) -> AwsError {
    AwsError::not_found(format!("The guardrail {id} was not found."))
}

pub async fn create_guardrail(
    State(emulator): State<Emulator>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "POST", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|caller| {
        let request = parse_body(&body)?;
        let policy = Policy::from_request(request.clone()).map_err(AwsError::validation)?;
        let mut store = emulator.0.guardrails.lock().map_err(|_| AwsError::internal())?;
        if let Some(token) = request["clientRequestToken"].as_str()
            && let Some(g) = store.create_tokens.get(token).and_then(|id| store.by_id.get(id))
        {
            {
                return Ok((StatusCode::ACCEPTED, json!({ "guardrailId": g.id, "guardrailArn": g.arn, "version": "DRAFT", "createdAt": iso8601(g.created_at) })));
            }
        }
        if store.by_id.values().any(|g| g.draft.name() == policy.name()) {
            return Err(AwsError::conflict(format!("A guardrail named {} already exists.", policy.name())));
        }
        let id = random_token(12);
        let now = SystemTime::now();
        let guardrail = Guardrail {
            arn: format!("arn:aws:bedrock:{}:{ACCOUNT_ID}:guardrail/{id}", caller.region),
            id: id.clone(),
            draft: policy,
            versions: std::collections::BTreeMap::new(),
            created_at: now,
            updated_at: now,
            pending: Some(("CREATING", emulator.config().guardrail_transition_gets)),
        };
        let answer = json!({ "guardrailId": id, "guardrailArn": guardrail.arn, "version": "DRAFT", "createdAt": iso8601(now) });
        if let Some(token) = request["clientRequestToken"].as_str() {
            store.create_tokens.insert(token.to_owned(), id.clone());
        }
        store.by_id.insert(id, guardrail);
        Ok((StatusCode::ACCEPTED, answer))
    });
    done(&emulator, "CreateGuardrail", caller.as_ref().ok(), result)
}

pub async fn get_guardrail(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "GET", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|_| {
        let mut store = emulator
            .0
            .guardrails
            .lock()
            .map_err(|_| AwsError::internal())?;
        let g = store.find_mut(&id).ok_or_else(|| not_found(&id))?;
        let version = q.get("guardrailVersion").map_or("DRAFT", String::as_str);
        let status = match &mut g.pending {
            Some((status, remaining)) if *remaining > 0 => {
                *remaining -= 1;
                *status
            }
            _ => "READY",
        };
        let policy = g.at(version).ok_or_else(|| {
            AwsError::not_found(format!(
                "Version {version} of guardrail {id} was not found."
            ))
        })?;
        let mut out = policy.describe();
        out.insert("name".into(), json!(policy.name()));
        out.insert("guardrailId".into(), json!(g.id));
        out.insert("guardrailArn".into(), json!(g.arn));
        out.insert(
            "version".into(),
            json!(if version.is_empty() { "DRAFT" } else { version }),
        );
        out.insert("status".into(), json!(status));
        out.insert("createdAt".into(), json!(iso8601(g.created_at)));
        out.insert("updatedAt".into(), json!(iso8601(g.updated_at)));
        Ok((StatusCode::OK, Value::Object(out)))
    });
    done(&emulator, "GetGuardrail", caller.as_ref().ok(), result)
}

pub async fn update_guardrail(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "PUT", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|_| {
        let policy = Policy::from_request(parse_body(&body)?).map_err(AwsError::validation)?;
        let transition = emulator.config().guardrail_transition_gets;
        let mut store = emulator.0.guardrails.lock().map_err(|_| AwsError::internal())?;
        if store.by_id.values().any(|g| g.id != id && g.draft.name() == policy.name()) {
            return Err(AwsError::conflict(format!("A guardrail named {} already exists.", policy.name())));
        }
        let g = store.find_mut(&id).ok_or_else(|| not_found(&id))?;
        g.draft = policy;
        g.updated_at = SystemTime::now();
        g.pending = Some(("UPDATING", transition));
        Ok((StatusCode::ACCEPTED, json!({ "guardrailId": g.id, "guardrailArn": g.arn, "version": "DRAFT", "updatedAt": iso8601(g.updated_at) })))
    });
    done(&emulator, "UpdateGuardrail", caller.as_ref().ok(), result)
}

pub async fn create_guardrail_version(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "POST", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|_| {
        let request = if body.is_empty() {
            json!({})
        } else {
            parse_body(&body)?
        };
        let transition = emulator.config().guardrail_transition_gets;
        let mut store = emulator
            .0
            .guardrails
            .lock()
            .map_err(|_| AwsError::internal())?;
        let token = request["clientRequestToken"]
            .as_str()
            .map(|t| (id.clone(), t.to_owned()));
        if let Some(version) = token.as_ref().and_then(|t| store.version_tokens.get(t)) {
            return Ok((
                StatusCode::ACCEPTED,
                json!({ "guardrailId": id, "version": version.to_string() }),
            ));
        }
        let g = store.find_mut(&id).ok_or_else(|| not_found(&id))?;
        let version = g.versions.keys().next_back().map_or(1, |v| v + 1);
        let description = request["description"].as_str().map(str::to_owned);
        g.versions.insert(version, (g.draft.clone(), description));
        g.pending = Some(("VERSIONING", transition));
        let gid = g.id.clone();
        if let Some(t) = token {
            store.version_tokens.insert(t, version);
        }
        Ok((
            StatusCode::ACCEPTED,
            json!({ "guardrailId": gid, "version": version.to_string() }),
        ))
    });
    done(
        &emulator,
        "CreateGuardrailVersion",
        caller.as_ref().ok(),
        result,
    )
}

pub async fn delete_guardrail(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "DELETE", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|_| {
        let mut store = emulator
            .0
            .guardrails
            .lock()
            .map_err(|_| AwsError::internal())?;
        let key = store
            .find(&id)
            .map(|g| g.id.clone())
            .ok_or_else(|| not_found(&id))?;
        match q.get("guardrailVersion").map(String::as_str) {
            None | Some("" | "DRAFT") => {
                store.by_id.remove(&key);
                store.create_tokens.retain(|_, v| *v != key);
                store.version_tokens.retain(|(g, _), _| *g != key);
            }
            Some(v) => {
                let g = store.find_mut(&key).ok_or_else(|| not_found(&id))?;
                let n: u32 = v
                    .parse()
                    .map_err(|_| AwsError::validation(format!("Invalid guardrail version {v}.")))?;
                g.versions.remove(&n).ok_or_else(|| {
                    AwsError::not_found(format!("Version {v} of guardrail {id} was not found."))
                })?;
            }
        }
        Ok((StatusCode::ACCEPTED, json!({})))
    });
    done(&emulator, "DeleteGuardrail", caller.as_ref().ok(), result)
}

pub async fn list_guardrails(
    State(emulator): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "GET", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|_| {
        let store = emulator.0.guardrails.lock().map_err(|_| AwsError::internal())?;
        let summary = |g: &Guardrail, version: String, policy: &Policy| {
            json!({ "id": g.id, "arn": g.arn, "status": "READY", "name": policy.name(), "description": policy.config["description"],
                    "version": version, "createdAt": iso8601(g.created_at), "updatedAt": iso8601(g.updated_at) })
        };
        let all: Vec<Value> = match q.get("guardrailIdentifier") {
            // With an identifier: every version of that guardrail; without: the DRAFT of each.
            Some(identifier) => {
                let g = store.find(identifier).ok_or_else(|| not_found(identifier))?;
                std::iter::once(summary(g, "DRAFT".into(), &g.draft))
                    .chain(g.versions.iter().map(|(v, (p, _))| summary(g, v.to_string(), p)))
                    .collect()
            }
            None => store.by_id.values().map(|g| summary(g, "DRAFT".into(), &g.draft)).collect(),
        };
        let (page, next) = page(all, &q, 100);
        Ok((StatusCode::OK, json!({ "guardrails": page, "nextToken": next })))
    });
    done(&emulator, "ListGuardrails", caller.as_ref().ok(), result)
}

/// One page of a list operation: `maxResults` items (1 to 1000, `default_max` when absent) from
/// the offset in `nextToken`, and the token of the next page if there is one.
fn page(
    mut all: Vec<Value>,
    q: &HashMap<String, String>,
    default_max: usize,
) -> (Vec<Value>, Option<String>) {
    let start: usize = q.get("nextToken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let max: usize = q
        .get("maxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(default_max)
        .clamp(1, 1000);
    let rest = all.split_off(start.min(all.len()));
    let next = (rest.len() > max).then(|| (start + max).to_string());
    (rest.into_iter().take(max).collect(), next)
}

fn model_details(region: &str, m: &super::config::CatalogueModel) -> Value {
    json!({
        "modelArn": format!("arn:aws:bedrock:{region}::foundation-model/{}", m.model_id),
        "modelId": m.model_id,
        "modelName": m.model_name,
        "providerName": m.provider_name,
        "inputModalities": ["TEXT"],
        "outputModalities": ["TEXT"],
        "responseStreamingSupported": true,
        "customizationsSupported": [],
        "inferenceTypesSupported": m.inference_types(),
        "modelLifecycle": { "status": "ACTIVE" },
    })
}

pub async fn get_foundation_model(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "GET", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|caller| {
        let config = emulator.config();
        let model_id = id.rsplit('/').next().unwrap_or(&id);
        let model = config
            .catalogue
            .get(&caller.region)
            .and_then(|models| models.iter().find(|m| m.model_id == model_id))
            .ok_or_else(|| {
                AwsError::not_found(format!(
                    "The model {model_id} is not available in {}.",
                    caller.region
                ))
            })?;
        Ok((
            StatusCode::OK,
            json!({ "modelDetails": model_details(&caller.region, model) }),
        ))
    });
    done(
        &emulator,
        "GetFoundationModel",
        caller.as_ref().ok(),
        result,
    )
}

pub async fn list_foundation_models(
    State(emulator): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "GET", &uri);
    let result = caller.as_ref().map_err(Clone::clone).map(|caller| {
        let config = emulator.config();
        let provider = q.get("byProvider").map(|p| p.to_lowercase());
        let summaries: Vec<Value> = config
            .catalogue
            .get(&caller.region)
            .into_iter()
            .flatten()
            .filter(|m| {
                provider
                    .as_ref()
                    .is_none_or(|p| m.provider_name.to_lowercase() == *p)
            })
            .map(|m| model_details(&caller.region, m))
            .collect();
        (StatusCode::OK, json!({ "modelSummaries": summaries }))
    });
    done(
        &emulator,
        "ListFoundationModels",
        caller.as_ref().ok(),
        result,
    )
}

/// The system-defined profile `prefix.model` as `GetInferenceProfile` shows it from `region`: its
/// models are the model's ARNs in every catalogue region the profile routes to.
fn inference_profile(
    config: &super::config::Config,
    region: &str,
    prefix: &str,
    m: &super::config::CatalogueModel,
) -> Value {
    let id = k8s_ai_api::model_id::profile_id(prefix, &m.model_id);
    let global = prefix == k8s_ai_api::model_id::GLOBAL_PREFIX;
    let destinations: Vec<Value> = config
        .catalogue
        .iter()
        .filter(|(r, models)| {
            (global || k8s_ai_api::model_id::geographic_prefixes(r).contains(&prefix))
                && models.iter().any(|other| other.model_id == m.model_id)
        })
        .map(|(r, _)| json!({ "modelArn": format!("arn:aws:bedrock:{r}::foundation-model/{}", m.model_id) }))
        .collect();
    let geography = if global {
        "Global".to_owned()
    } else {
        prefix.to_uppercase()
    };
    json!({
        "inferenceProfileName": format!("{geography} {}", m.model_name),
        "description": format!("Routes requests to {} in {} regions.", m.model_name, destinations.len()),
        "createdAt": "2025-01-01T00:00:00Z",
        "updatedAt": "2025-01-01T00:00:00Z",
        "inferenceProfileArn": format!("arn:aws:bedrock:{region}:{ACCOUNT_ID}:inference-profile/{id}"),
        "models": destinations,
        "inferenceProfileId": id,
        "status": "ACTIVE",
        "type": "SYSTEM_DEFINED",
    })
}

/// Every system-defined profile callable from `region`.
fn inference_profiles(config: &super::config::Config, region: &str) -> Vec<Value> {
    config
        .catalogue
        .get(region)
        .into_iter()
        .flatten()
        .flat_map(|m| {
            m.profile_prefixes(region)
                .into_iter()
                .map(move |prefix| inference_profile(config, region, &prefix, m))
        })
        .collect()
}

/// `GET /inference-profiles`: the system-defined profiles of the region (no application profiles),
/// paged by `maxResults` (1 to 1000) and `nextToken`.
pub async fn list_inference_profiles(
    State(emulator): State<Emulator>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "GET", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|caller| {
        let config = emulator.config();
        let all = match q.get("type").map(String::as_str) {
            None | Some("SYSTEM_DEFINED") => inference_profiles(&config, &caller.region),
            Some("APPLICATION") => Vec::new(),
            Some(other) => {
                return Err(AwsError::validation(format!(
                    "1 validation error detected: Value '{other}' at 'typeEquals' failed to satisfy constraint: Member must satisfy enum value set: [SYSTEM_DEFINED, APPLICATION]"
                )));
            }
        };
        let (page, next) = page(all, &q, 1000);
        Ok((StatusCode::OK, json!({ "inferenceProfileSummaries": page, "nextToken": next })))
    });
    done(
        &emulator,
        "ListInferenceProfiles",
        caller.as_ref().ok(),
        result,
    )
}

/// `GET /inference-profiles/{id or ARN}`: one system-defined profile callable from the region.
pub async fn get_inference_profile(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = emulator.authenticate_bedrock(&headers, &body, "GET", &uri);
    let result = caller.as_ref().map_err(Clone::clone).and_then(|caller| {
        let config = emulator.config();
        let not_found = || AwsError::not_found(format!("Inference profile {id} not found."));
        let profile = k8s_ai_api::model_id::parse(&id)
            .filter(|m| m.is_profile() && m.arn_region.is_none_or(|r| r == caller.region))
            .ok_or_else(not_found)?;
        let prefix = match profile.route {
            k8s_ai_api::model_id::Route::Geographic(prefix) => prefix,
            _ => k8s_ai_api::model_id::GLOBAL_PREFIX,
        };
        let model = config
            .catalogue
            .get(&caller.region)
            .and_then(|models| models.iter().find(|m| m.model_id == profile.base))
            .filter(|m| {
                m.profile_prefixes(&caller.region)
                    .iter()
                    .any(|p| p == prefix)
            })
            .ok_or_else(not_found)?;
        Ok((
            StatusCode::OK,
            inference_profile(&config, &caller.region, prefix, model),
        ))
    });
    done(
        &emulator,
        "GetInferenceProfile",
        caller.as_ref().ok(),
        result,
    )
}
