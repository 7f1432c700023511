//! Offline evaluation of the router on a labelled prompt set: accuracy, a
//! confusion matrix, what the choices would cost, and APGR against baselines.
//!
//! # APGR
//! Following RouteLLM, with binary quality: a prompt labelled `sonnet` or above
//! "needs strong"; the weak model answers the others acceptably and the strong
//! model answers everything. Routing the top-scored fraction `x` of prompts to
//! the strong model gives `perf(x)` = share answered acceptably, and
//! `PGR(x) = (perf(x) − perf_weak) / (perf_strong − perf_weak)`, which here is
//! the share of needs-strong prompts among those routed strong. APGR is the
//! area under `PGR(x)` for `x` in 0..1. Prompts with equal scores are routed
//! together and the curve is linear across them (the expected value over
//! random tie-breaking). Random ranking scores 0.5; a perfect one `1 − p/2`,
//! where `p` is the share of needs-strong prompts.

use crate::baseline::{keyword_score, word_count_score};
use crate::tier::{estimate_cost_micro_usd, level_of_name, Tier, LEVEL_NAMES};
use crate::{complexity, estimate_tokens, route, Message, Policy, RouteRequest, RouterConfig};
use serde::Deserialize;

/// Output tokens assumed per prompt when costing the routed choices.
pub const EVAL_OUTPUT_TOKENS: u64 = 500;

/// One labelled prompt: the tier a careful engineer would use for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EvalItem {
    pub prompt: String,
    pub tier: String,
}

/// Parses JSON Lines of `{"prompt": …, "tier": "haiku"|"sonnet"|"opus"|"fable"}`,
/// skipping blank lines. The error names the first bad line.
pub fn parse_eval_jsonl(text: &str) -> Result<Vec<EvalItem>, String> {
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let item: EvalItem = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if level_of_name(&item.tier).is_none() {
            return Err(format!("line {}: unknown tier {:?}", n + 1, item.tier));
        }
        items.push(item);
    }
    Ok(items)
}

/// Splits items into (tuning, held-out): every third item (index 2, 5, 8, …)
/// is held out.
pub fn held_out_split(items: &[EvalItem]) -> (Vec<EvalItem>, Vec<EvalItem>) {
    let (held, tune): (Vec<_>, Vec<_>) = items.iter().enumerate().partition(|(i, _)| i % 3 == 2);
    (tune.into_iter().map(|(_, x)| x.clone()).collect(), held.into_iter().map(|(_, x)| x.clone()).collect())
}

/// Area under the PGR curve (see the module docs). `needs_strong[i]` is the
/// binary label of the prompt scored `scores[i]`. Returns 0.5 when no prompt
/// or every prompt needs the strong model, where ranking means nothing.
pub fn apgr(scores: &[f64], needs_strong: &[bool]) -> f64 {
    let n = scores.len().min(needs_strong.len());
    let strong = needs_strong[..n].iter().filter(|&&s| s).count();
    if n == 0 || strong == 0 {
        return 0.5;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    #[expect(clippy::cast_precision_loss, reason = "prompt counts are far below 2^52")]
    let (n_f, strong_f) = (n as f64, strong as f64);
    let (mut area, mut routed, mut found) = (0.0, 0usize, 0usize);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && scores[order[j]].total_cmp(&scores[order[i]]).is_eq() {
            j += 1;
        }
        let group_strong = order[i..j].iter().filter(|&&k| needs_strong[k]).count();
        #[expect(clippy::cast_precision_loss, reason = "prompt counts are far below 2^52")]
        let (width, before, after) =
            ((j - i) as f64 / n_f, found as f64 / strong_f, (found + group_strong) as f64 / strong_f);
        area += width * (before + after) / 2.0;
        routed += j - i;
        found += group_strong;
        i = j;
    }
    debug_assert_eq!(routed, n);
    area
}

/// What [`evaluate`] measured. Confusion rows are the label's level, columns
/// the chosen level (haiku, sonnet, opus, fable).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub prompts: usize,
    /// Prompts the router refused (context or budget); not in the confusion matrix.
    pub refused: usize,
    pub accuracy: f64,
    pub confusion: [[usize; 4]; 4],
    pub routed_cost_micro_usd: u64,
    /// Cost of sending every prompt to the cheapest tier of each level present.
    pub always_cost_micro_usd: Vec<(String, u64)>,
    pub apgr: f64,
    pub apgr_word_count: f64,
    pub apgr_keywords: f64,
    /// APGR of a perfect ranking on this data: the ceiling, `1 − p/2`.
    pub apgr_oracle: f64,
    /// Mean time to route one prompt, in microseconds (informational).
    pub mean_route_micros: f64,
}

/// Routes every item with no budget limit and no policy and measures the result.
pub fn evaluate(items: &[EvalItem], tiers: &[Tier], cfg: &RouterConfig) -> EvalReport {
    let mut confusion = [[0usize; 4]; 4];
    let (mut refused, mut correct, mut routed_cost) = (0, 0, 0u64);
    let mut scores = Vec::with_capacity(items.len());
    let mut labels = Vec::with_capacity(items.len());
    let started = std::time::Instant::now();
    for item in items {
        let label = level_of_name(&item.tier).unwrap_or(0);
        let messages = [Message { role: "user", text: &item.prompt }];
        let req = RouteRequest {
            messages: &messages,
            max_tokens: None,
            overhead_tokens: 0,
            remaining_budget_micro_usd: None,
            budget_limit_micro_usd: None,
        };
        labels.push(label >= 1);
        let Ok(decision) = route(&req, tiers, &Policy::default(), cfg) else {
            refused += 1;
            scores.push(complexity(&messages, cfg).score);
            continue;
        };
        scores.push(decision.complexity_score);
        let Some(tier) = tiers.iter().find(|t| t.name == decision.tier) else { continue };
        let chosen = usize::from(tier.level.min(3));
        confusion[usize::from(label.min(3))][chosen] += 1;
        correct += usize::from(chosen == usize::from(label));
        routed_cost += estimate_cost_micro_usd(tier, estimate_tokens(&item.prompt), EVAL_OUTPUT_TOKENS);
    }
    let elapsed = started.elapsed();
    let always_cost_micro_usd = cheapest_per_level(tiers)
        .into_iter()
        .map(|t| {
            let cost = items
                .iter()
                .map(|i| estimate_cost_micro_usd(t, estimate_tokens(&i.prompt), EVAL_OUTPUT_TOKENS))
                .sum();
            (t.name.clone(), cost)
        })
        .collect();
    let oracle: Vec<f64> = labels.iter().map(|&s| f64::from(u8::from(s))).collect();
    let words: Vec<f64> = items.iter().map(|i| word_count_score(&i.prompt)).collect();
    let keywords: Vec<f64> = items.iter().map(|i| keyword_score(&i.prompt)).collect();
    #[expect(clippy::cast_precision_loss, reason = "prompt counts are far below 2^52")]
    let (accuracy, mean_route_micros) = (
        correct as f64 / (items.len() - refused).max(1) as f64,
        elapsed.as_secs_f64() * 1e6 / items.len().max(1) as f64,
    );
    EvalReport {
        prompts: items.len(),
        refused,
        accuracy,
        confusion,
        routed_cost_micro_usd: routed_cost,
        always_cost_micro_usd,
        apgr: apgr(&scores, &labels),
        apgr_word_count: apgr(&words, &labels),
        apgr_keywords: apgr(&keywords, &labels),
        apgr_oracle: apgr(&oracle, &labels),
        mean_route_micros,
    }
}

/// For each level present, the cheapest tier at it (`sonnet`, not `sonnet[1m]`).
fn cheapest_per_level(tiers: &[Tier]) -> Vec<&Tier> {
    let mut picked: Vec<&Tier> = Vec::new();
    for t in tiers {
        match picked.iter_mut().find(|p| p.level == t.level) {
            Some(p)
                if (t.input_micro_usd_per_mtok, t.context_window)
                    < (p.input_micro_usd_per_mtok, p.context_window) =>
            {
                *p = t
            }
            Some(_) => {}
            None => picked.push(t),
        }
    }
    picked.sort_by_key(|t| t.level);
    picked
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::reasons::usd;
        let (under, over) = self.misroutes();
        writeln!(f, "prompts {} (refused {})", self.prompts, self.refused)?;
        writeln!(
            f,
            "accuracy {:.1}% exact tier; under-routed {under}, over-routed {over}",
            self.accuracy * 100.0
        )?;
        writeln!(f, "confusion (rows = label, columns = chosen):")?;
        writeln!(
            f,
            "  {:<8}{:>8}{:>8}{:>8}{:>8}",
            "", LEVEL_NAMES[0], LEVEL_NAMES[1], LEVEL_NAMES[2], LEVEL_NAMES[3]
        )?;
        for (name, row) in LEVEL_NAMES.iter().zip(self.confusion) {
            writeln!(f, "  {name:<8}{:>8}{:>8}{:>8}{:>8}", row[0], row[1], row[2], row[3])?;
        }
        writeln!(f, "estimated cost (prompt tokens in + {EVAL_OUTPUT_TOKENS} out per prompt):")?;
        writeln!(f, "  {:<16}{:>12}", "routed", usd(self.routed_cost_micro_usd))?;
        for (name, cost) in &self.always_cost_micro_usd {
            writeln!(f, "  {:<16}{:>12}", format!("always {name}"), usd(*cost))?;
        }
        writeln!(f, "APGR (needs strong = label >= sonnet; random 0.500, perfect {:.3}):", self.apgr_oracle)?;
        writeln!(f, "  {:<16}{:>8.3}", "ccgate-router", self.apgr)?;
        writeln!(f, "  {:<16}{:>8.3}", "word count", self.apgr_word_count)?;
        writeln!(f, "  {:<16}{:>8.3}", "keywords", self.apgr_keywords)?;
        write!(f, "mean route() time {:.1} µs", self.mean_route_micros)
    }
}

impl EvalReport {
    /// (chosen below the label, chosen above the label).
    pub fn misroutes(&self) -> (usize, usize) {
        let mut under = 0;
        let mut over = 0;
        for (label, row) in self.confusion.iter().enumerate() {
            for (chosen, &n) in row.iter().enumerate() {
                if chosen < label {
                    under += n;
                } else if chosen > label {
                    over += n;
                }
            }
        }
        (under, over)
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
