//! Router configuration: signal weights, the score cut points between tiers,
//! the low-budget rules and the allowances used when a request leaves them open.

use crate::complexity::Weights;
use serde::{Deserialize, Serialize};

/// Score cut points: a score at or above `sonnet` wants level 1, at or above
/// `opus` level 2, at or above `fable` level 3; below `sonnet`, level 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    pub sonnet: f64,
    pub opus: f64,
    pub fable: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { sonnet: 0.42, opus: 0.62, fable: 0.97 }
    }
}

impl Thresholds {
    /// The capability level a complexity score asks for.
    pub fn level_for(&self, score: f64) -> u8 {
        match score {
            s if s >= self.fable => 3,
            s if s >= self.opus => 2,
            s if s >= self.sonnet => 1,
            _ => 0,
        }
    }
}

/// When the remaining budget falls below these fractions of the limit, the
/// router steps down one or two levels to make the rest of the budget last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LowBudget {
    pub one_level_below: f64,
    pub two_levels_below: f64,
}

impl Default for LowBudget {
    fn default() -> Self {
        LowBudget { one_level_below: 0.25, two_levels_below: 0.10 }
    }
}

impl LowBudget {
    /// Levels to step down with `remaining` of `limit` left.
    pub fn steps_down(&self, remaining: u64, limit: u64) -> u8 {
        if limit == 0 {
            return 0;
        }
        #[expect(clippy::cast_precision_loss, reason = "a ratio of money amounts; exactness is not needed")]
        let fraction = remaining as f64 / limit as f64;
        match fraction {
            f if f < self.two_levels_below => 2,
            f if f < self.one_level_below => 1,
            _ => 0,
        }
    }
}

/// Everything the router needs besides the request, the tiers and the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    pub weights: Weights,
    pub thresholds: Thresholds,
    pub low_budget: LowBudget,
    /// Output tokens to plan for when the request sets no `max_tokens`
    /// (capped by each tier's own maximum).
    pub default_output_tokens: u64,
    /// Head-room added to the input estimate before checking a context
    /// window, in percent, because the estimate is not the real tokenizer.
    pub context_margin_percent: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            weights: Weights::default(),
            thresholds: Thresholds::default(),
            low_budget: LowBudget::default(),
            default_output_tokens: 4096,
            context_margin_percent: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_map_scores_to_levels() {
        let t = Thresholds { sonnet: 0.4, opus: 0.7, fable: 0.95 };
        let cases = [(0.0, 0), (0.39, 0), (0.4, 1), (0.69, 1), (0.7, 2), (0.94, 2), (0.95, 3), (1.0, 3)];
        for (score, level) in cases {
            assert_eq!(t.level_for(score), level, "{score}");
        }
    }

    #[test]
    fn low_budget_steps_down_by_fraction_left() {
        let lb = LowBudget::default();
        let cases =
            [(100, 100, 0), (25, 100, 0), (24, 100, 1), (10, 100, 1), (9, 100, 2), (0, 100, 2), (5, 0, 0)];
        for (remaining, limit, steps) in cases {
            assert_eq!(lb.steps_down(remaining, limit), steps, "{remaining}/{limit}");
        }
    }

    #[test]
    fn partial_config_fills_in_defaults() {
        let cfg: RouterConfig = serde_json::from_str(r#"{"thresholds":{"opus":0.9},"weights":{"code":2.0}}"#)
            .expect("valid config");
        assert!((cfg.thresholds.opus - 0.9).abs() < f64::EPSILON);
        assert!((cfg.thresholds.sonnet - Thresholds::default().sonnet).abs() < f64::EPSILON);
        assert!((cfg.weights.code - 2.0).abs() < f64::EPSILON);
        assert_eq!(cfg.default_output_tokens, 4096);
    }
}
