//! Leader election: the controllers run on the replica holding the Lease, and stop (the process
//! exits) when it loses it; the webhook runs on every replica regardless.

use std::{sync::Arc, time::Duration};

use k8s_ai_api::ModelUsage;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, runtime::watcher};

use crate::{
    controllers::{self, Context, cache::SharedWatch},
    metrics::Metrics,
    webhook::inject::INJECTED_LABEL,
};

/// The leader election settings of `run`.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// Off: this replica runs the controllers without a Lease (one replica only).
    pub enabled: bool,
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
}

/// Why the controllers stopped on this replica.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    #[error("leader election failed")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost the leader Lease; exiting so that the new leader alone runs the controllers")]
    LostLeadership,
}

/// Runs the controllers, on the elected leader only when leader election is on.
///
/// # Errors
/// When the Lease cannot be used, or this replica stops leading.
pub async fn lead(
    client: kube::Client,
    namespace: &str,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    sidecar_image: String,
) -> Result<(), LeadError> {
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let reporter = kube::runtime::events::Reporter {
        controller: "k8s-ai-operator".into(),
        instance: Some(leadership.identity.clone()),
    };
    // One watch of ModelUsages and one of injected Pods, shared by every controller.
    let mut ledgers = SharedWatch::<ModelUsage>::default();
    let mut pods = SharedWatch::<Pod>::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
        aws,
        aws_checks: std::sync::Mutex::default(),
        metrics: Arc::clone(&metrics),
        backoff: controllers::Backoff::default(),
        ledgers: ledgers.cached(),
        pods: pods.cached(),
        sidecar_image,
    });
    let (pods_for_ledgers, pods_for_fold, pods_for_rbac) =
        (pods.subscribe(), pods.subscribe(), pods.subscribe());
    let (ledgers_for_fold, ledgers_for_endpoints, ledgers_for_allocation) = (
        ledgers.subscribe(),
        ledgers.subscribe(),
        ledgers.subscribe(),
    );
    let injected = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=injected"));
    let watch_client = client.clone();
    let controllers = Box::pin(async move {
        tracing::info!(
            "controllers starting: GuardrailPolicy, ModelEndpoint, PromptTemplate, ledger, fold, allocation, sidecar RBAC"
        );
        let watches = async {
            tokio::join!(
                ledgers.run(Api::all(watch_client.clone()), watcher::Config::default()),
                pods.run(Api::all(watch_client), injected),
            );
        };
        let controllers = async {
            tokio::join!(
                controllers::ledger::run(Arc::clone(&ctx), pods_for_ledgers),
                controllers::fold::run(Arc::clone(&ctx), ledgers_for_fold, pods_for_fold),
                controllers::allocation::run(Arc::clone(&ctx), ledgers_for_allocation),
                controllers::guardrail_policy::run(Arc::clone(&ctx)),
                controllers::model_endpoint::run(Arc::clone(&ctx), ledgers_for_endpoints),
                controllers::prompt_template::run(Arc::clone(&ctx)),
                controllers::sidecar_rbac::run(Arc::clone(&ctx), pods_for_rbac),
            );
        };
        // The watches run as long as any controller does (they end at shutdown).
        tokio::select! {
            () = watches => {}
            () = controllers => {}
        }
    });
    if !leadership.enabled {
        metrics.leader.set(1);
        controllers.await;
        return Ok(());
    }
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &leadership.lease_name)
        .with_namespace(namespace)
        .with_identity(&leadership.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(lease = %leadership.lease_name, identity = %leadership.identity, "waiting to lead");
    let _ = leading.wait_for(|l| *l).await;
    tracing::info!(identity = %leadership.identity, "leading");
    metrics.leader.set(1);
    let outcome = tokio::select! {
        () = controllers => Ok(()),
        _ = leading.wait_for(|l| !*l) => Err(LeadError::LostLeadership),
    };
    metrics.leader.set(0);
    // Closing the channel makes the lease task release the Lease, so a successor need not wait
    // for it to expire.
    drop(leading);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    outcome
}
