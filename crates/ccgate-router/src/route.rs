//! `route`: turns a request, the tiers, a policy and the config into one
//! decision, enforcing the hard limits (context, budget, policy) before the
//! soft preference (complexity, then the low-budget step-down).

use crate::complexity::complexity;
use crate::config::RouterConfig;
use crate::reasons;
use crate::tier::{estimate_cost_micro_usd, level_of_name, Tier};
use serde::{Deserialize, Serialize};

/// Tokens of role markers and separators each message adds around its text.
pub const MESSAGE_FRAMING_TOKENS: u64 = 4;

/// One chat message; only the text is read, never copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: &'a str,
    pub text: &'a str,
}

/// What the router needs to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub messages: &'a [Message<'a>],
    /// The caller's output cap, if it set one.
    pub max_tokens: Option<u64>,
    /// Tokens the gateway adds around the prompt (the CLI's system prompt and tools).
    pub overhead_tokens: u64,
    /// What the tightest budget period has left; `None` means unlimited.
    pub remaining_budget_micro_usd: Option<u64>,
    /// That period's limit, to judge how low the budget is running.
    pub budget_limit_micro_usd: Option<u64>,
}

/// Operator restrictions on which tiers `auto` may pick. Names match a tier's
/// `name` or `model`; `min_tier`/`max_tier` may also be a level name
/// (`"haiku"`, `"sonnet"`, `"opus"`, `"fable"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub allowed_tiers: Option<Vec<String>>,
    pub min_tier: Option<String>,
    pub max_tier: Option<String>,
    /// Always this model (still refused if it cannot hold or pay for the request).
    pub fixed_model: Option<String>,
}

/// One tier as the router saw it for this request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub tier: String,
    pub model: String,
    pub level: u8,
    /// The most the request may cost on this tier, as the gateway reserves
    /// it: input at a token per byte of its text (plus framing and
    /// overhead) and the full output allowance, rounded up.
    pub estimated_cost_micro_usd: u64,
    pub fits_context: bool,
    pub fits_budget: bool,
}

/// The router's choice and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub tier: String,
    pub model: String,
    pub complexity_score: f64,
    /// Message text, framing and gateway overhead (without the context margin).
    pub estimated_input_tokens: u64,
    /// One line per factor: context, complexity, budget, policy, and the pick.
    pub reasons: Vec<String>,
    /// Every tier the policy allowed, in the order given.
    pub candidates: Vec<Candidate>,
}

/// Why no tier could take the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteError {
    /// Even the largest allowed context window cannot hold input plus output.
    ContextLengthExceeded { needed: u64, largest: u64 },
    /// No tier that can hold the request fits in what the budget has left.
    InsufficientBudget { cheapest_micro_usd: u64, remaining_micro_usd: u64 },
    /// The policy leaves no tier (or names one that does not exist).
    NoAllowedTier(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::ContextLengthExceeded { needed, largest } => write!(
                f,
                "request needs about {} tokens but the largest allowed context window is {}",
                reasons::thousands(*needed),
                reasons::thousands(*largest)
            ),
            RouteError::InsufficientBudget { cheapest_micro_usd, remaining_micro_usd } => write!(
                f,
                "the cheapest model that fits costs about {} but only {} of the budget is left",
                reasons::usd(*cheapest_micro_usd),
                reasons::usd(*remaining_micro_usd)
            ),
            RouteError::NoAllowedTier(why) => write!(f, "no model is allowed: {why}"),
        }
    }
}

impl std::error::Error for RouteError {}

/// Picks a tier for `req`. Never returns a tier whose context window cannot
/// hold the request, or whose estimated cost exceeds the remaining budget.
pub fn route(
    req: &RouteRequest,
    tiers: &[Tier],
    policy: &Policy,
    cfg: &RouterConfig,
) -> Result<Decision, RouteError> {
    let cx = complexity(req.messages, cfg);
    let messages = u64::try_from(req.messages.len()).unwrap_or(u64::MAX);
    // Message framing and the gateway's overhead, around the text.
    let around = messages.saturating_mul(MESSAGE_FRAMING_TOKENS).saturating_add(req.overhead_tokens);
    let input = cx.text_tokens.saturating_add(around);
    let with_margin = input.saturating_add(input.saturating_mul(cfg.context_margin_percent) / 100);
    // What the gateway will reserve for the input: a token per byte, which
    // no text beats, so a tier judged affordable here is not refused there.
    let text_bytes: usize = req.messages.iter().map(|m| m.text.len()).sum();
    let input_bound = u64::try_from(text_bytes).unwrap_or(u64::MAX).saturating_add(around);
    let (allowed, min_level, max_level) = apply_policy(tiers, policy)?;

    let candidates: Vec<Candidate> = allowed
        .iter()
        .map(|t| {
            let output = output_allowance(req, t, cfg);
            let cost = estimate_cost_micro_usd(t, input_bound, output);
            Candidate {
                tier: t.name.clone(),
                model: t.model.clone(),
                level: t.level,
                estimated_cost_micro_usd: cost,
                fits_context: with_margin.saturating_add(output) <= t.context_window
                    && req.max_tokens.is_none_or(|m| m <= t.max_output),
                fits_budget: req.remaining_budget_micro_usd.is_none_or(|r| cost <= r),
            }
        })
        .collect();

    if !candidates.iter().any(|c| c.fits_context) {
        let smallest_output = allowed.iter().map(|t| output_allowance(req, t, cfg)).min().unwrap_or(0);
        let largest = allowed.iter().map(|t| t.context_window).max().unwrap_or(0);
        return Err(RouteError::ContextLengthExceeded {
            needed: with_margin.saturating_add(smallest_output),
            largest,
        });
    }
    let remaining = req.remaining_budget_micro_usd.unwrap_or(u64::MAX);
    if !candidates.iter().any(|c| c.fits_context && c.fits_budget) {
        let cheapest = candidates.iter().filter(|c| c.fits_context).map(|c| c.estimated_cost_micro_usd).min();
        return Err(RouteError::InsufficientBudget {
            cheapest_micro_usd: cheapest.unwrap_or(0),
            remaining_micro_usd: remaining,
        });
    }

    let wanted = cfg.thresholds.level_for(cx.score);
    let steps = match (req.remaining_budget_micro_usd, req.budget_limit_micro_usd) {
        (Some(left), Some(limit)) => cfg.low_budget.steps_down(left, limit),
        _ => 0,
    };
    // `clamp` needs min ≤ max: `apply_policy` has already refused an empty range.
    let target = wanted.saturating_sub(steps).clamp(min_level, max_level);
    let chosen = candidates
        .iter()
        .filter(|c| c.fits_context && c.fits_budget)
        .min_by_key(|c| (c.level.abs_diff(target), c.level, c.estimated_cost_micro_usd))
        .cloned()
        .ok_or_else(|| RouteError::NoAllowedTier("no candidate left".to_owned()))?;

    let reasons = reasons::explain(&reasons::Inputs {
        req,
        policy,
        cx: &cx,
        candidates: &candidates,
        input,
        wanted,
        steps,
        target,
        chosen: &chosen,
    });
    Ok(Decision {
        tier: chosen.tier,
        model: chosen.model,
        complexity_score: cx.score,
        estimated_input_tokens: input,
        reasons,
        candidates,
    })
}

/// Output tokens to plan for on `tier`: the caller's cap, or the default
/// allowance limited by what the tier can produce.
fn output_allowance(req: &RouteRequest, tier: &Tier, cfg: &RouterConfig) -> u64 {
    req.max_tokens.unwrap_or_else(|| cfg.default_output_tokens.min(tier.max_output))
}

/// The tiers the policy allows, with the level bounds it sets.
fn apply_policy<'t>(tiers: &'t [Tier], policy: &Policy) -> Result<(Vec<&'t Tier>, u8, u8), RouteError> {
    let named = |t: &Tier, n: &str| t.name == n || t.model == n;
    let level_bound = |name: &Option<String>, default: u8| -> Result<u8, RouteError> {
        let Some(name) = name else { return Ok(default) };
        tiers
            .iter()
            .find(|t| named(t, name))
            .map(|t| t.level)
            .or_else(|| level_of_name(name))
            .ok_or_else(|| RouteError::NoAllowedTier(format!("policy names unknown tier {name:?}")))
    };
    let min_level = level_bound(&policy.min_tier, 0)?;
    let max_level = level_bound(&policy.max_tier, u8::MAX)?;
    let allowed: Vec<&Tier> = tiers
        .iter()
        .filter(|t| policy.fixed_model.as_deref().is_none_or(|m| named(t, m)))
        .filter(|t| policy.allowed_tiers.as_ref().is_none_or(|names| names.iter().any(|n| named(t, n))))
        .filter(|t| (min_level..=max_level).contains(&t.level))
        .collect();
    if allowed.is_empty() {
        return Err(RouteError::NoAllowedTier(reasons::describe_policy(policy)));
    }
    Ok((allowed, min_level, max_level))
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
