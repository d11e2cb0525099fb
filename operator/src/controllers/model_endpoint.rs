//! ModelEndpoint: with the operator's own identity, assume the endpoint's role once (STS) and
//! check the model exists in the region (Bedrock control plane); resolve the guardrail; know the
//! price. Publishes `CredentialsValid`, `Available` (model found), `GuardrailResolved`,
//! `PriceKnown` and `Ready` (all of them), the `available` column and `observedGeneration`.
//! Re-checked periodically, and when a GuardrailPolicy changes.

use std::{collections::HashSet, sync::Arc, time::Duration};

use aws_credential_types::Credentials;
use aws_sdk_bedrock::error::ProvideErrorMetadata;
use futures_util::{Stream, StreamExt, stream};
use k8s_ai_api::{
    GuardrailPolicy, ModelEndpoint, ModelEndpointSpec, ModelUsage,
    model_endpoint::{CostBudget, ProfileChoice},
    model_id, pricing,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, PredicateConfig, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use super::ledger::Totals;
use super::{
    Context, Error, RECHECK,
    cache::Change,
    conditions::{self, Wanted},
};

const MANAGER: &str = "k8s-ai-operator/modelendpoint";

fn wanted(type_: &'static str, ok: Check, ok_reason: &'static str) -> Wanted {
    match ok {
        Ok(message) => Wanted {
            type_,
            status: true,
            reason: ok_reason,
            message,
        },
        Err(CheckFailure { reason, message }) => Wanted {
            type_,
            status: false,
            reason: reason.as_str(),
            message,
        },
    }
}

/// Why a check failed: the reason of its condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    AssumeRoleFailed,
    CredentialsInvalid,
    BedrockUnreachable,
    InferenceProfileNotFound,
    InferenceProfileMismatch,
    ModelNotFound,
    GuardrailPolicyNotFound,
    PriceUnknown,
}

impl Reason {
    /// The condition's `reason`, as published.
    fn as_str(self) -> &'static str {
        match self {
            Self::AssumeRoleFailed => "AssumeRoleFailed",
            Self::CredentialsInvalid => "CredentialsInvalid",
            Self::BedrockUnreachable => "BedrockUnreachable",
            Self::InferenceProfileNotFound => "InferenceProfileNotFound",
            Self::InferenceProfileMismatch => "InferenceProfileMismatch",
            Self::ModelNotFound => "ModelNotFound",
            Self::GuardrailPolicyNotFound => "GuardrailPolicyNotFound",
            Self::PriceUnknown => "PriceUnknown",
        }
    }
}

/// A failed check: the condition's reason and a message saying what to change.
#[derive(Clone, Debug)]
struct CheckFailure {
    reason: Reason,
    message: String,
}

impl CheckFailure {
    fn new(reason: Reason, message: String) -> Self {
        Self { reason, message }
    }
}

/// The outcome of one check: what passed, or why not.
type Check = Result<String, CheckFailure>;

/// What the AWS checks found: the credentials, the model, and the id calls will send.
#[derive(Clone, Debug)]
pub struct Checked {
    credentials: Check,
    available: Check,
    /// The model id, profile id or ARN sidecars call (`status.resolvedModelId`), when available.
    resolved_model_id: Option<String>,
}

/// Assumes the endpoint's role (if any), then finds what to call in its region.
async fn check_aws(ctx: &Context, endpoint: &ModelEndpoint) -> Checked {
    let region = aws_config::Region::new(endpoint.spec.region.clone());
    let mut config = aws_sdk_bedrock::config::Builder::from(&ctx.aws).region(region.clone());
    let credentials = match &endpoint.spec.irsa_role_arn {
        None => Ok("no irsaRoleArn: pods use their default AWS credential chain".to_owned()),
        Some(role) => {
            let sts = aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(&ctx.aws)
                    .region(region)
                    .build(),
            );
            match sts
                .assume_role()
                .role_arn(role)
                .role_session_name("k8s-ai-operator-check")
                .send()
                .await
            {
                Ok(out) => match out.credentials {
                    Some(c) => {
                        config = config.credentials_provider(Credentials::new(
                            c.access_key_id,
                            c.secret_access_key,
                            Some(c.session_token),
                            None,
                            "assume-role",
                        ));
                        Ok(format!("assumed {role}"))
                    }
                    None => Err(CheckFailure::new(
                        Reason::AssumeRoleFailed,
                        format!("STS returned no credentials for {role}"),
                    )),
                },
                Err(e) => Err(CheckFailure::new(
                    Reason::AssumeRoleFailed,
                    format!("cannot assume {role}: {}", super::aws_error_message(&e)),
                )),
            }
        }
    };
    if credentials.is_err() {
        return Checked {
            credentials,
            available: Err(CheckFailure::new(
                Reason::CredentialsInvalid,
                "cannot check the model without credentials".to_owned(),
            )),
            resolved_model_id: None,
        };
    }
    let bedrock = aws_sdk_bedrock::Client::from_conf(config.build());
    let (available, resolved_model_id) = match resolve_model(&bedrock, &endpoint.spec).await {
        Ok((message, id)) => (Ok(message), Some(id)),
        Err(e) => (Err(e), None),
    };
    Checked {
        credentials,
        available,
        resolved_model_id,
    }
}

/// Whether a Bedrock error says the thing looked up does not exist (rather than that Bedrock
/// could not be asked).
fn not_found<E: ProvideErrorMetadata>(e: &aws_sdk_bedrock::error::SdkError<E>) -> bool {
    matches!(e, aws_sdk_bedrock::error::SdkError::ServiceError(s)
        if matches!(s.err().code(), Some("ResourceNotFoundException" | "ValidationException")))
}

/// The models (foundation-model ARNs) an inference profile routes to; `Ok(None)` when Bedrock
/// does not know the profile.
async fn inference_profile_models(
    bedrock: &aws_sdk_bedrock::Client,
    region: &str,
    profile: &str,
) -> Result<Option<Vec<String>>, CheckFailure> {
    match bedrock
        .get_inference_profile()
        .inference_profile_identifier(profile)
        .send()
        .await
    {
        Ok(out) => Ok(Some(
            out.models()
                .iter()
                .filter_map(|m| m.model_arn().map(str::to_owned))
                .collect(),
        )),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(CheckFailure::new(
            Reason::BedrockUnreachable,
            format!(
                "looking up inference profile {profile} in {region}: {}",
                super::aws_error_message(&e)
            ),
        )),
    }
}

/// The id calls through `spec` must send, and a message saying why: the model id itself where the
/// model may be called on demand, else (or when `inferenceProfile` says so) a cross-region profile
/// that Bedrock confirms exists in the region. Errors name what to write instead.
async fn resolve_model(
    bedrock: &aws_sdk_bedrock::Client,
    spec: &ModelEndpointSpec,
) -> Result<(String, String), CheckFailure> {
    let region = spec.region.as_str();
    let list_hint = format!("aws bedrock list-inference-profiles --region {region}");
    let parsed = model_id::parse(&spec.model_id);
    if let ProfileChoice::Named(profile) = spec.profile_choice() {
        let Some(models) = inference_profile_models(bedrock, region, profile).await? else {
            return Err(CheckFailure::new(
                Reason::InferenceProfileNotFound,
                format!(
                    "inference profile {profile} does not exist in {region}: set spec.inferenceProfile to one that does ({list_hint}), or to geographic or global"
                ),
            ));
        };
        if let Some(m) = parsed
            && !models.is_empty()
            && !models
                .iter()
                .any(|arn| arn.ends_with(&format!("/{}", m.base)))
        {
            return Err(CheckFailure::new(
                Reason::InferenceProfileMismatch,
                format!(
                    "inference profile {profile} does not route to {}: it serves {}",
                    m.base,
                    models.join(", ")
                ),
            ));
        }
        return Ok((
            format!("calls inference profile {profile} in {region}"),
            profile.to_owned(),
        ));
    }
    let Some(parsed) = parsed else {
        // An application inference profile or provisioned model: opaque ARNs, called as written.
        if spec.model_id.contains(":application-inference-profile/")
            && inference_profile_models(bedrock, region, &spec.model_id)
                .await?
                .is_none()
        {
            return Err(CheckFailure::new(
                Reason::InferenceProfileNotFound,
                format!(
                    "inference profile {} does not exist in {region} ({list_hint})",
                    spec.model_id
                ),
            ));
        }
        return Ok((
            format!("calls {} as written", spec.model_id),
            spec.model_id.clone(),
        ));
    };
    if parsed.is_profile() {
        return match inference_profile_models(bedrock, region, &spec.model_id).await? {
            Some(_) => Ok((
                format!("calls inference profile {} in {region}", spec.model_id),
                spec.model_id.clone(),
            )),
            None => Err(CheckFailure::new(
                Reason::InferenceProfileNotFound,
                format!(
                    "inference profile {} is not offered in {region}: write the base model id {} and let the operator pick the profile, or name one from {list_hint}",
                    spec.model_id, parsed.base
                ),
            )),
        };
    }
    resolve_base_model(bedrock, spec, parsed.base).await
}

/// What calls of the base model `base` send: the id itself where it may be called on demand and
/// the spec asks for no profile, else the first profile of the asked kind that exists in the region.
async fn resolve_base_model(
    bedrock: &aws_sdk_bedrock::Client,
    spec: &ModelEndpointSpec,
    base: &str,
) -> Result<(String, String), CheckFailure> {
    let region = spec.region.as_str();
    let details = match bedrock
        .get_foundation_model()
        .model_identifier(base)
        .send()
        .await
    {
        Ok(out) => out.model_details,
        Err(e) if not_found(&e) => {
            return Err(CheckFailure::new(
                Reason::ModelNotFound,
                format!(
                    "{base} is not offered in {region}: choose a region that offers it (aws bedrock list-foundation-models --region <region>) or another model; {}",
                    super::aws_error_message(&e)
                ),
            ));
        }
        Err(e) => {
            return Err(CheckFailure::new(
                Reason::BedrockUnreachable,
                format!("{base} in {region}: {}", super::aws_error_message(&e)),
            ));
        }
    };
    let on_demand = details.as_ref().is_some_and(|d| {
        d.inference_types_supported()
            .contains(&aws_sdk_bedrock::types::InferenceType::OnDemand)
    });
    let candidates: Vec<&str> = match spec.profile_choice() {
        ProfileChoice::Automatic if on_demand => {
            return Ok((
                format!("{base} is offered on demand in {region}"),
                spec.model_id.clone(),
            ));
        }
        ProfileChoice::Global => vec![model_id::GLOBAL_PREFIX],
        _ => model_id::geographic_prefixes(region).to_vec(),
    };
    for prefix in &candidates {
        let id = model_id::profile_id(prefix, base);
        if inference_profile_models(bedrock, region, &id)
            .await?
            .is_some()
        {
            let why = if on_demand {
                "as spec.inferenceProfile asks"
            } else {
                "Bedrock serves it only through inference profiles"
            };
            return Ok((
                format!("{base} is called through inference profile {id} in {region}: {why}"),
                id,
            ));
        }
    }
    let tried: Vec<String> = candidates
        .iter()
        .map(|p| model_id::profile_id(p, base))
        .collect();
    let tried = if tried.is_empty() {
        format!("{region} belongs to no geography with profiles")
    } else {
        format!("{} not found", tried.join(", "))
    };
    let fix = match spec.profile_choice() {
        ProfileChoice::Global => {
            "set spec.inferenceProfile to geographic, or to the id or ARN of a profile"
        }
        _ if on_demand => {
            "remove spec.inferenceProfile to call it on demand, or set it to the id or ARN of a profile"
        }
        _ => "set spec.inferenceProfile to global, or to the id or ARN of a profile",
    };
    Err(CheckFailure::new(
        Reason::InferenceProfileNotFound,
        format!(
            "{base} needs an inference profile in {region} ({tried}): {fix} (aws bedrock list-inference-profiles --region {region})"
        ),
    ))
}

/// The last AWS checks of each endpoint: `ns/name` → (generation, when, result).
pub type AwsChecks =
    std::sync::Mutex<std::collections::HashMap<String, (Option<i64>, std::time::Instant, Checked)>>;

/// The AWS checks, reused while the spec is unchanged and the result is younger than the
/// re-check period: ledger updates re-reconcile an endpoint often, and must not call STS each time.
async fn cached_aws_check(ctx: &Context, endpoint: &ModelEndpoint) -> Checked {
    let key = format!(
        "{}/{}",
        endpoint.namespace().unwrap_or_default(),
        endpoint.name_any()
    );
    let generation = endpoint.metadata.generation;
    if let Ok(cache) = ctx.aws_checks.lock()
        && let Some((g, at, checked)) = cache.get(&key)
        && *g == generation
        && at.elapsed() < RECHECK
    {
        return checked.clone();
    }
    let checked = check_aws(ctx, endpoint).await;
    if let Ok(mut cache) = ctx.aws_checks.lock() {
        cache.insert(
            key,
            (generation, std::time::Instant::now(), checked.clone()),
        );
    }
    checked
}

/// Whether the referenced GuardrailPolicy exists, and whether it is synced to Bedrock yet.
async fn resolve_guardrail(ctx: &Context, endpoint: &ModelEndpoint) -> Result<Check, Error> {
    Ok(match &endpoint.spec.guardrail_policy_ref {
        None => Ok("no guardrail".to_owned()),
        Some(policy) => {
            let api: Api<GuardrailPolicy> = Api::all(ctx.client.clone());
            match api.get_opt(policy).await.map_err(|source| Error::Kube {
                kind: "GuardrailPolicy",
                name: policy.clone(),
                source,
            })? {
                None => Err(CheckFailure::new(
                    Reason::GuardrailPolicyNotFound,
                    format!("GuardrailPolicy {policy} does not exist"),
                )),
                Some(p) => Ok(
                    match p
                        .status
                        .as_ref()
                        .and_then(|s| Some((s.guardrail_id.clone()?, s.version.clone())))
                    {
                        Some((id, version)) => format!(
                            "{policy} is Bedrock guardrail {id} version {}",
                            version.unwrap_or_else(|| "DRAFT".into())
                        ),
                        None => format!(
                            "{policy} found; not synced to Bedrock yet, so its PII rules apply in the sidecars only"
                        ),
                    },
                ),
            }
        }
    })
}

/// `BudgetExceeded` from the spend so far and the budget; none when the endpoint has no budget.
/// Informational (the endpoint stays Ready): sidecars refuse calls over budget themselves.
pub fn budget_condition(budget: Option<&CostBudget>, totals: &Totals) -> Option<Wanted> {
    let budget = budget?;
    // Spent in full, or what is left cannot pay for a call a pod wants (see `budget`).
    let over_month = budget
        .monthly
        .filter(|m| totals.cost_this_month >= m.amount() || totals.month_exhausted);
    let over_day = budget
        .daily
        .filter(|d| totals.cost_today >= d.amount() || totals.day_exhausted);
    Some(match (over_month, over_day) {
        (Some(monthly), _) => Wanted {
            type_: "BudgetExceeded",
            status: true,
            reason: "MonthlyBudgetExceeded",
            message: format!(
                "${} spent this month of a ${monthly} monthly budget: calls are refused until next month",
                totals.cost_this_month
            ),
        },
        (None, Some(daily)) => Wanted {
            type_: "BudgetExceeded",
            status: true,
            reason: "DailyBudgetExceeded",
            message: format!(
                "${} spent today of a ${daily} daily budget: calls are refused until tomorrow",
                totals.cost_today
            ),
        },
        (None, None) => Wanted {
            type_: "BudgetExceeded",
            status: false,
            reason: "WithinBudget",
            message: format!(
                "${} spent today, ${} this month",
                totals.cost_today, totals.cost_this_month
            ),
        },
    })
}

async fn reconcile(endpoint: Arc<ModelEndpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("ModelEndpoint");
    let ns = endpoint.namespace().ok_or(Error::NoNamespace)?;
    let name = endpoint.name_any();
    let checked = cached_aws_check(&ctx, &endpoint).await;
    let called = checked
        .resolved_model_id
        .clone()
        .unwrap_or_else(|| endpoint.spec.model_id.clone());
    let guardrail = resolve_guardrail(&ctx, &endpoint).await?;
    let price = pricing::price_for(&endpoint.spec, &called)
        .map(|p| {
            format!(
                "${} / ${} per million input / output tokens",
                p.input_per_million, p.output_per_million
            )
        })
        .map_err(|e| CheckFailure::new(Reason::PriceUnknown, e.to_string()));
    let checks = [
        wanted("CredentialsValid", checked.credentials, "CredentialsValid"),
        wanted("Available", checked.available, "ModelAvailable"),
        wanted("GuardrailResolved", guardrail, "GuardrailResolved"),
        wanted("PriceKnown", price, "PriceKnown"),
    ];
    // Usage totals from the namespace's ledgers and retired pods (cost, invocations, tokens).
    let (totals, usage) = super::ledger::endpoint_usage(&ctx, &endpoint).await?;
    tracing::debug!(namespace = %ns, endpoint = %name, cost_this_month = %totals.cost_this_month, invocations_this_month = totals.invocations_this_month, "summed the ledgers");
    let budget = budget_condition(endpoint.spec.cost_budget.as_ref(), &totals);
    let outdated = outdated_sidecars(&ctx, &ns, &name);
    let failing: Vec<&str> = checks
        .iter()
        .filter(|c| !c.status)
        .map(|c| c.type_)
        .collect();
    let ready = Wanted {
        type_: "Ready",
        status: failing.is_empty(),
        reason: if failing.is_empty() {
            "Ready"
        } else {
            "NotReady"
        },
        message: if failing.is_empty() {
            "pods can invoke the model".to_owned()
        } else {
            format!("failing: {}", failing.join(", "))
        },
    };
    let previous = endpoint
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = endpoint.metadata.generation;
    let is_ready = ready.status;
    let ready_event = conditions::transition(&previous, &ready);
    let budget_event = budget
        .as_ref()
        .and_then(|b| conditions::transition(&previous, b));
    let conditions: Vec<_> = checks
        .into_iter()
        .chain([ready])
        .chain(budget)
        .map(|w| conditions::set(&previous, w, generation))
        .collect();
    let mut status = json!({
        "available": is_ready,
        "conditions": conditions,
        "observedGeneration": generation,
        "resolvedModelId": checked.resolved_model_id,
        "outdatedSidecars": outdated.pods,
    });
    if let (Some(s), Some(u)) = (status.as_object_mut(), usage.as_object()) {
        s.extend(u.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let status = super::status_patch::<ModelEndpoint>(status);
    Api::<ModelEndpoint>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .map_err(|source| Error::Kube {
            kind: "ModelEndpoint",
            name: format!("{ns}/{name}"),
            source,
        })?;
    if let Some((ready, reason, message)) = ready_event {
        super::announce(&ctx, endpoint.as_ref(), ready, reason, message).await;
    }
    if let Some((over, reason, message)) = budget_event {
        // Over budget is the bad news, so it is the Warning.
        super::announce(&ctx, endpoint.as_ref(), !over, reason, message).await;
    }
    outdated.announce(&ctx, &endpoint).await;
    Ok(Action::requeue(RECHECK))
}

/// The pods using an endpoint whose sidecar is not the image the webhook injects now.
#[derive(Debug, Default, PartialEq)]
pub struct Outdated {
    pub pods: u32,
    /// The images they run, each once, sorted.
    pub images: Vec<String>,
}

impl Outdated {
    /// Publishes the Event of `event` on `endpoint` when its count changed.
    async fn announce(&self, ctx: &Context, endpoint: &ModelEndpoint) {
        let before = endpoint
            .status
            .as_ref()
            .and_then(|s| s.outdated_sidecars)
            .unwrap_or(0);
        if let Some((current, reason, message)) = self.event(before, &ctx.sidecar_image) {
            super::announce(ctx, endpoint, current, reason, message).await;
        }
    }

    /// The Event to publish when the count changed: (no pod outdated, reason, message).
    pub fn event(&self, before: u32, injected: &str) -> Option<(bool, &'static str, String)> {
        (self.pods != before).then(|| match self.pods {
            0 => (
                true,
                "SidecarsCurrent",
                format!("every pod using this endpoint runs the sidecar image {injected}"),
            ),
            n => (
                false,
                "SidecarsOutdated",
                format!(
                    "{n} pod(s) using this endpoint run the sidecar image {} instead of {injected}: restart them to upgrade (kubectl rollout restart)",
                    self.images.join(", ")
                ),
            ),
        })
    }
}

/// Counts the pods with a live ledger of endpoint `ns/name` whose injected sidecar runs another
/// image than `ctx.sidecar_image`, from the operator's caches of ledgers and injected pods.
fn outdated_sidecars(ctx: &Context, ns: &str, name: &str) -> Outdated {
    let pods = ctx.pods.store();
    let mut outdated = Outdated::default();
    for ledger in super::ledger::own_ledgers(&ctx.ledgers, ns, name) {
        let key = ObjectRef::<Pod>::new(&ledger.spec.pod_name).within(ns);
        let Some(pod) = pods.get(&key) else { continue };
        if pod.metadata.uid.as_deref() != Some(ledger.spec.pod_uid.as_str()) {
            continue;
        }
        if let Some(image) = sidecar_image_of(&pod)
            && image != ctx.sidecar_image
        {
            outdated.pods += 1;
            outdated.images.push(image.to_owned());
        }
    }
    outdated.images.sort();
    outdated.images.dedup();
    outdated
}

/// The image of a pod's injected sidecar: a native sidecar (an init container) or a plain one.
pub fn sidecar_image_of(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == crate::webhook::inject::SIDECAR_NAME)
        .and_then(|c| c.image.as_deref())
}

/// At most one reconcile of an endpoint per this period on its ledgers' changes and on writes of
/// its status: sidecars report every few seconds each, and one sum covers every report that came
/// in meanwhile.
pub const THROTTLE: Duration = Duration::from_secs(1);
/// Endpoints reconciled at once (each is a GET and a status write, and a scan of the cache).
/// Taken first come, first served: kube-runtime's own limit picks the next of its waiting objects
/// in hash order, so when it is always busy the same few endpoints wait for ever.
const CONCURRENCY: usize = 16;

/// Runs the ModelEndpoint controller until the process ends.
pub async fn run(
    ctx: Arc<Context>,
    ledgers: impl Stream<Item = Change<ModelUsage>> + Send + 'static,
) {
    let ctx_for_results = Arc::clone(&ctx);
    let (store, writer) = reflector::store::<ModelEndpoint>();
    // A spec change (a new generation, or a new object of the same name) is acted on at once.
    // Status writes, its own (the totals) among them, go through the throttle with the ledgers:
    // a write by anyone else (a fold, or an older leader's late one) is put right within it.
    let (status_writes, written) = mpsc::unbounded_channel();
    let endpoints = watcher(
        Api::<ModelEndpoint>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|e: &mut ModelEndpoint| e.metadata.managed_fields = None)
    .reflect(writer)
    .applied_objects()
    .inspect(move |e| {
        if let Ok(e) = e {
            let _ = status_writes.send(ObjectRef::from_obj(e));
        }
    })
    .predicate_filter(super::cache::spec_version, PredicateConfig::default());
    let ledger_endpoints = ledgers.filter_map(|change| {
        std::future::ready(match change {
            Change::Applied(l) | Change::Deleted(l) => l
                .namespace()
                .map(|ns| ObjectRef::<ModelEndpoint>::new(&l.spec.endpoint).within(&ns)),
            Change::Listed => None,
        })
    });
    let written = stream::unfold(
        written,
        |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
    );
    let policies = Api::<GuardrailPolicy>::all(ctx.client.clone());
    let by_policy = store.clone();
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let results = Controller::for_stream(endpoints, store)
        // A GuardrailPolicy appearing, changing or going away re-checks the endpoints that name it.
        .watches(
            policies,
            watcher::Config::default(),
            move |policy: GuardrailPolicy| {
                let name = policy.name_any();
                by_policy
                    .state()
                    .into_iter()
                    .filter(move |e| e.spec.guardrail_policy_ref.as_deref() == Some(name.as_str()))
                    .map(|e| ObjectRef::from_obj(&*e))
                    .collect::<Vec<_>>()
            },
        )
        // A ledger changing (or going) updates its endpoint's usage totals.
        .reconcile_on(throttled(
            stream::select(ledger_endpoints, written),
            THROTTLE,
        ))
        .shutdown_on_signal()
        .run(
            move |endpoint, ctx| {
                let slots = Arc::clone(&slots);
                async move {
                    let _slot = slots.acquire_owned().await;
                    reconcile(endpoint, ctx).await
                }
            },
            super::error_policy,
            ctx,
        );
    super::drive(&ctx_for_results, results).await;
}

/// Each endpoint of `changed` at most once per `period`: the first change after a quiet period
/// goes at once, later ones are gathered until the period is over.
fn throttled(
    changed: impl Stream<Item = ObjectRef<ModelEndpoint>> + Send + 'static,
    period: Duration,
) -> impl Stream<Item = ObjectRef<ModelEndpoint>> + Send + 'static {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (changed.boxed(), HashSet::new(), tick);
    stream::unfold(state, |(mut changed, mut dirty, mut tick)| async move {
        loop {
            tokio::select! {
                next = changed.next() => match next {
                    None => return None,
                    Some(endpoint) => { dirty.insert(endpoint); }
                },
                _ = tick.tick(), if !dirty.is_empty() => {
                    let batch: Vec<_> = dirty.drain().collect();
                    return Some((stream::iter(batch), (changed, dirty, tick)));
                }
            }
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(init: &[(&str, &str)], main: &[(&str, &str)]) -> Pod {
        let containers = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(name, image)| json!({"name": name, "image": image}))
                .collect::<Vec<_>>()
        };
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": containers(init), "containers": containers(main)},
        }))
        .unwrap()
    }

    #[test]
    fn the_sidecar_image_is_found_as_a_native_or_a_plain_container() {
        let native = pod(&[("ai-sidecar", "r/ai-sidecar:1")], &[("app", "r/app:1")]);
        assert_eq!(sidecar_image_of(&native), Some("r/ai-sidecar:1"));
        let plain = pod(&[], &[("app", "r/app:1"), ("ai-sidecar", "r/ai-sidecar:2")]);
        assert_eq!(sidecar_image_of(&plain), Some("r/ai-sidecar:2"));
        assert_eq!(sidecar_image_of(&pod(&[], &[("app", "r/app:1")])), None);
    }

    #[test]
    fn an_event_says_when_the_count_of_outdated_sidecars_changes() {
        let two = Outdated {
            pods: 2,
            images: vec!["r/ai-sidecar:0.1.0".into()],
        };
        let (current, reason, message) = two.event(0, "r/ai-sidecar:0.2.0").unwrap();
        assert!(!current);
        assert_eq!(reason, "SidecarsOutdated");
        assert!(
            message.starts_with("2 pod(s) using this endpoint run the sidecar image r/ai-sidecar:0.1.0 instead of r/ai-sidecar:0.2.0"),
            "{message}"
        );
        assert_eq!(
            two.event(2, "r/ai-sidecar:0.2.0"),
            None,
            "no news, no Event"
        );
        let (current, reason, _) = Outdated::default().event(2, "r/ai-sidecar:0.2.0").unwrap();
        assert!(current);
        assert_eq!(reason, "SidecarsCurrent");
        assert_eq!(Outdated::default().event(0, "x"), None);
    }

    fn spent(today: &str, month: &str) -> Totals {
        Totals {
            cost_today: today.parse().unwrap(),
            cost_this_month: month.parse().unwrap(),
            ..Totals::default()
        }
    }

    #[test]
    fn check_reasons_are_published_as_their_names() {
        for reason in [
            Reason::AssumeRoleFailed,
            Reason::CredentialsInvalid,
            Reason::BedrockUnreachable,
            Reason::InferenceProfileNotFound,
            Reason::InferenceProfileMismatch,
            Reason::ModelNotFound,
            Reason::GuardrailPolicyNotFound,
            Reason::PriceUnknown,
        ] {
            assert_eq!(reason.as_str(), format!("{reason:?}"));
        }
        let failed = wanted(
            "Available",
            Err(CheckFailure::new(Reason::ModelNotFound, "m".into())),
            "ModelAvailable",
        );
        assert_eq!((failed.status, failed.reason), (false, "ModelNotFound"));
    }

    #[test]
    fn the_budget_is_exceeded_at_the_limit_and_the_month_wins() {
        let budget: CostBudget =
            serde_json::from_value(json!({ "daily": "10.00", "monthly": "200.00" })).unwrap();
        let at = |t: &Totals| budget_condition(Some(&budget), t).unwrap();
        let within = at(&spent("9.999999", "150"));
        assert_eq!((within.status, within.reason), (false, "WithinBudget"));
        let day = at(&spent("10.000000", "150"));
        assert_eq!((day.status, day.reason), (true, "DailyBudgetExceeded"));
        assert!(
            day.message.contains("$10.00 daily budget"),
            "{}",
            day.message
        );
        let month = at(&spent("10.5", "200"));
        assert_eq!(
            (month.status, month.reason),
            (true, "MonthlyBudgetExceeded")
        );
        assert!(budget_condition(None, &spent("1000", "1000")).is_none());
    }
}
