//! PromptTemplate: compile the template with the sidecar's engine (same rules), check its
//! variables and defaults, resolve its ModelEndpoint, publish `Valid` with a message that points
//! at the error. Re-checked when the template or any ModelEndpoint changes.

use std::sync::Arc;

use k8s_ai_api::{ModelEndpoint, PromptTemplate, template::CompiledTemplate};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::json;

use super::{Context, Error, RECHECK, conditions};

const MANAGER: &str = "k8s-ai-operator/prompttemplate";

/// What the checks found.
fn validity(template: &PromptTemplate, endpoint_exists: bool) -> conditions::Wanted {
    let endpoint = &template.spec.model_endpoint_ref.name;
    match CompiledTemplate::compile(&template.spec) {
        Err(e) => conditions::Wanted {
            type_: "Valid",
            status: false,
            reason: "TemplateInvalid",
            message: e.to_string(),
        },
        Ok(_) if !endpoint_exists => conditions::Wanted {
            type_: "Valid",
            status: false,
            reason: "EndpointNotFound",
            message: format!("ModelEndpoint {endpoint} does not exist in this namespace"),
        },
        Ok(compiled) => {
            let unused = compiled.unused_variables();
            let message = if unused.is_empty() {
                format!("compiles; renders through ModelEndpoint {endpoint}")
            } else {
                format!(
                    "compiles; renders through ModelEndpoint {endpoint}; declared but unused: {}",
                    unused.join(", ")
                )
            };
            conditions::Wanted {
                type_: "Valid",
                status: true,
                reason: "TemplateValid",
                message,
            }
        }
    }
}

async fn reconcile(template: Arc<PromptTemplate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started("PromptTemplate");
    let ns = template.namespace().ok_or(Error::NoNamespace)?;
    let name = template.name_any();
    let endpoint = &template.spec.model_endpoint_ref.name;
    let endpoints: Api<ModelEndpoint> = Api::namespaced(ctx.client.clone(), &ns);
    let exists = endpoints
        .get_opt(endpoint)
        .await
        .map_err(|source| Error::Kube {
            kind: "ModelEndpoint",
            name: format!("{ns}/{endpoint}"),
            source,
        })?
        .is_some();
    let previous = template
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = template.metadata.generation;
    let wanted = validity(&template, exists);
    let transition = conditions::transition(&previous, &wanted);
    let condition = conditions::set(&previous, wanted, generation);
    let status = super::status_patch::<PromptTemplate>(
        json!({ "conditions": [condition], "observedGeneration": generation }),
    );
    let templates: Api<PromptTemplate> = Api::namespaced(ctx.client.clone(), &ns);
    templates
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .map_err(|source| Error::Kube {
            kind: "PromptTemplate",
            name: format!("{ns}/{name}"),
            source,
        })?;
    if let Some((valid, reason, message)) = transition {
        super::announce(&ctx, template.as_ref(), valid, reason, message).await;
    }
    Ok(Action::requeue(RECHECK))
}

/// Runs the PromptTemplate controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let ctx_for_results = Arc::clone(&ctx);
    let templates = Api::<PromptTemplate>::all(ctx.client.clone());
    let endpoints = Api::<ModelEndpoint>::all(ctx.client.clone());
    let controller = Controller::new(templates, watcher::Config::default());
    let store = controller.store();
    let results = controller
        // A ModelEndpoint appearing or going away re-checks the templates that name it.
        .watches(
            endpoints,
            watcher::Config::default(),
            move |endpoint: ModelEndpoint| {
                let ns = endpoint.namespace();
                let name = endpoint.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(move |t| t.namespace() == ns && t.spec.model_endpoint_ref.name == name)
                    .map(|t| ObjectRef::from_obj(&*t))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, super::error_policy, ctx);
    super::drive(&ctx_for_results, results).await;
}
