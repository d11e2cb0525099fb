//! Configuration from the API server, with the pod's own service account: a watch per
//! ModelEndpoint this pod may use (field selector on its name, so RBAC can grant just those), one
//! on the namespace's PromptTemplates and one on GuardrailPolicies. Watches retry with backoff;
//! while the API server is away the last snapshot keeps serving.

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt, stream::select_all};
use k8s_ai_api::{
    GuardrailPolicy, ModelEndpoint, ModelUsage, PromptTemplate, model_usage::ledger_name,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};

use crate::catalog::{Catalog, Manifests};

type Changes = Pin<Box<dyn Stream<Item = ()> + Send>>;

fn changes<K>(api: Api<K>, config: watcher::Config, writer: reflector::store::Writer<K>) -> Changes
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    Box::pin(
        watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .map(move |event| {
                if let Err(e) = event {
                    // Keep serving the last configuration; the watcher retries by itself.
                    tracing::warn!(kind, error = %e, "watch failed; serving the last known configuration");
                }
            }),
    )
}

/// Watches the cluster and keeps `catalog` up to date until the process ends.
pub async fn run(client: Client, catalog: Arc<Catalog>) {
    let ns = catalog.namespace().to_owned();
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut streams: Vec<Changes> = Vec::new();
    let mut endpoint_stores = Vec::new();
    let mut usage_stores = Vec::new();
    for endpoint in catalog.allowed() {
        let (store, writer) = reflector::store::<ModelEndpoint>();
        streams.push(changes(
            Api::<ModelEndpoint>::namespaced(client.clone(), &ns),
            by_name(endpoint),
            writer,
        ));
        endpoint_stores.push(store);
        if !catalog.pod().is_empty() {
            // This pod's ledger for the endpoint: its spec carries the operator's allocation.
            let (store, writer) = reflector::store::<ModelUsage>();
            let name = ledger_name(catalog.pod(), endpoint);
            streams.push(changes(
                Api::<ModelUsage>::namespaced(client.clone(), &ns),
                by_name(&name),
                writer,
            ));
            usage_stores.push(store);
        }
    }
    let (templates, writer) = reflector::store::<PromptTemplate>();
    streams.push(changes(
        Api::<PromptTemplate>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
        writer,
    ));
    let (policies, writer) = reflector::store::<GuardrailPolicy>();
    streams.push(changes(
        Api::<GuardrailPolicy>::all(client),
        watcher::Config::default(),
        writer,
    ));

    let mut events = select_all(streams);
    while events.next().await.is_some() {
        // Ledgers are optional (the operator may not have created them yet): readiness waits for the rest.
        if !(endpoint_stores.iter().all(is_ready) && is_ready(&templates) && is_ready(&policies)) {
            continue;
        }
        let objects = Manifests {
            endpoints: endpoint_stores
                .iter()
                .flat_map(reflector::Store::state)
                .map(|o| (*o).clone())
                .collect(),
            templates: templates.state().iter().map(|o| (**o).clone()).collect(),
            policies: policies.state().iter().map(|o| (**o).clone()).collect(),
            usages: usage_stores
                .iter()
                .flat_map(reflector::Store::state)
                .map(|o| (*o).clone())
                .collect(),
        };
        catalog.update(&objects);
    }
}

/// Whether a store has its initial list (without waiting for it).
fn is_ready<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures_util::FutureExt as _;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}
