//! Tracking (pure): which tracked objects fail, and what that adds to the
//! priority, as keepalived's `track_interface` / `track_script` weights.

use std::collections::BTreeMap;

use crate::config::{TrackConfig, TrackTarget};
use crate::health::ListenerHealthMap;
use crate::status::TrackStatus;

/// Which tracked objects are failing now, in `track` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackState {
    failing: Vec<bool>,
}

impl TrackState {
    /// From the listeners' health and the links' state.
    pub fn compute(
        tracks: &[TrackConfig],
        listeners: &ListenerHealthMap,
        links_up: &BTreeMap<String, bool>,
    ) -> TrackState {
        TrackState {
            failing: tracks
                .iter()
                .map(|t| match &t.target {
                    // Unknown yet (listener not started): not failing, so a
                    // starting node does not give away a VIP it holds.
                    TrackTarget::Listener(name) => listeners.get(name) == Some(&false),
                    TrackTarget::Interface(name) => links_up.get(name) == Some(&false),
                })
                .collect(),
        }
    }

    /// Sum of the weights of the failing tracks: what the state machine
    /// adds to the configured priority ([`super::fsm::effective_priority`]).
    pub fn weight(&self, tracks: &[TrackConfig]) -> i32 {
        tracks
            .iter()
            .zip(&self.failing)
            .filter(|(_, f)| **f)
            .fold(0i32, |acc, (t, _)| acc.saturating_add(t.weight))
    }

    pub fn status(&self, tracks: &[TrackConfig]) -> Vec<TrackStatus> {
        tracks
            .iter()
            .zip(&self.failing)
            .map(|(t, f)| TrackStatus {
                target: t.target.clone(),
                weight: t.weight,
                failing: *f,
            })
            .collect()
    }
}

/// The interfaces `tracks` follows.
pub fn tracked_interfaces(tracks: &[TrackConfig]) -> impl Iterator<Item = &str> {
    tracks.iter().filter_map(|t| match &t.target {
        TrackTarget::Interface(name) => Some(name.as_str()),
        TrackTarget::Listener(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(target: TrackTarget, weight: i32) -> TrackConfig {
        TrackConfig { target, weight }
    }

    #[test]
    fn tracking_adds_weights_of_failing_targets_only() {
        let tracks = vec![
            t(TrackTarget::Listener("api".into()), -50),
            t(TrackTarget::Interface("eth1".into()), -30),
            t(TrackTarget::Listener("other".into()), -10),
        ];
        let mut l = ListenerHealthMap::new();
        l.insert("api".into(), false);
        l.insert("other".into(), true);
        let mut links = BTreeMap::new();
        links.insert("eth1".to_string(), true);
        let st = TrackState::compute(&tracks, &l, &links);
        assert_eq!(st.failing, vec![true, false, false]);
        assert_eq!(st.weight(&tracks), -50);
        links.insert("eth1".to_string(), false);
        let st = TrackState::compute(&tracks, &l, &links);
        assert_eq!(st.weight(&tracks), -80);
        let status = st.status(&tracks);
        assert_eq!(status.len(), 3);
        assert!(status[0].failing && status[1].failing && !status[2].failing);
        assert_eq!(status[1].target, TrackTarget::Interface("eth1".into()));
        let up = vec![t(TrackTarget::Listener("api".into()), 200)];
        let st = TrackState::compute(&up, &l, &links);
        assert_eq!(st.weight(&up), 200);
        // A listener not published yet does not count as failing.
        let new = [t(TrackTarget::Listener("new".into()), -50)];
        let st = TrackState::compute(&new, &l, &links);
        assert_eq!(st.failing, vec![false]);
        assert_eq!(tracked_interfaces(&tracks).collect::<Vec<_>>(), ["eth1"]);
    }
}
