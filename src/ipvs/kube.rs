//! Watches: Services, EndpointSlices (discovery.k8s.io/v1) and this Node,
//! each a kube-rs watcher feeding a reflector store.
//!
//! The watch tasks only mark the proxy dirty; the sync runner recomputes
//! from the whole stores (kube-rs warns that watch deletes can be lost, so
//! events are never diffed). The initial list uses plain list+watch, not
//! streaming lists: a server without WatchList would never answer those.
//! When the apiserver goes away the watchers back off and retry while the
//! stores keep their last complete content, so the kernel is left as is.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
}

/// A client from `ProxyConfig.kubeconfig` (kube-proxy's
/// clientConnection.kubeconfig), or the in-cluster service account.
pub async fn client_from_config(cfg: &ProxyConfig) -> Result<Client, KubeError> {
    let config = match &cfg.kubeconfig {
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

/// Starts the three watchers on `tasks`; each event marks `dirty`.
/// Tasks end when `shutdown` is cancelled.
pub fn start_watchers(
    client: Client,
    node_name: &str,
    dirty: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Caches {
    let services = spawn_watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        "services",
        dirty.clone(),
        shutdown.clone(),
        tasks,
    );
    let slices = spawn_watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        "endpointslices",
        dirty.clone(),
        shutdown.clone(),
        tasks,
    );
    let node = spawn_watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        "node",
        dirty,
        shutdown,
        tasks,
    );
    Caches {
        services,
        slices,
        node,
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    dirty: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
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
                Some(Ok(_)) => dirty.notify_one(),
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
