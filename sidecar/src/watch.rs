//! Configuration from the API server, with the pod's own service account: a watch per
//! ModelEndpoint this pod may use (field selector on its name, so RBAC can grant just those), one
//! on the namespace's PromptTemplates and one on GuardrailPolicies. Watches retry with backoff;
//! while the API server is away the last snapshot keeps serving.

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt, stream::select_all};
use k8s_ai_api::{GuardrailPolicy, ModelEndpoint, PromptTemplate};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};

use crate::catalog::Catalog;

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
    let mut streams: Vec<Changes> = Vec::new();
    let mut endpoint_stores = Vec::new();
    for name in catalog.allowed() {
        let (store, writer) = reflector::store::<ModelEndpoint>();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        streams.push(changes(
            Api::<ModelEndpoint>::namespaced(client.clone(), &ns),
            config,
            writer,
        ));
        endpoint_stores.push(store);
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
        let ready = endpoint_stores.iter().all(|s| {
            s.wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        }) && templates
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
            && policies
                .wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok());
        if !ready {
            continue;
        }
        let endpoints: Vec<ModelEndpoint> = endpoint_stores
            .iter()
            .flat_map(reflector::Store::state)
            .map(|o| (*o).clone())
            .collect();
        let templates: Vec<PromptTemplate> =
            templates.state().iter().map(|o| (**o).clone()).collect();
        let policies: Vec<GuardrailPolicy> =
            policies.state().iter().map(|o| (**o).clone()).collect();
        catalog.update(&endpoints, &templates, &policies);
    }
}

use futures_util::FutureExt as _;
