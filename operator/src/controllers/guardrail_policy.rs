//! GuardrailPolicy: keep one Bedrock guardrail per policy in sync with its spec. Create it (a
//! retried create is recognised by its client token, a lost status by its name), update the
//! DRAFT and cut a new version when the spec or the guardrail drifted, delete it with the policy
//! (finalizer). Publishes `guardrailId`, `guardrailArn`, `version` and `Synced`.
//!
//! Guardrails are regional: they are made in the operator's own AWS region.

use std::{sync::Arc, time::Duration};

use aws_sdk_bedrock::{
    Client,
    error::{BuildError, ProvideErrorMetadata, SdkError},
    operation::get_guardrail::GetGuardrailOutput,
    types::{
        GuardrailContentFilterConfig, GuardrailContentFilterType, GuardrailContentPolicyConfig,
        GuardrailFilterStrength, GuardrailManagedWordsConfig, GuardrailManagedWordsType,
        GuardrailPiiEntityConfig, GuardrailPiiEntityType, GuardrailRegexConfig,
        GuardrailSensitiveInformationAction, GuardrailSensitiveInformationPolicyConfig,
        GuardrailStatus, GuardrailTopicConfig, GuardrailTopicPolicyConfig, GuardrailTopicType,
        GuardrailWordConfig, GuardrailWordPolicyConfig,
    },
};
use k8s_ai_api::{
    GuardrailPolicy, GuardrailPolicySpec,
    guardrail_policy::{ContentFilterType, FilterStrength},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        finalizer::{Event, finalizer},
        watcher,
    },
};
use serde_json::json;

use super::{Context, Error, RECHECK, conditions};

const MANAGER: &str = "k8s-ai-operator/guardrailpolicy";
const FINALIZER: &str = "ai.kernelpanic09.io/bedrock-guardrail";

/// The Bedrock guardrail name of a policy: `k8s-ai-<policy>`, within Bedrock's 50 characters of
/// `[0-9a-zA-Z-_]` (dots become dashes; long names keep a hash suffix so they stay unique).
pub fn guardrail_name(policy: &str) -> String {
    let clean: String = policy
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let full = format!("k8s-ai-{clean}");
    if full.len() <= 50 {
        return full;
    }
    let hash = policy.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}-{:08x}", &full[..41], hash & 0xffff_ffff)
}

fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The spec as Bedrock sees it, normalised to sorted lines, so drift shows as a difference.
fn fingerprint_of_spec(spec: &GuardrailPolicySpec) -> Vec<String> {
    let mut lines = vec![
        format!("in:{}", spec.blocked_input_messaging),
        format!("out:{}", spec.blocked_outputs_messaging),
    ];
    if let Some(s) = &spec.sensitive_information_policy {
        lines.extend(
            s.pii_entities
                .iter()
                .map(|e| format!("pii:{}:{}", serde_name(&e.type_), serde_name(&e.action))),
        );
        lines.extend(
            s.regexes
                .iter()
                .map(|r| format!("regex:{}:{}:{}", r.name, r.pattern, serde_name(&r.action))),
        );
    }
    if let Some(c) = &spec.content_policy {
        lines.extend(c.filters.iter().map(|f| {
            format!(
                "filter:{}:{}:{}",
                serde_name(&f.type_),
                serde_name(&f.input_strength),
                serde_name(&output_strength(f.type_, f.output_strength))
            )
        }));
    }
    if let Some(t) = &spec.topic_policy {
        lines.extend(
            t.topics
                .iter()
                .map(|t| format!("topic:{}:{}", t.name, t.definition)),
        );
    }
    if let Some(w) = &spec.word_policy {
        lines.extend(w.words.iter().map(|w| format!("word:{}", w.text)));
        lines.extend(
            w.managed_word_lists
                .iter()
                .map(|m| format!("managed:{}", serde_name(&m.type_))),
        );
    }
    lines.sort();
    lines
}

fn fingerprint_of_guardrail(g: &GetGuardrailOutput) -> Vec<String> {
    let mut lines = vec![
        format!("in:{}", g.blocked_input_messaging()),
        format!("out:{}", g.blocked_outputs_messaging()),
    ];
    if let Some(s) = g.sensitive_information_policy() {
        lines.extend(
            s.pii_entities()
                .iter()
                .map(|e| format!("pii:{}:{}", e.r#type().as_str(), e.action().as_str())),
        );
        lines.extend(
            s.regexes()
                .iter()
                .map(|r| format!("regex:{}:{}:{}", r.name(), r.pattern(), r.action().as_str())),
        );
    }
    if let Some(c) = g.content_policy() {
        lines.extend(c.filters().iter().map(|f| {
            format!(
                "filter:{}:{}:{}",
                f.r#type().as_str(),
                f.input_strength().as_str(),
                f.output_strength().as_str()
            )
        }));
    }
    if let Some(t) = g.topic_policy() {
        lines.extend(
            t.topics()
                .iter()
                .map(|t| format!("topic:{}:{}", t.name(), t.definition())),
        );
    }
    if let Some(w) = g.word_policy() {
        lines.extend(w.words().iter().map(|w| format!("word:{}", w.text())));
        lines.extend(
            w.managed_word_lists()
                .iter()
                .map(|m| format!("managed:{}", m.r#type().as_str())),
        );
    }
    lines.sort();
    lines
}

/// Bedrock refuses output filtering for prompt attacks: it is always sent as NONE.
fn output_strength(type_: ContentFilterType, asked: FilterStrength) -> FilterStrength {
    if type_ == ContentFilterType::PromptAttack {
        FilterStrength::None
    } else {
        asked
    }
}

/// The policy configs of a create or update request.
struct Configs {
    sensitive: Option<GuardrailSensitiveInformationPolicyConfig>,
    content: Option<GuardrailContentPolicyConfig>,
    topics: Option<GuardrailTopicPolicyConfig>,
    words: Option<GuardrailWordPolicyConfig>,
}

fn configs(spec: &GuardrailPolicySpec) -> Result<Configs, BuildError> {
    let sensitive = match &spec.sensitive_information_policy {
        Some(s) if !s.pii_entities.is_empty() || !s.regexes.is_empty() => {
            let mut b = GuardrailSensitiveInformationPolicyConfig::builder();
            for e in &s.pii_entities {
                b = b.pii_entities_config(
                    GuardrailPiiEntityConfig::builder()
                        .r#type(GuardrailPiiEntityType::from(serde_name(&e.type_).as_str()))
                        .action(GuardrailSensitiveInformationAction::from(
                            serde_name(&e.action).as_str(),
                        ))
                        .build()?,
                );
            }
            for r in &s.regexes {
                b = b.regexes_config(
                    GuardrailRegexConfig::builder()
                        .name(&r.name)
                        .set_description(r.description.clone())
                        .pattern(&r.pattern)
                        .action(GuardrailSensitiveInformationAction::from(
                            serde_name(&r.action).as_str(),
                        ))
                        .build()?,
                );
            }
            Some(b.build())
        }
        _ => None,
    };
    let content = match &spec.content_policy {
        Some(c) if !c.filters.is_empty() => {
            let mut b = GuardrailContentPolicyConfig::builder();
            for f in &c.filters {
                b = b.filters_config(
                    GuardrailContentFilterConfig::builder()
                        .r#type(GuardrailContentFilterType::from(
                            serde_name(&f.type_).as_str(),
                        ))
                        .input_strength(GuardrailFilterStrength::from(
                            serde_name(&f.input_strength).as_str(),
                        ))
                        .output_strength(GuardrailFilterStrength::from(
                            serde_name(&output_strength(f.type_, f.output_strength)).as_str(),
                        ))
                        .build()?,
                );
            }
            Some(b.build()?)
        }
        _ => None,
    };
    let topics = match &spec.topic_policy {
        Some(t) if !t.topics.is_empty() => {
            let mut b = GuardrailTopicPolicyConfig::builder();
            for topic in &t.topics {
                b = b.topics_config(
                    GuardrailTopicConfig::builder()
                        .name(&topic.name)
                        .definition(&topic.definition)
                        .set_examples((!topic.examples.is_empty()).then(|| topic.examples.clone()))
                        .r#type(GuardrailTopicType::Deny)
                        .build()?,
                );
            }
            Some(b.build()?)
        }
        _ => None,
    };
    let words = match &spec.word_policy {
        Some(w) if !w.words.is_empty() || !w.managed_word_lists.is_empty() => {
            let mut b = GuardrailWordPolicyConfig::builder();
            for word in &w.words {
                b = b.words_config(GuardrailWordConfig::builder().text(&word.text).build()?);
            }
            for _ in &w.managed_word_lists {
                b = b.managed_word_lists_config(
                    GuardrailManagedWordsConfig::builder()
                        .r#type(GuardrailManagedWordsType::Profanity)
                        .build()?,
                );
            }
            Some(b.build())
        }
        _ => None,
    };
    Ok(Configs {
        sensitive,
        content,
        topics,
        words,
    })
}

/// A failed Bedrock call as the reconcile's error: the message says what Bedrock said, the source
/// keeps the SDK's error.
fn bedrock_error<E>(operation: &'static str, e: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    Error::Bedrock {
        operation,
        message: super::aws_error_message(&e),
        source: Some(Box::new(e)),
    }
}

fn not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("ResourceNotFoundException"))
}

/// Waits for a guardrail to leave CREATING/UPDATING/VERSIONING (Bedrock works on it asynchronously).
async fn wait_ready(bedrock: &Client, id: &str) -> Result<GetGuardrailOutput, Error> {
    for _ in 0..30 {
        let g = bedrock
            .get_guardrail()
            .guardrail_identifier(id)
            .send()
            .await
            .map_err(|e| bedrock_error("GetGuardrail", e))?;
        if *g.status() != GuardrailStatus::Creating
            && *g.status() != GuardrailStatus::Updating
            && *g.status() != GuardrailStatus::Versioning
        {
            return Ok(g);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(Error::Bedrock {
        operation: "GetGuardrail",
        message: format!("guardrail {id} stayed busy for 30 s"),
        source: None,
    })
}

/// Finds this policy's guardrail: by the id in its status, else by name (a create whose status
/// write was lost), else none.
async fn existing(
    bedrock: &Client,
    policy: &GuardrailPolicy,
    name: &str,
) -> Result<Option<String>, Error> {
    if let Some(id) = policy.status.as_ref().and_then(|s| s.guardrail_id.clone()) {
        match bedrock
            .get_guardrail()
            .guardrail_identifier(&id)
            .send()
            .await
        {
            Ok(_) => return Ok(Some(id)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(bedrock_error("GetGuardrail", e)),
        }
    }
    // Every page: an account may hold more guardrails than one page lists, and a guardrail not
    // found here would be created a second time.
    let mut pages = bedrock.list_guardrails().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| bedrock_error("ListGuardrails", e))?;
        if let Some(g) = page.guardrails().iter().find(|g| g.name() == name) {
            return Ok(Some(g.id().to_owned()));
        }
    }
    Ok(None)
}

/// The id of this policy's guardrail, created if there is none.
async fn ensure_guardrail(
    bedrock: &Client,
    policy: &GuardrailPolicy,
    name: &str,
    built: Configs,
) -> Result<String, Error> {
    if let Some(id) = existing(bedrock, policy, name).await? {
        return Ok(id);
    }
    let spec = &policy.spec;
    let created = bedrock
        .create_guardrail()
        .name(name)
        .set_description(spec.description.clone())
        .blocked_input_messaging(&spec.blocked_input_messaging)
        .blocked_outputs_messaging(&spec.blocked_outputs_messaging)
        .set_sensitive_information_policy_config(built.sensitive)
        .set_content_policy_config(built.content)
        .set_topic_policy_config(built.topics)
        .set_word_policy_config(built.words)
        // The policy's UID: a create retried after a crash returns the same guardrail.
        .client_request_token(policy.uid().unwrap_or_default())
        .send()
        .await
        .map_err(|e| bedrock_error("CreateGuardrail", e))?;
    Ok(created.guardrail_id().to_owned())
}

/// Puts the DRAFT back to the spec when it differs (a new spec, or drift).
async fn ensure_draft(
    bedrock: &Client,
    policy: &GuardrailPolicy,
    id: &str,
    name: &str,
    wanted: &[String],
) -> Result<GetGuardrailOutput, Error> {
    let draft = wait_ready(bedrock, id).await?;
    if fingerprint_of_guardrail(&draft) == wanted {
        return Ok(draft);
    }
    let spec = &policy.spec;
    let built = configs(spec).map_err(|e| Error::Bedrock {
        operation: "UpdateGuardrail",
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    bedrock
        .update_guardrail()
        .guardrail_identifier(id)
        .name(name)
        .set_description(spec.description.clone())
        .blocked_input_messaging(&spec.blocked_input_messaging)
        .blocked_outputs_messaging(&spec.blocked_outputs_messaging)
        .set_sensitive_information_policy_config(built.sensitive)
        .set_content_policy_config(built.content)
        .set_topic_policy_config(built.topics)
        .set_word_policy_config(built.words)
        .send()
        .await
        .map_err(|e| bedrock_error("UpdateGuardrail", e))?;
    tracing::info!(policy = %policy.name_any(), guardrail = %id, "updated the guardrail's DRAFT to the spec");
    wait_ready(bedrock, id).await
}

/// The numbered version calls use: the published one if it is the spec (versions never change),
/// else a new one.
async fn ensure_version(
    bedrock: &Client,
    policy: &GuardrailPolicy,
    id: &str,
    wanted: &[String],
) -> Result<String, Error> {
    if let Some(v) = policy
        .status
        .as_ref()
        .and_then(|s| s.version.clone())
        .filter(|v| v != "DRAFT")
    {
        match bedrock
            .get_guardrail()
            .guardrail_identifier(id)
            .guardrail_version(&v)
            .send()
            .await
        {
            Ok(g) if fingerprint_of_guardrail(&g) == wanted => return Ok(v),
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(bedrock_error("GetGuardrail", e)),
        }
    }
    // Same spec, same token: a version cut before a crash is returned, not cut twice.
    let digest = wanted
        .iter()
        .flat_map(|l| l.bytes().chain([b'\n']))
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let generation = policy.metadata.generation.unwrap_or_default();
    let created = bedrock
        .create_guardrail_version()
        .guardrail_identifier(id)
        .description(format!(
            "GuardrailPolicy {} generation {generation}",
            policy.name_any()
        ))
        .client_request_token(format!(
            "{}-{digest:016x}",
            policy.uid().unwrap_or_default()
        ))
        .send()
        .await
        .map_err(|e| bedrock_error("CreateGuardrailVersion", e))?;
    wait_ready(bedrock, id).await?;
    Ok(created.version().to_owned())
}

async fn apply(policy: Arc<GuardrailPolicy>, ctx: &Context) -> Result<Action, Error> {
    let bedrock = Client::new(&ctx.aws);
    let name = guardrail_name(&policy.name_any());
    let built = configs(&policy.spec).map_err(|e| Error::Bedrock {
        operation: "CreateGuardrail",
        message: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    let wanted = fingerprint_of_spec(&policy.spec);
    let id = ensure_guardrail(&bedrock, &policy, &name, built).await?;
    let draft = ensure_draft(&bedrock, &policy, &id, &name, &wanted).await?;
    let version = ensure_version(&bedrock, &policy, &id, &wanted).await?;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let synced = conditions::Wanted {
        type_: "Synced",
        status: true,
        reason: "Synced",
        message: format!("Bedrock guardrail {id} version {version}"),
    };
    let event = conditions::transition(&previous, &synced);
    let condition = conditions::set(&previous, synced, policy.metadata.generation);
    let status = json!({ "guardrailId": id, "guardrailArn": draft.guardrail_arn(), "version": version, "conditions": [condition], "observedGeneration": policy.metadata.generation });
    write_status(ctx, &policy, status).await?;
    if let Some((synced, reason, message)) = event {
        super::announce(ctx, policy.as_ref(), synced, reason, message).await;
    }
    Ok(Action::requeue(RECHECK))
}

async fn write_status(
    ctx: &Context,
    policy: &GuardrailPolicy,
    status: serde_json::Value,
) -> Result<(), Error> {
    let patch = super::status_patch::<GuardrailPolicy>(status);
    Api::<GuardrailPolicy>::all(ctx.client.clone())
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Kube {
            kind: "GuardrailPolicy",
            name: policy.name_any(),
            source,
        })
}

async fn cleanup(policy: Arc<GuardrailPolicy>, ctx: &Context) -> Result<Action, Error> {
    let bedrock = Client::new(&ctx.aws);
    if let Some(id) = existing(&bedrock, &policy, &guardrail_name(&policy.name_any())).await? {
        match bedrock
            .delete_guardrail()
            .guardrail_identifier(&id)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(policy = %policy.name_any(), guardrail = %id, "deleted the Bedrock guardrail");
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(bedrock_error("DeleteGuardrail", e)),
        }
    }
    Ok(Action::await_change())
}

async fn reconcile(policy: Arc<GuardrailPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("GuardrailPolicy");
    let api: Api<GuardrailPolicy> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, Arc::clone(&policy), |event| async {
        match event {
            Event::Apply(p) => apply(p, &ctx).await,
            Event::Cleanup(p) => cleanup(p, &ctx).await,
        }
    })
    .await;
    match result {
        Ok(action) => Ok(action),
        Err(
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e),
        ) => {
            // Say why on the object, then retry.
            let previous = policy
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let failed = conditions::Wanted {
                type_: "Synced",
                status: false,
                reason: "BedrockError",
                message: e.to_string(),
            };
            let event = conditions::transition(&previous, &failed);
            let condition = conditions::set(&previous, failed, policy.metadata.generation);
            let _ = write_status(&ctx, &policy, json!({ "conditions": [condition] })).await;
            if let Some((synced, reason, message)) = event {
                super::announce(&ctx, policy.as_ref(), synced, reason, message).await;
            }
            Err(e)
        }
        Err(e) => Err(Error::Finalizer(Box::new(e))),
    }
}

/// Runs the GuardrailPolicy controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let ctx_for_results = Arc::clone(&ctx);
    let results = Controller::new(
        Api::<GuardrailPolicy>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(reconcile, super::error_policy, ctx);
    super::drive(&ctx_for_results, results).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guardrail_names_fit_bedrock() {
        assert_eq!(guardrail_name("pii-and-safety"), "k8s-ai-pii-and-safety");
        assert_eq!(guardrail_name("a.b"), "k8s-ai-a-b");
        let long = guardrail_name(&"x".repeat(200));
        assert!(
            long.len() <= 50
                && long
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(long, guardrail_name(&"x".repeat(201)));
    }
}
