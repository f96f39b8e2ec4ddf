//! Watches: Services, EndpointSlices (discovery.k8s.io/v1) and this Node,
//! each a kube-rs watcher feeding a reflector store.
//!
//! The watch tasks only mark the proxy dirty: which Services (by
//! namespace/name) a Service or EndpointSlice event touched, in a
//! [`ChangeTracker`]. Objects are never taken from events: the sync runner
//! reads the current ones from the stores, and a relist (where lost watch
//! deletes surface, as kube-rs warns) marks everything dirty, so the next
//! sync recomputes from the whole stores. The initial list uses plain list+watch, not
//! streaming lists: a server without WatchList would never answer those.
//! When the apiserver goes away the watchers back off and retry while the
//! stores keep their last complete content, so the kernel is left as is.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::model::{ObjectKey, ServiceInputs, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use crate::config::ProxyConfig;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("proxy.api_server {url}: {source}")]
    ApiServer {
        url: String,
        source: http::uri::InvalidUri,
    },
}

/// A client from `ProxyConfig.kubeconfig` (kube-proxy's
/// clientConnection.kubeconfig), or the in-cluster service account; at
/// `ProxyConfig.api_server` when set (kube-proxy's `--master`): in-cluster
/// that is the apiserver's real address, never the `kubernetes` Service's
/// ClusterIP that only this proxy programs.
pub async fn client_from_config(cfg: &ProxyConfig) -> Result<Client, KubeError> {
    let mut config = match &cfg.kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::incluster()?,
    };
    if let Some(a) = &cfg.api_server {
        config.cluster_url = a.url.parse().map_err(|source| KubeError::ApiServer {
            url: a.url.clone(),
            source,
        })?;
    }
    Ok(Client::try_from(config)?)
}

/// The three reflector stores the desired state is computed from.
#[derive(Clone)]
pub struct Caches {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub node: Store<Node>,
}

impl Caches {
    /// Resolves once every store has seen its first complete list: before
    /// that a sync would delete what the kernel holds for the unseen rest.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.node.wait_until_ready().await
    }

    pub fn is_ready(&self) -> bool {
        // A ready store answers at once; the future is polled one time.
        futures::FutureExt::now_or_never(self.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

/// Which Services changed since the last sync, and which slices belong to
/// each Service (so their current versions can be read from the store by
/// name). Shared by the watch tasks and the sync runner; every operation is
/// O(changed), short, and never awaits while locked.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    all: bool,
    dirty: BTreeSet<ObjectKey>,
    /// Service -> names of its slices (same namespace).
    slices_by_service: HashMap<ObjectKey, BTreeSet<String>>,
    /// Slice -> the Service its label named when last seen.
    slice_owner: HashMap<ObjectKey, ObjectKey>,
}

/// What a sync has to look at, taken from a [`ChangeTracker`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything (a relist): recompute from the whole stores.
    pub all: bool,
    pub services: BTreeSet<ObjectKey>,
}

impl ChangeTracker {
    pub fn mark_all(&mut self) {
        self.all = true;
    }

    pub fn service_changed(&mut self, key: ObjectKey) {
        self.dirty.insert(key);
    }

    /// A slice was added or updated: its Service is dirty, and so is the
    /// one it belonged to before if its label changed.
    pub fn slice_applied(&mut self, slice: ObjectKey, service: Option<ObjectKey>) {
        let old = match &service {
            Some(svc) if self.slice_owner.get(&slice) == Some(svc) => None,
            _ => self.unlink(&slice),
        };
        if let Some(o) = old {
            self.dirty.insert(o);
        }
        if let Some(svc) = service {
            self.slices_by_service
                .entry(svc.clone())
                .or_default()
                .insert(slice.name.clone());
            self.slice_owner.insert(slice, svc.clone());
            self.dirty.insert(svc);
        }
    }

    pub fn slice_deleted(&mut self, slice: &ObjectKey) {
        if let Some(o) = self.unlink(slice) {
            self.dirty.insert(o);
        }
    }

    fn unlink(&mut self, slice: &ObjectKey) -> Option<ObjectKey> {
        let svc = self.slice_owner.remove(slice)?;
        if let Some(set) = self.slices_by_service.get_mut(&svc) {
            set.remove(&slice.name);
            if set.is_empty() {
                self.slices_by_service.remove(&svc);
            }
        }
        Some(svc)
    }

    /// After a relist: the index is rebuilt from the whole store and every
    /// Service is dirty.
    pub fn reset_slices<'a>(&mut self, slices: impl IntoIterator<Item = &'a EndpointSlice>) {
        self.slices_by_service.clear();
        self.slice_owner.clear();
        for s in slices {
            if let Some(svc) = ObjectKey::service_of(s) {
                let key = ObjectKey::of(&s.metadata);
                self.slices_by_service
                    .entry(svc.clone())
                    .or_default()
                    .insert(key.name.clone());
                self.slice_owner.insert(key, svc);
            }
        }
        self.all = true;
    }

    /// Takes (and clears) what changed since the last call.
    pub fn take(&mut self) -> Dirty {
        Dirty {
            all: std::mem::take(&mut self.all),
            services: std::mem::take(&mut self.dirty),
        }
    }

    /// Names of the slices labelled for `svc`.
    pub fn slice_names(&self, svc: &ObjectKey) -> Vec<String> {
        self.slices_by_service
            .get(svc)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The caches plus what changed in them.
#[derive(Clone)]
pub struct Watched {
    pub caches: Caches,
    pub tracker: Arc<Mutex<ChangeTracker>>,
}

impl Watched {
    pub fn tracker(&self) -> MutexGuard<'_, ChangeTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current objects of the given Services, read from the stores.
    pub fn inputs(&self, keys: &BTreeSet<ObjectKey>) -> Vec<ServiceInputs> {
        let names: Vec<Vec<String>> = {
            let t = self.tracker();
            keys.iter().map(|k| t.slice_names(k)).collect()
        };
        keys.iter()
            .zip(names)
            .map(|(k, names)| ServiceInputs {
                key: k.clone(),
                service: self
                    .caches
                    .services
                    .get(&ObjectRef::new(&k.name).within(&k.namespace)),
                slices: names
                    .iter()
                    .filter_map(|n| {
                        self.caches
                            .slices
                            .get(&ObjectRef::new(n).within(&k.namespace))
                    })
                    // The store may be ahead of the index: trust the label.
                    .filter(|s| ObjectKey::service_of(s).as_ref() == Some(k))
                    .collect(),
            })
            .collect()
    }
}

/// Starts the three watchers on `tasks`; each event marks `dirty` and
/// records in the tracker what it touched. Tasks end when `shutdown` is
/// cancelled.
pub fn start_watchers(
    client: Client,
    node_name: &str,
    dirty: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Watched {
    let tracker = Arc::new(Mutex::new(ChangeTracker::default()));
    let t = Arc::clone(&tracker);
    let services = spawn_watch(
        Api::<Service>::all(client.clone()),
        // kube-proxy's own selectors (cmd/kube-proxy/app/server.go): not
        // another proxy's Services, not headless ones.
        watcher::Config::default()
            .labels(&format!("!{SERVICE_PROXY_NAME_LABEL}"))
            .fields("spec.clusterIP!=None"),
        "services",
        dirty.clone(),
        shutdown.clone(),
        tasks,
        move |ev: &watcher::Event<Service>, _store: &Store<Service>| {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                    t.service_changed(ObjectKey::of(&s.metadata))
                }
                watcher::Event::InitDone => t.mark_all(),
                _ => {}
            }
        },
    );
    let t = Arc::clone(&tracker);
    let slices = spawn_watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("!{HEADLESS_LABEL}")),
        "endpointslices",
        dirty.clone(),
        shutdown.clone(),
        tasks,
        move |ev: &watcher::Event<EndpointSlice>, store: &Store<EndpointSlice>| {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                watcher::Event::Apply(s) => {
                    t.slice_applied(ObjectKey::of(&s.metadata), ObjectKey::service_of(s))
                }
                watcher::Event::Delete(s) => t.slice_deleted(&ObjectKey::of(&s.metadata)),
                watcher::Event::InitDone => {
                    let all = store.state();
                    t.reset_slices(all.iter().map(|s| &**s));
                }
                _ => {}
            }
        },
    );
    // Node events only wake the runner: `Syncer::wants_full` notices when
    // the node's addresses changed.
    let node = spawn_watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        "node",
        dirty,
        shutdown,
        tasks,
        |_: &watcher::Event<Node>, _: &Store<Node>| {},
    );
    Watched {
        caches: Caches {
            services,
            slices,
            node,
        },
        tracker,
    }
}

fn spawn_watch<K, F>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    dirty: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
    mut on_event: F,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    F: FnMut(&watcher::Event<K>, &Store<K>) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    let store = reader.clone();
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                // Only complete states matter to the runner: a relist is
                // applied to the store at InitDone, not piecemeal.
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                // `reflect` has applied the event to the store already.
                Some(Ok(ev)) => {
                    on_event(&ev, &store);
                    dirty.notify_one();
                }
                Some(Err(e)) => {
                    // The backoff retries; the store keeps its last content.
                    tracing::warn!(watch = what, error = %e, "watch failed, retrying");
                }
                None => return,
            }
        }
    });
    reader
}

/// kubectl's copy of the whole object as last applied: never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the stores keep of an object: all but its managedFields and
/// kubectl's last-applied copy, which nothing here reads and which are
/// most of a small object's size (kube-proxy's informers drop managedFields
/// the same way, client-go's `TransformStripManagedFields`). At 10k
/// Services the stores are most of the proxy's memory.
fn slim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stores_keep_neither_managed_fields_nor_the_last_applied_copy() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "a", "namespace": "default",
                "annotations": {
                    LAST_APPLIED: "{\"apiVersion\":\"v1\"}",
                    "service.kubernetes.io/topology-mode": "Auto"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"clusterIP": "10.96.0.10"}
        }))
        .unwrap();
        slim(&mut svc);
        assert_eq!(svc.metadata.managed_fields, None);
        let kept: Vec<&String> = svc.metadata.annotations.as_ref().unwrap().keys().collect();
        // Annotations that mean something to the proxy stay.
        assert_eq!(kept, ["service.kubernetes.io/topology-mode"]);
        assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));

        let mut only_last: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b", "annotations": {LAST_APPLIED: "{}"}}
        }))
        .unwrap();
        slim(&mut only_last);
        assert_eq!(only_last.metadata.annotations, None);
    }

    fn k(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(ns, name)
    }

    #[test]
    fn slice_events_dirty_their_services_old_and_new() {
        let mut t = ChangeTracker::default();
        t.slice_applied(k("a", "web-1"), Some(k("a", "web")));
        assert_eq!(
            t.take(),
            Dirty {
                all: false,
                services: BTreeSet::from([k("a", "web")])
            }
        );
        assert_eq!(t.slice_names(&k("a", "web")), vec!["web-1".to_string()]);

        // Relabelled: both Services change.
        t.slice_applied(k("a", "web-1"), Some(k("a", "api")));
        assert_eq!(
            t.take().services,
            BTreeSet::from([k("a", "api"), k("a", "web")])
        );
        assert!(t.slice_names(&k("a", "web")).is_empty());

        // Label removed: the old Service loses it, nothing gains it.
        t.slice_applied(k("a", "web-1"), None);
        assert_eq!(t.take().services, BTreeSet::from([k("a", "api")]));
        assert!(t.slice_names(&k("a", "api")).is_empty());

        t.slice_applied(k("a", "web-2"), Some(k("a", "web")));
        t.take();
        t.slice_deleted(&k("a", "web-2"));
        assert_eq!(t.take().services, BTreeSet::from([k("a", "web")]));
        // An unknown slice going away touches nothing.
        t.slice_deleted(&k("a", "never"));
        assert_eq!(t.take(), Dirty::default());
    }

    #[test]
    fn relist_rebuilds_the_index_and_dirties_everything() {
        let mut t = ChangeTracker::default();
        t.slice_applied(k("a", "stale-1"), Some(k("a", "stale")));
        t.service_changed(k("a", "x"));
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "a",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        t.reset_slices([&slice]);
        let d = t.take();
        assert!(d.all);
        assert_eq!(t.slice_names(&k("a", "web")), vec!["web-1".to_string()]);
        assert!(t.slice_names(&k("a", "stale")).is_empty());
        assert!(!t.take().all);
    }
}
