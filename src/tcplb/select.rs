//! Backend selection (pure): the algorithms see the candidates and their
//! load, never sockets.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::config::Balance;

/// One backend as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    /// Passing health checks (or not yet checked).
    pub usable: bool,
    pub active: u64,
}

/// What varies between picks, supplied by the caller so selection is
/// deterministic under test.
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub client: IpAddr,
    /// Round-robin position (the caller increments it per connection).
    pub sequence: u64,
    /// Two random numbers for power-of-two choices.
    pub random: (u64, u64),
}

/// Chooses a usable backend not in `tried`; None when there is none.
pub fn select(
    balance: Balance,
    candidates: &[Candidate],
    tried: &[SocketAddr],
    pick: Pick,
) -> Option<usize> {
    let eligible: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.usable && !tried.contains(&c.addr))
        .map(|(i, _)| i)
        .collect();
    if eligible.is_empty() {
        return None;
    }
    let n = eligible.len() as u64;
    Some(match balance {
        Balance::RoundRobin => eligible[(pick.sequence % n) as usize],
        Balance::LeastConn => {
            // Ties go round-robin so equal loads still spread.
            let min = eligible
                .iter()
                .map(|&i| candidates[i].active)
                .min()
                .unwrap_or(0);
            let ties: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| candidates[i].active == min)
                .collect();
            ties[(pick.sequence % ties.len() as u64) as usize]
        }
        Balance::Source => {
            // Rendezvous hashing: a client keeps its backend while that
            // backend stays; removing one moves only its own clients.
            *eligible
                .iter()
                .max_by_key(|&&i| (rendezvous(pick.client, candidates[i].addr), i))
                .unwrap_or(&eligible[0])
        }
        Balance::Random => {
            // Power of two choices: two random backends, the less loaded wins.
            let a = eligible[(pick.random.0 % n) as usize];
            let b = eligible[(pick.random.1 % n) as usize];
            if candidates[b].active < candidates[a].active {
                b
            } else {
                a
            }
        }
    })
}

/// A stable 64-bit hash (FNV-1a): the same on every node and every run, so
/// all lbd nodes send a client to the same backend.
fn rendezvous(client: IpAddr, backend: SocketAddr) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            // Final avalanche so nearby addresses spread.
            let mut x = self.0;
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51afd7ed558ccd);
            x ^= x >> 33;
            x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
            x ^ (x >> 33)
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100000001b3);
            }
        }
    }
    let mut h = Fnv(0xcbf29ce484222325);
    match client {
        IpAddr::V4(a) => a.octets().hash(&mut h),
        IpAddr::V6(a) => a.octets().hash(&mut h),
    }
    match backend.ip() {
        IpAddr::V4(a) => a.octets().hash(&mut h),
        IpAddr::V6(a) => a.octets().hash(&mut h),
    }
    backend.port().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 6443)),
                usable: true,
                active: 0,
            })
            .collect()
    }
    fn pick(seq: u64) -> Pick {
        Pick {
            client: IpAddr::from([192, 168, 0, 1]),
            sequence: seq,
            random: (seq, seq * 7 + 3),
        }
    }

    #[test]
    fn round_robin_cycles_over_usable_only() {
        let mut c = cands(3);
        c[1].usable = false;
        let got: Vec<usize> = (0..4)
            .map(|s| select(Balance::RoundRobin, &c, &[], pick(s)).unwrap())
            .collect();
        assert_eq!(got, vec![0, 2, 0, 2]);
    }

    #[test]
    fn none_when_all_down_or_tried() {
        let mut c = cands(2);
        assert_eq!(
            select(Balance::RoundRobin, &c, &[c[0].addr, c[1].addr], pick(0)),
            None
        );
        c[0].usable = false;
        c[1].usable = false;
        for b in [
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::Source,
            Balance::Random,
        ] {
            assert_eq!(select(b, &c, &[], pick(0)), None);
        }
    }

    #[test]
    fn least_conn_picks_least_loaded() {
        let mut c = cands(3);
        c[0].active = 5;
        c[1].active = 2;
        c[2].active = 9;
        assert_eq!(select(Balance::LeastConn, &c, &[], pick(0)), Some(1));
        assert_eq!(
            select(Balance::LeastConn, &c, &[c[1].addr], pick(0)),
            Some(0)
        );
    }

    #[test]
    fn source_is_sticky_and_moves_only_the_removed_backends_clients() {
        let c = cands(4);
        let mut moved = 0;
        let mut per_backend = [0u32; 4];
        for i in 0..2000u32 {
            let client = IpAddr::from(i.wrapping_mul(2654435761).to_be_bytes());
            let p = Pick {
                client,
                sequence: i as u64,
                random: (0, 0),
            };
            let first = select(Balance::Source, &c, &[], p).unwrap();
            assert_eq!(
                select(Balance::Source, &c, &[], Pick { sequence: 99, ..p }),
                Some(first)
            );
            per_backend[first] += 1;
            let mut fewer = c.clone();
            fewer[3].usable = false;
            let after = select(Balance::Source, &fewer, &[], p).unwrap();
            if first != 3 {
                assert_eq!(after, first, "a client of a remaining backend moved");
            } else {
                moved += 1;
            }
        }
        assert!(
            per_backend.iter().all(|&n| n > 350),
            "uneven spread: {per_backend:?}"
        );
        assert_eq!(moved, per_backend[3]);
    }

    #[test]
    fn random_prefers_less_loaded_of_two() {
        let mut c = cands(2);
        c[0].active = 10;
        assert_eq!(
            select(
                Balance::Random,
                &c,
                &[],
                Pick {
                    random: (0, 1),
                    ..pick(0)
                }
            ),
            Some(1)
        );
        assert_eq!(
            select(
                Balance::Random,
                &c,
                &[],
                Pick {
                    random: (1, 0),
                    ..pick(0)
                }
            ),
            Some(1)
        );
    }
}
