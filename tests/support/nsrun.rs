//! Async work inside a network namespace: a thread that entered the
//! namespace runs a current-thread runtime, so every socket its tasks open
//! (backends, clients) belongs to that namespace. The test's own runtime
//! awaits the results.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct NsRuntime {
    pub ns: String,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    /// A runtime whose thread lives in namespace `ns` (its full name).
    pub fn start(ns: &str) -> NsRuntime {
        let path = std::path::PathBuf::from(format!("/run/netns/{ns}"));
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            lbd::sys::netns::enter(&path).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        });
        NsRuntime {
            ns: ns.to_string(),
            handle: handle_rx.recv().expect("namespace thread"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the namespace's thread and waits for it.
    pub async fn run<F>(&self, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(f)
            .await
            .expect("task in the namespace panicked")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
