//! Version vectors: which devices changed a file, and how often.
//!
//! A [`VersionVector`] maps a [`ShortId`] to a counter. Two vectors are equal,
//! one dominates the other (it has seen every change the other has, and more),
//! or they are concurrent (each has a change the other has not seen): the last
//! case is a conflict. Merge is the element-wise maximum, so it is associative,
//! commutative and idempotent (checked by property tests).

use std::cmp::Ordering as CmpOrdering;

use serde::{Deserialize, Serialize};

use crate::ids::ShortId;

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The same history.
    Equal,
    /// Left has seen everything right has, and more.
    Newer,
    /// Right has seen everything left has, and more.
    Older,
    /// Each has a change the other has not seen.
    Concurrent,
}

/// The largest counter a peer may announce. Counters are device clocks
/// (Unix seconds, about 2^31 today, plus one per change within a second), so
/// an honest device stays far below 2^48 for millions of years; refusing
/// larger ones on the way in leaves every device room to count past any
/// counter it has accepted (a hostile peer announcing `u64::MAX` would
/// otherwise leave no newer version to make).
pub const MAX_COUNTER: u64 = 1 << 48;

/// A version vector, kept sorted by device with no zero counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(Vec<(ShortId, u64)>);

impl VersionVector {
    /// The empty vector (no change seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `device` (0 if it never changed this file).
    pub fn get(&self, device: ShortId) -> u64 {
        match self.0.binary_search_by_key(&device, |(d, _)| *d) {
            Ok(i) => self.0[i].1,
            Err(_) => 0,
        }
    }

    /// Records a change by `device`: its counter becomes one more than the
    /// largest counter in the vector, so a new change is never mistaken for an
    /// old one even after merges.
    pub fn bump(&mut self, device: ShortId) {
        let _ = self.bump_at(device, 0);
    }

    /// Records a change by `device` whose own clock reads `clock` (a value
    /// that only grows on that device, e.g. its wall clock in seconds): the
    /// counter becomes the larger of `clock` and one more than any counter in
    /// the vector. With a device clock, a device that crashed before saving
    /// its index can never hand out a counter it already gave a peer: its
    /// next change is still newer than anything it said before.
    ///
    /// Returns the counter given, so the caller can remember the largest it
    /// ever issued and pass one more as the next `clock` (a device must never
    /// issue a counter twice for a path; a clock in seconds alone could).
    pub fn bump_at(&mut self, device: ShortId, clock: u64) -> u64 {
        // Saturating: counters from peers are bounded by `MAX_COUNTER` on the
        // way in, so this never reaches u64::MAX in practice; it must not
        // panic or wrap if it did.
        let next = self
            .0
            .iter()
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let counter = next.max(clock);
        self.set(device, counter);
        counter
    }

    fn set(&mut self, device: ShortId, counter: u64) {
        match self.0.binary_search_by_key(&device, |(d, _)| *d) {
            Ok(i) => self.0[i].1 = counter,
            Err(i) => self.0.insert(i, (device, counter)),
        }
    }

    /// The element-wise maximum of both vectors.
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut out = Vec::with_capacity(self.0.len().max(other.0.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            match (self.0.get(i), other.0.get(j)) {
                (Some(&(a, x)), Some(&(b, y))) => match a.cmp(&b) {
                    CmpOrdering::Less => {
                        out.push((a, x));
                        i += 1;
                    }
                    CmpOrdering::Greater => {
                        out.push((b, y));
                        j += 1;
                    }
                    CmpOrdering::Equal => {
                        out.push((a, x.max(y)));
                        i += 1;
                        j += 1;
                    }
                },
                (Some(&p), None) => {
                    out.push(p);
                    i += 1;
                }
                (None, Some(&p)) => {
                    out.push(p);
                    j += 1;
                }
                (None, None) => unreachable!(),
            }
        }
        VersionVector(out)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut self_ahead = false;
        let mut other_ahead = false;
        let merged = self.merge(other);
        for &(d, c) in &merged.0 {
            let (a, b) = (self.get(d), other.get(d));
            debug_assert!(c == a.max(b));
            self_ahead |= a > b;
            other_ahead |= b > a;
        }
        match (self_ahead, other_ahead) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Newer,
            (false, true) => Causality::Older,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether no change was ever recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The (device, counter) pairs, sorted by device.
    pub fn counters(&self) -> &[(ShortId, u64)] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(d, c) in pairs {
            if c > 0 {
                v.set(ShortId(d), c);
            }
        }
        v
    }

    #[test]
    fn compare_cases() {
        let a = vv(&[(1, 1)]);
        let b = vv(&[(1, 1), (2, 1)]);
        let c = vv(&[(1, 2)]);
        assert_eq!(a.compare(&a), Causality::Equal);
        assert_eq!(b.compare(&a), Causality::Newer);
        assert_eq!(a.compare(&b), Causality::Older);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert_eq!(VersionVector::new().compare(&a), Causality::Older);
    }

    #[test]
    fn bump_dominates_everything_seen() {
        let mut a = vv(&[(1, 5), (2, 3)]);
        let before = a.clone();
        a.bump(ShortId(2));
        assert_eq!(a.compare(&before), Causality::Newer);
        assert_eq!(a.get(ShortId(2)), 6);
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u64..4, 0u64..4), 0..5).prop_map(|p| vv(&p))
    }

    proptest! {
        #[test]
        fn merge_is_a_semilattice(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
            prop_assert_eq!(a.merge(&a), a.clone());
        }

        #[test]
        fn merge_dominates_both(a in arb_vv(), b in arb_vv()) {
            let m = a.merge(&b);
            prop_assert!(matches!(m.compare(&a), Causality::Newer | Causality::Equal));
            prop_assert!(matches!(m.compare(&b), Causality::Newer | Causality::Equal));
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_vv(), b in arb_vv()) {
            let flipped = match a.compare(&b) {
                Causality::Newer => Causality::Older,
                Causality::Older => Causality::Newer,
                x => x,
            };
            prop_assert_eq!(b.compare(&a), flipped);
        }
    }
}
