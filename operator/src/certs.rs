//! Self-managed webhook certificates: one [`Bundle`] in a Secret of the operator's namespace, so
//! every replica serves the same pair; the `MutatingWebhookConfiguration`'s `caBundle` kept equal
//! to the CAs the bundle says to trust; rotation steps taken by whichever replica sees them due
//! first (writes use the Secret's resourceVersion, so two replicas never both rotate).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration,
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use webhook_certs::{Bundle, CertError, Lifetimes, ReloadableCert, Step};

use crate::metrics::{Metrics, RotationLabels};

/// Why a pass over the certificates failed (retried at the next check).
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("failed to read or write Secret {namespace}/{name}")]
    Secret {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("failed to patch the caBundle of MutatingWebhookConfiguration {name}")]
    WebhookConfiguration { name: String, source: kube::Error },
    #[error("Secret {namespace}/{name} holds no usable certificates")]
    Damaged {
        namespace: String,
        name: String,
        source: CertError,
    },
    #[error("failed to make a certificate")]
    Generate(#[from] CertError),
}

/// Where the certificates live and how they rotate.
#[derive(Clone)]
pub struct SelfManaged {
    pub client: Client,
    pub namespace: String,
    pub secret_name: String,
    /// The `MutatingWebhookConfiguration` whose webhooks get the `caBundle`.
    pub webhook_configuration: String,
    /// The names the serving certificate is for (`<service>.<namespace>.svc`, ...).
    pub dns_names: Vec<String>,
    pub lifetimes: Lifetimes,
    /// How often each replica looks at the Secret.
    pub check_every: Duration,
}

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "k8s-ai-operator");

impl SelfManaged {
    /// Between two steps of a CA replacement: every replica reloads within `check_every`, and the
    /// API server sees a `caBundle` change within a second or two.
    pub fn overlap(&self) -> Duration {
        self.check_every * 3
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secret_error(&self, source: kube::Error) -> CertsError {
        CertsError::Secret {
            namespace: self.namespace.clone(),
            name: self.secret_name.clone(),
            source,
        }
    }

    /// The stored bundle and the Secret's resourceVersion, creating both if there is none.
    async fn load_or_create(&self, metrics: &Metrics) -> Result<(Bundle, String), CertsError> {
        if let Some(secret) = self
            .secrets()
            .get_opt(&self.secret_name)
            .await
            .map_err(|e| self.secret_error(e))?
        {
            let fields: BTreeMap<String, String> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            let bundle = Bundle::from_fields(&fields).map_err(|source| CertsError::Damaged {
                namespace: self.namespace.clone(),
                name: self.secret_name.clone(),
                source,
            })?;
            return Ok((bundle, secret.metadata.resource_version.unwrap_or_default()));
        }
        let bundle = Bundle::generate(&self.dns_names, SystemTime::now(), self.lifetimes)?;
        match self
            .secrets()
            .create(&PostParams::default(), &self.secret(&bundle, None))
            .await
        {
            Ok(created) => {
                tracing::info!(secret = %self.secret_name, "created the webhook's CA and serving certificate");
                count(metrics, "created");
                Ok((
                    bundle,
                    created.metadata.resource_version.unwrap_or_default(),
                ))
            }
            // Another replica created it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Box::pin(self.load_or_create(metrics)).await
            }
            Err(e) => Err(self.secret_error(e)),
        }
    }

    fn secret(&self, bundle: &Bundle, resource_version: Option<String>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
                resource_version,
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(
                bundle
                    .to_fields()
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    /// One pass: take a due rotation step (stored before anyone serves it), make `caBundle`
    /// trust what the bundle says, and return the bundle to serve.
    pub async fn reconcile(&self, metrics: &Metrics) -> Result<Bundle, CertsError> {
        let (mut bundle, version) = self.load_or_create(metrics).await?;
        let step = bundle.advance(
            &self.dns_names,
            SystemTime::now(),
            self.lifetimes,
            self.overlap(),
        )?;
        if step != Step::Unchanged {
            match self
                .secrets()
                .replace(
                    &self.secret_name,
                    &PostParams::default(),
                    &self.secret(&bundle, Some(version)),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(?step, secret = %self.secret_name, "rotated the webhook's certificates");
                    count(metrics, step_name(step));
                }
                // Another replica took a step meanwhile: serve what is stored now.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    bundle = self.load_or_create(metrics).await?.0;
                }
                Err(e) => return Err(self.secret_error(e)),
            }
        }
        self.patch_ca_bundle(&bundle.ca_bundle()).await?;
        Ok(bundle)
    }

    /// Sets `caBundle` on every webhook of the configuration where it differs.
    async fn patch_ca_bundle(&self, ca_bundle: &str) -> Result<(), CertsError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let error = |source| CertsError::WebhookConfiguration {
            name: self.webhook_configuration.clone(),
            source,
        };
        let Some(config) = api
            .get_opt(&self.webhook_configuration)
            .await
            .map_err(error)?
        else {
            tracing::warn!(configuration = %self.webhook_configuration, "MutatingWebhookConfiguration not found; no caBundle to keep");
            return Ok(());
        };
        let mut ops = Vec::new();
        for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
            if webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.as_slice())
                != Some(ca_bundle.as_bytes())
            {
                // The test guards against the list changing between our read and this write.
                ops.push(json!({ "op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name }));
                ops.push(json!({ "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ByteString(ca_bundle.as_bytes().to_vec()) }));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch =
            serde_json::from_value(json!(ops)).map_err(|e| error(kube::Error::SerdeError(e)))?;
        api.patch(
            &self.webhook_configuration,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
        .map_err(error)?;
        tracing::info!(configuration = %self.webhook_configuration, "updated the webhook's caBundle");
        Ok(())
    }

    /// Checks every `check_every` until the process ends, serving what the Secret holds.
    pub async fn run(
        self,
        serving: Arc<ReloadableCert>,
        mut served: Bundle,
        metrics: Arc<Metrics>,
    ) {
        loop {
            tokio::time::sleep(self.check_every).await;
            match self.reconcile(&metrics).await {
                Ok(bundle) if bundle.cert_pem != served.cert_pem => {
                    match serving.replace(&bundle.cert_pem, &bundle.key_pem) {
                        Ok(()) => {
                            tracing::info!("serving the rotated webhook certificate");
                            set_expiry(&metrics, &bundle);
                            served = bundle;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "kept the previous webhook certificate");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook certificate check failed; retrying"),
            }
        }
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Unchanged => "unchanged",
        Step::RenewedServing => "renewed_serving",
        Step::AnnouncedCa => "announced_ca",
        Step::SwitchedCa => "switched_ca",
        Step::RetiredCa => "retired_ca",
    }
}

fn count(metrics: &Metrics, step: &str) {
    metrics
        .certificate_rotations
        .get_or_create(&RotationLabels {
            step: step.to_owned(),
        })
        .inc();
}

/// Publishes when the served certificate expires.
pub fn set_expiry(metrics: &Metrics, bundle: &Bundle) {
    let secs = bundle
        .not_after
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    metrics
        .certificate_expiry
        .set(i64::try_from(secs).unwrap_or(i64::MAX));
}

/// Re-reads the certificate files of `--cert-mode files` when they change (cert-manager renews
/// them in place); a pair that cannot be read or used leaves the previous one serving.
pub async fn reload_on_change(cert: Arc<ReloadableCert>, cert_file: PathBuf, key_file: PathBuf) {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = (modified(&cert_file), modified(&key_file));
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = (modified(&cert_file), modified(&key_file));
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = std::fs::read_to_string(&cert_file)
            .and_then(|c| Ok((c, std::fs::read_to_string(&key_file)?)));
        match loaded {
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the TLS certificate or key; kept the previous TLS certificate");
            }
            Ok((c, k)) => match cert.replace(&c, &k) {
                Ok(()) => tracing::info!("reloaded the webhook's TLS certificate"),
                Err(e) => tracing::warn!(error = %e, "kept the previous TLS certificate"),
            },
        }
    }
}
