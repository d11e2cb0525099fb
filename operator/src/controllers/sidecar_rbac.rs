//! The sidecars' permissions: exactly the service accounts of injected pods get what a sidecar
//! needs (`manifests/rbac/sidecar-clusterroles.yaml`), and lose it when their last pod goes.
//!
//! - per namespace, the RoleBinding `k8s-ai-operator-sidecar` binds the ClusterRole of the same
//!   name (ModelEndpoints, PromptTemplates, ModelUsages and their status, in that namespace) to
//!   the service accounts of the namespace's injected pods; deleted when none is left;
//! - one ClusterRoleBinding `k8s-ai-operator-sidecar-guardrails` lets those same accounts read
//!   GuardrailPolicies (cluster-scoped, so a RoleBinding cannot grant them).
//!
//! Not a kube-runtime `Controller`: the object reconciled is a namespace's set of pods, which
//! has no object of its own (and its binding may not exist yet), so the operator's shared watch
//! of injected pods drives it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::Pod,
    rbac::v1::{ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::Notify;

use super::{Context, Error, RECHECK, cache::Change};

/// The namespaced ClusterRole, and the name of each namespace's RoleBinding to it.
pub const SIDECAR_ROLE: &str = "k8s-ai-operator-sidecar";
/// The ClusterRole (and ClusterRoleBinding) for reading GuardrailPolicies.
pub const GUARDRAILS_ROLE: &str = "k8s-ai-operator-sidecar-guardrails";
const MANAGER: &str = "k8s-ai-operator/sidecar-rbac";
const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by=k8s-ai-operator";
/// Changes arriving within this window are handled together.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The service accounts of injected pods, by namespace.
fn accounts(pods: &[Arc<Pod>]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pod in pods {
        let Some(ns) = pod.namespace() else { continue };
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        out.entry(ns).or_default().insert(account);
    }
    out
}

fn subjects<'a>(items: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<serde_json::Value> {
    items
        .map(|(ns, account)| json!({ "kind": "ServiceAccount", "name": account, "namespace": ns }))
        .collect()
}

fn kube_error(kind: &'static str, name: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { kind, name, source }
}

/// Makes the bindings of `namespaces` (and the cluster-wide one) match the injected pods.
async fn sync(
    ctx: &Context,
    pods: &[Arc<Pod>],
    namespaces: &BTreeSet<String>,
) -> Result<(), Error> {
    let _timer = ctx.metrics.reconcile_started("SidecarRBAC");
    let wanted = accounts(pods);
    let apply = PatchParams::apply(MANAGER).force();
    let labels = json!({ "app.kubernetes.io/managed-by": "k8s-ai-operator" });
    for ns in namespaces {
        let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
        match wanted.get(ns) {
            Some(accounts) => {
                let binding = json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": { "name": SIDECAR_ROLE, "labels": labels },
                    "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SIDECAR_ROLE },
                    "subjects": subjects(accounts.iter().map(|a| (ns, a))),
                });
                api.patch(SIDECAR_ROLE, &apply, &Patch::Apply(&binding))
                    .await
                    .map_err(kube_error("RoleBinding", format!("{ns}/{SIDECAR_ROLE}")))?;
            }
            None => match api.delete(SIDECAR_ROLE, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, "no injected pod left: removed the sidecar RoleBinding");
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(kube_error("RoleBinding", format!("{ns}/{SIDECAR_ROLE}"))(e)),
            },
        }
    }
    let api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let all: Vec<(&String, &String)> = wanted
        .iter()
        .flat_map(|(ns, accounts)| accounts.iter().map(move |a| (ns, a)))
        .collect();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": { "name": GUARDRAILS_ROLE, "labels": labels },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": GUARDRAILS_ROLE },
        "subjects": subjects(all.into_iter()),
    });
    api.patch(GUARDRAILS_ROLE, &apply, &Patch::Apply(&binding))
        .await
        .map_err(kube_error("ClusterRoleBinding", GUARDRAILS_ROLE.to_owned()))?;
    Ok(())
}

/// Namespaces that have one of our RoleBindings (so stale ones are found after a restart).
async fn bound_namespaces(ctx: &Context) -> Result<BTreeSet<String>, Error> {
    let api: Api<RoleBinding> = Api::all(ctx.client.clone());
    let list = api
        .list(&ListParams::default().labels(MANAGED_LABEL))
        .await
        .map_err(kube_error("RoleBinding", "(all)".to_owned()))?;
    Ok(list
        .items
        .iter()
        .filter(|b| b.name_any() == SIDECAR_ROLE)
        .filter_map(ResourceExt::namespace)
        .collect())
}

/// What the pod changes have said so far, taken as they come (the shared watch waits for its
/// slowest subscriber) and acted on in the loop below.
#[derive(Default)]
struct Heard {
    /// Namespaces whose injected pods changed.
    dirty: BTreeSet<String>,
    /// A complete list of pods is in (again).
    listed: bool,
}

/// Follows injected pods and keeps the bindings in step until the process ends.
pub async fn run(ctx: Arc<Context>, pods: impl Stream<Item = Change<Pod>> + Send + 'static) {
    let heard = Mutex::new(Heard::default());
    let wake = Notify::new();
    let follow = async {
        futures_util::pin_mut!(pods);
        while let Some(change) = pods.next().await {
            if let Ok(mut heard) = heard.lock() {
                match change {
                    Change::Applied(pod) | Change::Deleted(pod) => {
                        heard.dirty.extend(pod.namespace());
                    }
                    Change::Listed => heard.listed = true,
                }
            }
            wake.notify_one();
        }
    };
    tokio::select! {
        () = follow => {}
        () = keep_in_step(&ctx, &heard, &wake) => {}
    }
}

async fn keep_in_step(ctx: &Context, heard: &Mutex<Heard>, wake: &Notify) {
    // Every namespace is looked at after the first list and on each periodic re-check.
    let mut full_sync_due = true;
    let mut recheck = tokio::time::interval(RECHECK);
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    // Nothing is decided before the first complete list of pods (absence would mean nothing).
    let mut listed = false;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            _ = recheck.tick() => full_sync_due = true,
            // A failed sync is retried even when nothing else happens.
            () = tokio::time::sleep(super::RETRY_AFTER_ERROR), if !dirty.is_empty() => {}
        }
        // Changes arriving within the debounce window are handled together.
        tokio::time::sleep(DEBOUNCE).await;
        if let Ok(mut heard) = heard.lock() {
            dirty.append(&mut heard.dirty);
            if std::mem::take(&mut heard.listed) {
                listed = true;
                full_sync_due = true;
            }
        }
        if !listed {
            continue;
        }
        let pods = ctx.pods.state();
        if full_sync_due {
            match bound_namespaces(ctx).await {
                Ok(bound) => {
                    dirty.extend(bound);
                    dirty.extend(accounts(&pods).into_keys());
                    full_sync_due = false;
                }
                Err(e) => tracing::warn!(error = %e, "cannot list sidecar RoleBindings; retrying"),
            }
        }
        match sync(ctx, &pods, &dirty).await {
            Ok(()) => dirty.clear(),
            Err(e) => {
                ctx.metrics.reconcile_failed("SidecarRBAC", e.category());
                tracing::warn!(error = %e, "sidecar RBAC sync failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, account: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": "p", "namespace": ns },
                "spec": { "serviceAccountName": account, "containers": [] },
            }))
            .unwrap(),
        )
    }

    #[test]
    fn accounts_are_grouped_by_namespace_and_default_when_unnamed() {
        let got = accounts(&[
            pod("a", Some("x")),
            pod("a", None),
            pod("b", Some("x")),
            pod("a", Some("x")),
        ]);
        assert_eq!(
            got["a"],
            BTreeSet::from(["default".to_owned(), "x".to_owned()])
        );
        assert_eq!(got["b"], BTreeSet::from(["x".to_owned()]));
    }
}
