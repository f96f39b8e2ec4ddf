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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::changes::TRIGGER_TIME_ANNOTATION;
use super::model::{ObjectKey, ServiceInputs, HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use super::objects::EndpointSlice;
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
        + Slim
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

/// The labels the proxy reads (the rest are dropped from the stores); a
/// slice's service-name label is already a field of its own
/// (`objects::EndpointSlice::service_name`).
const READ_LABELS: [&str; 2] = [SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL];
/// The annotations the proxy reads: the slice's trigger time, for the
/// programming-latency metric.
const READ_ANNOTATIONS: [&str; 1] = [TRIGGER_TIME_ANNOTATION];

/// What the stores keep of an object. At 10k Services the stores are most
/// of the proxy's memory, and most of an object is what the proxy never
/// reads: managedFields (which kube-proxy's informers drop too, client-go's
/// `TransformStripManagedFields`), kubectl's last-applied copy, uid and
/// timestamps, the selector (an endpoint's targetRef and hostname are never
/// decoded: `objects::EndpointSlice`). Services and EndpointSlices keep
/// only the metadata the proxy reads (name,
/// namespace, resourceVersion, [`READ_LABELS`], [`READ_ANNOTATIONS`]);
/// the Node keeps all but managedFields and the last-applied copy (one
/// object; its health and topology read labels, taints, status).
/// A field newly read from a Service or slice must be kept here first:
/// the unit tests below list what survives.
pub trait Slim {
    fn slim(&mut self);
}

/// The Node and anything else: managedFields and last-applied only.
fn slim_generic(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Services and slices: the metadata the proxy reads, nothing else.
fn slim_meta(meta: &mut ObjectMeta) {
    let keep = |m: Option<BTreeMap<String, String>>, read: &[&str]| {
        let m: BTreeMap<String, String> = m?
            .into_iter()
            .filter(|(k, _)| read.contains(&k.as_str()))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        labels: keep(meta.labels.take(), &READ_LABELS),
        annotations: keep(meta.annotations.take(), &READ_ANNOTATIONS),
        ..ObjectMeta::default()
    };
}

impl Slim for Service {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            // Endpoints come from the slices, never from the selector.
            spec.selector = None;
            if let Some(p) = spec.ports.as_mut() {
                p.shrink_to_fit();
            }
        }
        if let Some(status) = self.status.as_mut() {
            status.conditions = None;
        }
    }
}

impl Slim for EndpointSlice {
    // The endpoints, ports and service-name label are already what the
    // proxy reads (`objects::EndpointSlice` decodes nothing else).
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
    }
}

impl Slim for Node {
    fn slim(&mut self) {
        slim_generic(&mut self.metadata);
    }
}

/// [`Slim::slim`] as a function, for the watch streams' `modify`.
pub fn slim<K: Slim>(obj: &mut K) {
    obj.slim();
}

#[cfg(test)]
mod tests {
    use super::super::model::SERVICE_NAME_LABEL;
    use super::*;

    #[test]
    fn the_stores_keep_neither_managed_fields_nor_the_last_applied_copy() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "cp1", "uid": "u1",
                "labels": {"topology.kubernetes.io/zone": "a"},
                "annotations": {LAST_APPLIED: "{}"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]
            },
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}
        }))
        .unwrap();
        node.slim();
        assert_eq!(node.metadata.managed_fields, None);
        assert_eq!(node.metadata.annotations, None);
        // The Node keeps the rest: labels, taints, uid.
        assert_eq!(node.metadata.uid.as_deref(), Some("u1"));
        assert!(node
            .metadata
            .labels
            .unwrap()
            .contains_key("topology.kubernetes.io/zone"));
        assert_eq!(node.spec.unwrap().taints.unwrap().len(), 1);
    }

    #[test]
    fn services_keep_only_what_the_proxy_reads() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "a", "namespace": "default", "uid": "u", "resourceVersion": "7",
                "generation": 3, "creationTimestamp": "2026-12-06T10:00:00Z",
                "labels": {"app": "web", SERVICE_PROXY_NAME_LABEL: "x"},
                "annotations": {
                    LAST_APPLIED: "{\"apiVersion\":\"v1\"}",
                    "service.kubernetes.io/topology-mode": "Auto"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]},
                       "conditions": [{"type": "t", "status": "True", "reason": "r",
                                       "message": "m", "lastTransitionTime": "2026-12-06T10:00:00Z"}]}
        }))
        .unwrap();
        svc.slim();
        let want: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "default", "resourceVersion": "7",
                         "labels": {SERVICE_PROXY_NAME_LABEL: "x"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}
        }))
        .unwrap();
        assert_eq!(svc, want);
    }

    #[test]
    fn slices_keep_only_what_the_proxy_reads() {
        let mut es: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "a-1", "namespace": "default", "uid": "u", "resourceVersion": "9",
                "generateName": "a-", "generation": 1,
                "labels": {SERVICE_NAME_LABEL: "a", "endpointslice.kubernetes.io/managed-by": "c"},
                "annotations": {TRIGGER_TIME_ANNOTATION: "2026-12-06T10:00:00Z"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "a", "uid": "s"}]
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.1", "not-an-ip"], "hostname": "h", "nodeName": "cp1",
                           "zone": "z", "conditions": {"ready": true, "serving": true},
                           "hints": {"forZones": [{"name": "z"}]},
                           "targetRef": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "pu"},
                           "deprecatedTopology": {"k": "v"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        es.slim();
        let want: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a-1", "namespace": "default", "resourceVersion": "9",
                         "labels": {SERVICE_NAME_LABEL: "a"},
                         "annotations": {TRIGGER_TIME_ANNOTATION: "2026-12-06T10:00:00Z"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.1"], "nodeName": "cp1", "zone": "z",
                           "conditions": {"ready": true, "serving": true},
                           "hints": {"forZones": [{"name": "z"}]}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        assert_eq!(es, want);
        // The service-name label is a field of its own, the addresses parsed.
        assert_eq!(es.service_name.as_deref(), Some("a"));
        assert_eq!(es.metadata.labels, None);
        let ep = &es.endpoints.as_ref().unwrap()[0];
        assert_eq!(
            ep.addresses,
            vec!["10.244.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(ep.node_name.as_deref(), Some("cp1"));
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
