//! An in-process Kubernetes API server for tests: just enough of the real
//! list/watch protocol for kube-rs's client, watcher and reflector to run
//! unchanged against it.
//!
//! - `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`,
//!   `/api/v1/nodes` (with `fieldSelector=metadata.name=...`): a List with
//!   `metadata.resourceVersion`.
//! - the same with `?watch=true&resourceVersion=N`: a stream of JSON lines
//!   `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`,
//!   starting after N; bookmarks on request when `allowWatchBookmarks`.
//! - a resourceVersion older than the compacted history is answered as a
//!   real apiserver does: HTTP 200 and one ERROR event carrying a Status
//!   with code 410, reason Expired.
//!
//! The test mutates objects (`apply`, `delete`), compacts history, and
//! cuts/restores the connection (every open connection is closed and new
//! ones are dropped on accept while cut).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_path(p: &str) -> Option<Kind> {
        match p {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    kind: Kind,
    ty: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Event>,
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted_below: u64,
}

/// Counts of requests seen, for assertions on the protocol.
#[derive(Debug, Default)]
pub struct Counters {
    pub lists: AtomicUsize,
    pub watches: AtomicUsize,
    pub expired: AtomicUsize,
    pub dropped_connections: AtomicUsize,
}

#[derive(Clone)]
pub struct TestApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    online: Arc<AtomicBool>,
    /// Cancelled on cut(): ends every open connection.
    generation: Arc<Mutex<CancellationToken>>,
    bookmarks: broadcast::Sender<()>,
    /// Kinds whose list requests wait until released (a cache that is slow
    /// to sync).
    held: Arc<tokio::sync::watch::Sender<Vec<Kind>>>,
    pub counters: Arc<Counters>,
    stop: CancellationToken,
}

impl TestApiServer {
    pub async fn start() -> TestApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(4096);
        let (bookmarks, _) = broadcast::channel(16);
        let srv = TestApiServer {
            addr,
            state: Arc::new(Mutex::new(State {
                rv: 100,
                ..Default::default()
            })),
            events,
            online: Arc::new(AtomicBool::new(true)),
            generation: Arc::new(Mutex::new(CancellationToken::new())),
            bookmarks,
            held: Arc::new(tokio::sync::watch::channel(Vec::new()).0),
            counters: Arc::default(),
            stop: CancellationToken::new(),
        };
        let s = srv.clone();
        tokio::spawn(async move { s.accept_loop(listener).await });
        srv
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\n",
            self.addr
        )
    }

    /// A kube client for this server, as from a kubeconfig file. A dummy
    /// root certificate is configured: with none, kube's rustls setup looks
    /// for the system's CA store even for plain HTTP, and the VM has none.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml()).unwrap();
        let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["unused.invalid".to_string()]).unwrap();
        cfg.root_cert = Some(vec![ca.cert.der().to_vec()]);
        kube::Client::try_from(cfg).unwrap()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Creates or replaces an object (ADDED or MODIFIED), setting its
    /// resourceVersion, apiVersion and kind like the apiserver.
    pub fn apply(&self, kind: Kind, mut obj: Value) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.name());
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        let key = (
            kind,
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            obj["metadata"]["name"]
                .as_str()
                .expect("metadata.name")
                .to_string(),
        );
        let ty = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(key, obj.clone());
        let ev = Event {
            rv,
            kind,
            ty,
            object: obj,
        };
        st.history.push(ev.clone());
        let _ = self.events.send(ev);
        rv
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut st = self.lock();
        let Some(mut obj) = st
            .objects
            .remove(&(kind, namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ev = Event {
            rv,
            kind,
            ty: "DELETED",
            object: obj,
        };
        st.history.push(ev.clone());
        let _ = self.events.send(ev);
        true
    }

    /// Forgets all history: any watch from an older resourceVersion gets
    /// 410 Expired and must relist.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted_below = st.rv + 1;
        st.history.clear();
    }

    /// Sends a BOOKMARK with the current resourceVersion on every watch
    /// that allowed them.
    pub fn bookmark(&self) {
        let _ = self.bookmarks.send(());
    }

    /// Simulates an outage: closes every open connection (watches end
    /// mid-stream) and drops new connections on accept.
    pub fn cut(&self) {
        self.online.store(false, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    /// List requests for `kind` wait until [`release`](Self::release).
    pub fn hold(&self, kind: Kind) {
        self.held.send_modify(|h| h.push(kind));
    }

    pub fn release(&self, kind: Kind) {
        self.held.send_modify(|h| h.retain(|k| *k != kind));
    }

    pub fn restore(&self) {
        self.online.store(true, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.stop.cancel();
        self.cut();
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let (stream, _) = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            if !self.online.load(Ordering::SeqCst) {
                self.counters
                    .dropped_connections
                    .fetch_add(1, Ordering::SeqCst);
                drop(stream);
                continue;
            }
            let gen = self.generation.lock().unwrap().clone();
            let s = self.clone();
            tokio::spawn(async move {
                let g2 = gen.clone();
                let svc = service_fn(move |req| {
                    let s = s.clone();
                    let g = g2.clone();
                    async move { Ok::<_, Infallible>(s.handle(req, g).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = gen.cancelled() => {}
                }
            });
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        gen: CancellationToken,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let Some(kind) = Kind::from_path(req.uri().path()) else {
            return status_response(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        let q: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| url_pairs(q).collect())
            .unwrap_or_default();
        let name_filter = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_string);
        if q.get("watch").map(String::as_str) == Some("true")
            || q.get("watch").map(String::as_str) == Some("1")
        {
            self.counters.watches.fetch_add(1, Ordering::SeqCst);
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
            return self.watch(kind, from, name_filter, bookmarks, gen);
        }
        self.counters.lists.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|h| !h.contains(&kind)).await;
        let st = self.lock();
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|((k, _, n), _)| *k == kind && name_filter.as_ref().is_none_or(|f| f == n))
            .map(|(_, v)| v)
            .collect();
        let body = json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        });
        json_response(StatusCode::OK, body.to_string())
    }

    fn watch(
        &self,
        kind: Kind,
        from: u64,
        name_filter: Option<String>,
        allow_bookmarks: bool,
        gen: CancellationToken,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let matches = move |e: &Event| {
            e.kind == kind
                && name_filter
                    .as_ref()
                    .is_none_or(|f| e.object["metadata"]["name"].as_str() == Some(f))
        };
        let line = |ty: &str, obj: &Value| {
            Bytes::from(format!("{}\n", json!({"type": ty, "object": obj})))
        };
        // Subscribe before reading history so no event falls in between.
        let mut live = self.events.subscribe();
        let mut bm = self.bookmarks.subscribe();
        let (backlog, expired, rv_now) = {
            let st = self.lock();
            if from != 0 && from < st.compacted_below {
                (Vec::new(), true, st.rv)
            } else {
                let b: Vec<Event> = st
                    .history
                    .iter()
                    .filter(|e| e.rv > from && matches(e))
                    .cloned()
                    .collect();
                (b, false, st.rv)
            }
        };
        if expired {
            self.counters.expired.fetch_add(1, Ordering::SeqCst);
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": format!("too old resource version: {from} ({rv_now})"),
                "reason": "Expired", "code": 410});
            let body = line("ERROR", &status);
            return stream_response(rx_once(body));
        }
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut last = from;
            for e in backlog {
                last = e.rv;
                if tx.send(line(e.ty, &e.object)).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = gen.cancelled() => return,
                    _ = tx.closed() => return,
                    r = live.recv() => match r {
                        Ok(e) if e.rv > last && matches(&e) => {
                            last = e.rv;
                            if tx.send(line(e.ty, &e.object)).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        // Too slow a reader: end the watch, the client resumes.
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    r = bm.recv() => {
                        if r.is_ok() && allow_bookmarks {
                            let rv = state.lock().unwrap().rv;
                            let obj = json!({"kind": kind.name(), "apiVersion": kind.api_version(),
                                "metadata": {"resourceVersion": rv.to_string()}});
                            last = last.max(rv);
                            if tx.send(line("BOOKMARK", &obj)).await.is_err() { return; }
                        }
                    }
                }
            }
        });
        stream_response(rx)
    }
}

fn rx_once(b: Bytes) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(b);
    rx
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<BoxBody<Bytes, Infallible>> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn json_response(status: StatusCode, body: String) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status_response(
    status: StatusCode,
    reason: &str,
    msg: &str,
) -> Response<BoxBody<Bytes, Infallible>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": msg, "reason": reason, "code": status.as_u16()});
    json_response(status, body.to_string())
}

/// `a=b&c=d` with %-decoding (enough for selectors).
fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode(k), decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(c) => {
                        out.push(c);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
