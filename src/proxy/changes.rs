//! kube-proxy's change counters and network programming latency (pure):
//! which Services and EndpointSlices changed since the previous sync, told
//! from their resourceVersions, and when the changed slices' changes were
//! triggered (the `endpoints.kubernetes.io/last-change-trigger-time`
//! annotation the EndpointSlice controller sets).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Service;

use super::model::{ObjectKey, ServiceInputs};
use super::objects::EndpointSlice;

/// Annotation the EndpointSlice controller sets to when the change that
/// produced this slice version happened (network programming latency).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What changed since the previous count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counted {
    pub services: u64,
    pub endpoints: u64,
    /// Trigger times of the changed slices (only changes made while lbd
    /// ran: after a restart old trigger times would measure our downtime).
    pub triggers: Vec<SystemTime>,
}

/// One slice of a Service as last counted.
#[derive(Debug)]
struct SeenSlice {
    name: String,
    rv: String,
    trigger: Option<String>,
}

/// The versions seen at the previous count.
#[derive(Debug)]
pub struct ChangeCounter {
    /// Service -> its slices last seen, keyed by Service so a changed-only
    /// count compares just the changed Services' slices; a short list, not
    /// a map: a Service has one slice or a few.
    seen_slices: HashMap<ObjectKey, Vec<SeenSlice>>,
    seen_services: HashMap<ObjectKey, String>,
    /// The first count only records what exists: nothing "changed".
    first: bool,
}

impl Default for ChangeCounter {
    fn default() -> Self {
        ChangeCounter {
            seen_slices: HashMap::new(),
            seen_services: HashMap::new(),
            first: true,
        }
    }
}

impl ChangeCounter {
    /// Counts over every object (a full sync).
    pub fn count_all(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Counted {
        let mut out = Counted::default();
        let mut seen = HashMap::with_capacity(services.len());
        for s in services {
            let key = ObjectKey::of(&s.metadata);
            let rv = s.metadata.resource_version.clone().unwrap_or_default();
            if self.seen_services.get(&key) != Some(&rv) {
                out.services += 1;
            }
            seen.insert(key, rv);
        }
        out.services += self
            .seen_services
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .count() as u64;
        self.seen_services = seen;

        // Slices no Service name points at are not proxied, nor counted.
        let mut groups: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            if let Some(k) = ObjectKey::service_of(s) {
                groups.entry(k).or_default().push(s);
            }
        }
        let gone: Vec<ObjectKey> = self
            .seen_slices
            .keys()
            .filter(|k| !groups.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.count_slices(&k, &[], &mut out);
        }
        for (k, g) in groups {
            self.count_slices(&k, &g, &mut out);
        }
        self.finish(out)
    }

    /// The same counts over the changed Services only: every other object
    /// is unchanged by construction of the dirty set.
    pub fn count_changed(&mut self, changed: &[ServiceInputs]) -> Counted {
        let mut out = Counted::default();
        for c in changed {
            let svc_changed = match &c.service {
                Some(s) => {
                    let rv = s.metadata.resource_version.clone().unwrap_or_default();
                    let same = self.seen_services.get(&c.key) == Some(&rv);
                    if !same {
                        self.seen_services.insert(c.key.clone(), rv);
                    }
                    !same
                }
                None => self.seen_services.remove(&c.key).is_some(),
            };
            out.services += u64::from(svc_changed);
            let slices: Vec<&EndpointSlice> = c.slices.iter().map(|s| &**s).collect();
            self.count_slices(&c.key, &slices, &mut out);
        }
        self.finish(out)
    }

    fn finish(&mut self, out: Counted) -> Counted {
        if std::mem::take(&mut self.first) {
            return Counted::default();
        }
        out
    }

    /// Counts one Service's slices that are new, changed or gone since last
    /// seen, and collects the trigger times of the changed ones.
    fn count_slices(&mut self, svc: &ObjectKey, slices: &[&EndpointSlice], out: &mut Counted) {
        let prev = self.seen_slices.remove(svc).unwrap_or_default();
        let mut next = Vec::with_capacity(slices.len());
        for s in slices {
            let name = s.metadata.name.clone().unwrap_or_default();
            let rv = s.metadata.resource_version.clone().unwrap_or_default();
            let trigger = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                .cloned();
            let p = prev.iter().find(|p| p.name == name);
            if p.map(|p| &p.rv) != Some(&rv) {
                out.endpoints += 1;
                if p.map(|p| &p.trigger) != Some(&trigger) {
                    out.triggers.extend(trigger.as_deref().and_then(parse_time));
                }
            }
            next.push(SeenSlice { name, rv, trigger });
        }
        out.endpoints += prev
            .iter()
            .filter(|p| !next.iter().any(|n| n.name == p.name))
            .count() as u64;
        if !next.is_empty() {
            self.seen_slices.insert(svc.clone(), next);
        }
    }
}

fn parse_time(rfc3339: &str) -> Option<SystemTime> {
    let ts: k8s_openapi::jiff::Timestamp = rfc3339.parse().ok()?;
    Some(SystemTime::from(ts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(rv: &str, trigger: &str) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web-1", "namespace": "a", "resourceVersion": rv,
                             "labels": {"kubernetes.io/service-name": "web"},
                             "annotations": {TRIGGER_TIME_ANNOTATION: trigger}},
                "addressType": "IPv4", "endpoints": []}))
            .unwrap(),
        )
    }

    #[test]
    fn the_first_count_records_and_later_ones_count_what_changed() {
        let mut c = ChangeCounter::default();
        let t1 = "2026-01-01T00:00:00Z";
        assert_eq!(c.count_all(&[], &[slice("1", t1)]), Counted::default());
        assert_eq!(c.count_all(&[], &[slice("1", t1)]), Counted::default());
        let t2 = "2026-01-01T00:00:05Z";
        let got = c.count_all(&[], &[slice("2", t2)]);
        assert_eq!(got.endpoints, 1);
        assert_eq!(got.triggers, vec![parse_time(t2).unwrap()]);
        // Gone: counted, no trigger.
        let got = c.count_changed(&[ServiceInputs {
            key: ObjectKey::new("a", "web"),
            service: None,
            slices: vec![],
        }]);
        assert_eq!((got.services, got.endpoints, got.triggers.len()), (0, 1, 0));
    }
}
