//! One watch per kind the controllers share (ModelUsages, injected Pods): a reflector store every
//! reconciler reads instead of the API server, and a feed of its changes to each controller that
//! is triggered by them.
//!
//! kube-runtime's own shared streams (`store_shared`) drop deletions, which the fold and RBAC
//! controllers need, hence this small fan-out. Objects are cached without `managedFields` (the
//! sidecars' server-side applies make them a third of a ledger), which nothing here reads.

use std::{fmt::Debug, hash::Hash, sync::Arc};

use futures_util::{Stream, StreamExt, stream};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

/// Changes queued per subscriber before the watch waits for it (each is one `Arc`).
const BUFFER: usize = 4096;

/// What a subscriber hears of the watched objects.
#[derive(Debug)]
pub enum Change<K> {
    /// Created or changed (or listed again after the watch was interrupted).
    Applied(Arc<K>),
    /// Gone from the API server.
    Deleted(Arc<K>),
    /// The store holds a complete list (the first time: it can now be trusted about absences).
    Listed,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(k) => Change::Applied(Arc::clone(k)),
            Change::Deleted(k) => Change::Deleted(Arc::clone(k)),
            Change::Listed => Change::Listed,
        }
    }
}

/// The shared cache of one kind, as the reconcilers read it.
#[derive(Clone)]
pub struct Cached<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store: Store<K>,
    listed: watch::Receiver<bool>,
}

impl<K> std::ops::Deref for Cached<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    type Target = Store<K>;
    fn deref(&self) -> &Store<K> {
        &self.store
    }
}

impl<K> Cached<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// The store itself (for a `Controller` of this kind).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits for the first complete list. (`Store::wait_until_ready` wakes only the last of
    /// several waiters: concurrent reconciles would hang on it.)
    pub async fn listed(&self) -> Result<(), super::Error> {
        self.listed
            .clone()
            .wait_for(|listed| *listed)
            .await
            .map(|_| ())
            .map_err(|source| super::Error::CacheGone {
                kind: K::kind(&()).into_owned(),
                source,
            })
    }
}

/// A watch of one kind, feeding one store and any number of subscribers.
pub struct SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    writer: Writer<K>,
    store: Store<K>,
    listed: watch::Sender<bool>,
    subscribers: Vec<mpsc::Sender<Change<K>>>,
}

impl<K> Default for SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn default() -> Self {
        let (store, writer) = reflector::store();
        Self {
            writer,
            store,
            listed: watch::Sender::new(false),
            subscribers: Vec::new(),
        }
    }
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// The cache (empty until the first list is complete: see [`Cached::listed`]).
    pub fn cached(&self) -> Cached<K> {
        Cached {
            store: self.store.clone(),
            listed: self.listed.subscribe(),
        }
    }

    /// Every change from the start of the watch; subscribe before [`SharedWatch::run`].
    pub fn subscribe(&mut self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.subscribers.push(tx);
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    /// Watches `api` until the process ends (retrying with backoff), keeping the store and
    /// telling the subscribers; a subscriber that has gone is dropped.
    pub async fn run(mut self, api: Api<K>, config: watcher::Config) {
        let events = watcher(api, config)
            .default_backoff()
            .modify(|o: &mut K| o.meta_mut().managed_fields = None);
        futures_util::pin_mut!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::debug!(kind = %<K as Resource>::kind(&()), error = %e, "watch interrupted; retrying");
                    continue;
                }
            };
            self.writer.apply_watcher_event(&event);
            let change = match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    // The store's own copy when it has one, so the object is held once.
                    let cached = self.store.get(&ObjectRef::from_obj(&o));
                    Change::Applied(cached.unwrap_or_else(|| Arc::new(o)))
                }
                watcher::Event::Delete(o) => Change::Deleted(Arc::new(o)),
                watcher::Event::InitDone => {
                    self.listed.send_replace(true);
                    Change::Listed
                }
                watcher::Event::Init => continue,
            };
            let mut gone = Vec::new();
            for (i, subscriber) in self.subscribers.iter().enumerate() {
                if subscriber.send(change.clone()).await.is_err() {
                    gone.push(i);
                }
            }
            for i in gone.into_iter().rev() {
                self.subscribers.swap_remove(i);
            }
        }
    }
}

/// The changed objects of `changes` as a kube-runtime `Controller` trigger stream: applied ones
/// only (a controller's own objects), or deleted ones too (objects it maps to its own).
pub fn triggers<K: Clone + Send + Sync + 'static>(
    changes: impl Stream<Item = Change<K>> + Send + 'static,
    with_deleted: bool,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    changes.filter_map(move |change| {
        std::future::ready(match change {
            Change::Applied(o) => Some(Ok(Arc::unwrap_or_clone(o))),
            Change::Deleted(o) if with_deleted => Some(Ok(Arc::unwrap_or_clone(o))),
            Change::Deleted(_) | Change::Listed => None,
        })
    })
}

/// Hashes of what a `ModelEndpoint`-like object's spec is (UID and generation): the
/// `Controller` trigger filter that ignores status-only writes.
pub fn spec_version<K: Resource>(object: &K) -> Option<u64> {
    use std::hash::{DefaultHasher, Hasher};
    let meta = object.meta();
    let mut hasher = DefaultHasher::new();
    meta.uid.hash(&mut hasher);
    meta.generation?.hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(uid: &str, generation: Option<i64>) -> Pod {
        serde_json::from_value(
            json!({ "metadata": { "name": "p", "uid": uid, "generation": generation } }),
        )
        .unwrap()
    }

    #[test]
    fn the_spec_version_changes_with_generation_and_uid_only() {
        assert_eq!(
            spec_version(&pod("a", Some(1))),
            spec_version(&pod("a", Some(1)))
        );
        assert_ne!(
            spec_version(&pod("a", Some(1))),
            spec_version(&pod("a", Some(2)))
        );
        assert_ne!(
            spec_version(&pod("a", Some(1))),
            spec_version(&pod("b", Some(1))),
            "a new object of the same name is new"
        );
        assert_eq!(spec_version(&pod("a", None)), None);
    }

    #[tokio::test]
    async fn triggers_carry_deletions_only_when_asked() {
        let changes = || {
            stream::iter([
                Change::Applied(Arc::new(pod("a", None))),
                Change::Deleted(Arc::new(pod("b", None))),
                Change::Listed,
            ])
        };
        let uids = |with_deleted| async move {
            triggers(changes(), with_deleted)
                .map(|p| p.unwrap().metadata.uid.unwrap())
                .collect::<Vec<_>>()
                .await
        };
        assert_eq!(uids(false).await, ["a"]);
        assert_eq!(uids(true).await, ["a", "b"]);
    }
}
