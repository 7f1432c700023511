//! Money as integer micro-dollars. Floats appear only at the edges: parsing
//! the CLI's `total_cost_usd`, the price file, and rendering USD in responses.

use serde::{Deserialize, Serialize};

/// An amount of money in millionths of a US dollar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// Converts a USD amount to micro-dollars, rounding to the nearest
    /// micro-dollar. Non-finite or negative input is treated as zero: it can
    /// only come from a malformed CLI report, and charging nothing is
    /// recorded in the ledger rather than poisoning the sums.
    pub fn from_usd(usd: f64) -> Micros {
        if !usd.is_finite() || usd <= 0.0 {
            return Micros::ZERO;
        }
        Micros((usd * 1_000_000.0).round().min(i64::MAX as f64) as i64)
    }

    /// Converts a USD amount, rounding up, for limits and prices where a
    /// fraction of a micro-dollar must not be lost in the caller's favour.
    pub fn from_usd_ceil(usd: f64) -> Micros {
        if !usd.is_finite() || usd <= 0.0 {
            return Micros::ZERO;
        }
        Micros((usd * 1_000_000.0).ceil().min(i64::MAX as f64) as i64)
    }

    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    pub fn saturating_add(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Micros) -> Micros {
        Micros(self.0.saturating_sub(other.0))
    }
}

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "${:.6}", self.as_usd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_usd_both_ways() {
        let cases = [(0.00027, 270), (0.00135, 1350), (1.0, 1_000_000), (0.0, 0), (-1.0, 0), (f64::NAN, 0)];
        for (usd, micros) in cases {
            assert_eq!(Micros::from_usd(usd), Micros(micros), "{usd}");
        }
        assert_eq!(Micros(1_500_000).as_usd(), 1.5);
        assert_eq!(Micros::from_usd_ceil(0.0000001), Micros(1));
    }
}
