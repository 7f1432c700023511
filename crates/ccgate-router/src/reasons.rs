//! The human-readable `reasons` of a decision: one line per factor saying
//! what it found and what it did.

use crate::complexity::Complexity;
use crate::route::{Candidate, Policy, RouteRequest};
use crate::tier::LEVEL_NAMES;

/// What [`explain`] needs from one routing pass.
pub(crate) struct Inputs<'a> {
    pub req: &'a RouteRequest<'a>,
    pub policy: &'a Policy,
    pub cx: &'a Complexity,
    pub candidates: &'a [Candidate],
    pub input: u64,
    pub wanted: u8,
    pub steps: u8,
    pub target: u8,
    pub chosen: &'a Candidate,
}

pub(crate) fn explain(i: &Inputs) -> Vec<String> {
    vec![
        context_line(i),
        complexity_line(i),
        budget_line(i),
        format!("policy: {}", describe_policy(i.policy)),
        choice_line(i),
    ]
}

fn context_line(i: &Inputs) -> String {
    let out = match i.req.max_tokens {
        Some(m) => format!("max_tokens {}", thousands(m)),
        None => "default output allowance".to_owned(),
    };
    let fit: Vec<&str> = i.candidates.iter().filter(|c| c.fits_context).map(|c| c.tier.as_str()).collect();
    let which = if fit.len() == i.candidates.len() {
        "all models".to_owned()
    } else {
        format!("only {}", fit.join(", "))
    };
    format!("context: {} input tokens + {out} fits {which}", thousands(i.input))
}

fn complexity_line(i: &Inputs) -> String {
    let top: Vec<String> =
        i.cx.top_signals(4)
            .iter()
            .map(|s| format!("{} {:+.2}", s.name.replace('_', "-"), s.contribution))
            .collect();
    let why = if top.is_empty() { "no signal".to_owned() } else { top.join(", ") };
    format!("complexity {:.2} ({why}) → {}", i.cx.score, level_name(i.wanted))
}

fn budget_line(i: &Inputs) -> String {
    let Some(left) = i.req.remaining_budget_micro_usd else {
        return "budget: unlimited".to_owned();
    };
    let share = match i.req.budget_limit_micro_usd {
        Some(limit) if limit > 0 => {
            format!(" ({}% of the limit)", u128::from(left) * 100 / u128::from(limit))
        }
        _ => String::new(),
    };
    let too_dear: Vec<&str> =
        i.candidates.iter().filter(|c| c.fits_context && !c.fits_budget).map(|c| c.tier.as_str()).collect();
    let excluded =
        if too_dear.is_empty() { String::new() } else { format!("; too expensive: {}", too_dear.join(", ")) };
    let action = match i.steps {
        0 => "no step down".to_owned(),
        1 => format!("moved down one level to {}", level_name(i.wanted.saturating_sub(1))),
        n => format!("moved down {n} levels to {}", level_name(i.wanted.saturating_sub(n))),
    };
    format!("budget: {} left{share} → {action}{excluded}", usd(left))
}

fn choice_line(i: &Inputs) -> String {
    let c = i.chosen;
    let cost = usd(c.estimated_cost_micro_usd);
    if c.level == i.target {
        format!("chose {} ({}), estimated {cost}", c.tier, c.model)
    } else {
        format!(
            "chose {} ({}), estimated {cost}: nearest level to {} that fits context and budget",
            c.tier,
            c.model,
            level_name(i.target)
        )
    }
}

pub(crate) fn describe_policy(p: &Policy) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &p.fixed_model {
        parts.push(format!("fixed model {m}"));
    }
    if let Some(names) = &p.allowed_tiers {
        parts.push(format!("allowed tiers {}", names.join(", ")));
    }
    if let Some(t) = &p.min_tier {
        parts.push(format!("min tier {t}"));
    }
    if let Some(t) = &p.max_tier {
        parts.push(format!("max tier {t}"));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn level_name(level: u8) -> &'static str {
    LEVEL_NAMES.get(usize::from(level)).copied().unwrap_or("top")
}

/// `1234567` → `"1,234,567"`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Micro-dollars as dollars with four decimals, e.g. `12345` → `"$0.0123"`.
pub(crate) fn usd(micro: u64) -> String {
    format!("${}.{:04}", thousands(micro / 1_000_000), (micro % 1_000_000) / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_naturally() {
        let cases = [(0, "0"), (999, "999"), (1000, "1,000"), (1_234_567, "1,234,567")];
        for (n, want) in cases {
            assert_eq!(thousands(n), want);
        }
        let money =
            [(0, "$0.0000"), (12_345, "$0.0123"), (1_500_000, "$1.5000"), (2_000_000_000, "$2,000.0000")];
        for (micro, want) in money {
            assert_eq!(usd(micro), want);
        }
    }

    #[test]
    fn policy_descriptions_name_every_restriction() {
        let p = Policy {
            max_tier: Some("sonnet".into()),
            allowed_tiers: Some(vec!["haiku".into()]),
            ..Policy::default()
        };
        assert_eq!(describe_policy(&p), "allowed tiers haiku, max tier sonnet");
        assert_eq!(describe_policy(&Policy::default()), "none");
    }
}
