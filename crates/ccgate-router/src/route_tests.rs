use super::*;
use crate::tier::default_tiers;

fn request<'a>(messages: &'a [Message<'a>]) -> RouteRequest<'a> {
    RouteRequest {
        messages,
        max_tokens: None,
        overhead_tokens: 200,
        remaining_budget_micro_usd: None,
        budget_limit_micro_usd: None,
    }
}

fn route_text(text: &str, policy: &Policy) -> Result<Decision, RouteError> {
    let messages = [Message { role: "user", text }];
    route(&request(&messages), &default_tiers(), policy, &RouterConfig::default())
}

const HARD: &str = "Implement a lock-free multi-producer multi-consumer ring buffer in Rust with atomics. \
    Explain every memory ordering, handle wrap-around without ABA problems, and write loom tests.";

#[test]
fn simple_lookups_go_to_haiku() {
    for text in ["What's the capital of Peru?", "How many days are in a leap year?", "spell 'necessary'"] {
        let d = route_text(text, &Policy::default()).expect("routes");
        assert_eq!(d.tier, "haiku", "{text}: {:?}", d.reasons);
    }
}

#[test]
fn hard_multi_step_code_goes_to_opus_or_above() {
    let d = route_text(HARD, &Policy::default()).expect("routes");
    assert!(d.candidates.iter().any(|c| c.tier == d.tier && c.level >= 2), "{:?}", d.reasons);
}

#[test]
fn a_300k_token_prompt_only_fits_the_1m_model() {
    let big = "lorem ipsum dolor sit amet consectetur ".repeat(50_000);
    let d = route_text(&big, &Policy::default()).expect("routes");
    assert_eq!(d.tier, "sonnet[1m]");
    assert!(d.estimated_input_tokens > 290_000, "{}", d.estimated_input_tokens);
    let fitting: Vec<&str> =
        d.candidates.iter().filter(|c| c.fits_context).map(|c| c.tier.as_str()).collect();
    assert_eq!(fitting, ["sonnet[1m]"]);
    assert!(d.reasons[0].contains("only sonnet[1m]"), "{}", d.reasons[0]);

    let without_1m: Vec<Tier> = default_tiers().into_iter().filter(|t| t.name != "sonnet[1m]").collect();
    let messages = [Message { role: "user", text: &big }];
    let err = route(&request(&messages), &without_1m, &Policy::default(), &RouterConfig::default());
    assert!(
        matches!(err, Err(RouteError::ContextLengthExceeded { largest: 200_000, needed }) if needed > 300_000),
        "{err:?}"
    );
}

#[test]
fn max_tokens_beyond_a_models_output_limit_excludes_it() {
    let messages = [Message { role: "user", text: "What is 2 + 2?" }];
    let req = RouteRequest { max_tokens: Some(40_000), ..request(&messages) };
    let d = route(&req, &default_tiers(), &Policy::default(), &RouterConfig::default()).expect("routes");
    assert_eq!(d.tier, "sonnet", "haiku's max output is 32k: {:?}", d.reasons);
}

#[test]
fn low_budget_moves_the_choice_down() {
    let messages = [Message { role: "user", text: HARD }];
    let limit = 10_000_000;
    // share of the limit left → expected level
    let cases = [(100, 2), (30, 2), (20, 1), (9, 0)];
    for (percent, level) in cases {
        let req = RouteRequest {
            remaining_budget_micro_usd: Some(limit * percent / 100),
            budget_limit_micro_usd: Some(limit),
            ..request(&messages)
        };
        let d = route(&req, &default_tiers(), &Policy::default(), &RouterConfig::default()).expect("routes");
        let chosen = d.candidates.iter().find(|c| c.tier == d.tier).map(|c| c.level);
        assert_eq!(chosen, Some(level), "{percent}%: {:?}", d.reasons);
    }
}

#[test]
fn no_choice_ever_exceeds_the_remaining_budget() {
    let long = "Please review this:\n\n".to_owned() + &"fn f(x: u32) -> u32 { x + 1 }\n".repeat(300);
    for text in ["hi", HARD, long.as_str()] {
        let messages = [Message { role: "user", text }];
        let unlimited =
            route(&request(&messages), &default_tiers(), &Policy::default(), &RouterConfig::default());
        let costs: Vec<u64> =
            unlimited.expect("routes").candidates.iter().map(|c| c.estimated_cost_micro_usd).collect();
        // Every budget on a geometric grid, plus each candidate's cost and its neighbours.
        let grid = std::iter::successors(Some(1u64), |b| (*b < 10_000_000).then(|| b + b / 8 + 1));
        let edges = costs.iter().flat_map(|&c| [c.saturating_sub(1), c, c + 1]);
        for remaining in std::iter::once(0).chain(grid).chain(edges) {
            for limit in [None, Some(remaining.max(1) * 3), Some(1_000_000_000)] {
                let req = RouteRequest {
                    remaining_budget_micro_usd: Some(remaining),
                    budget_limit_micro_usd: limit,
                    ..request(&messages)
                };
                match route(&req, &default_tiers(), &Policy::default(), &RouterConfig::default()) {
                    Ok(d) => {
                        let chosen =
                            d.candidates.iter().find(|c| c.tier == d.tier).expect("chosen is a candidate");
                        assert!(chosen.estimated_cost_micro_usd <= remaining, "{remaining}: {chosen:?}");
                        assert!(chosen.fits_context && chosen.fits_budget);
                    }
                    Err(RouteError::InsufficientBudget { cheapest_micro_usd, remaining_micro_usd }) => {
                        assert_eq!(remaining_micro_usd, remaining);
                        assert!(cheapest_micro_usd > remaining);
                        assert_eq!(Some(&cheapest_micro_usd), costs.iter().min(), "the cheapest is reported");
                    }
                    Err(other) => panic!("{remaining}: unexpected {other:?}"),
                }
            }
        }
    }
}

#[test]
fn policy_bounds_and_fixes_the_choice() {
    let names = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let some = |s: &str| Some(s.to_owned());
    // prompt, policy, expected tier
    let cases: Vec<(&str, Policy, &str)> = vec![
        ("What is 2 + 2?", Policy { min_tier: some("opus"), ..Policy::default() }, "opus"),
        (HARD, Policy { max_tier: some("sonnet"), ..Policy::default() }, "sonnet"),
        (HARD, Policy { max_tier: some("haiku"), ..Policy::default() }, "haiku"),
        ("What is 2 + 2?", Policy { fixed_model: some("fable"), ..Policy::default() }, "fable"),
        (HARD, Policy { allowed_tiers: names(&["haiku", "sonnet"]), ..Policy::default() }, "sonnet"),
        ("What is 2 + 2?", Policy { allowed_tiers: names(&["opus", "fable"]), ..Policy::default() }, "opus"),
    ];
    for (text, policy, want) in cases {
        let d = route_text(text, &policy).expect("routes");
        assert_eq!(d.tier, want, "{policy:?}: {:?}", d.reasons);
        assert!(d.candidates.iter().all(|c| policy.fixed_model.as_deref().is_none_or(|m| c.tier == m)));
        assert!(d.reasons[3].starts_with("policy: ") && !d.reasons[3].ends_with("none"), "{}", d.reasons[3]);
    }
}

#[test]
fn impossible_policies_are_refused() {
    let some = |s: &str| Some(s.to_owned());
    let cases = [
        Policy { fixed_model: some("gpt-9"), ..Policy::default() },
        Policy { max_tier: some("mystery"), ..Policy::default() },
        Policy { min_tier: some("opus"), max_tier: some("sonnet"), ..Policy::default() },
        Policy { allowed_tiers: Some(vec![]), ..Policy::default() },
    ];
    for policy in cases {
        assert!(matches!(route_text("hi", &policy), Err(RouteError::NoAllowedTier(_))), "{policy:?}");
    }
}

#[test]
fn reasons_cover_every_factor_and_overhead_is_counted() {
    let d = route_text("Write a haiku about the sea.", &Policy::default()).expect("routes");
    let prefixes = ["context: ", "complexity ", "budget: ", "policy: ", "chose "];
    for (reason, prefix) in d.reasons.iter().zip(prefixes) {
        assert!(reason.starts_with(prefix), "{reason}");
    }
    let text_only = crate::estimate_tokens("Write a haiku about the sea.");
    assert_eq!(d.estimated_input_tokens, text_only + MESSAGE_FRAMING_TOKENS + 200);
}

#[test]
fn a_tiers_cost_counts_the_input_as_the_gateway_reserves_it() {
    // Dense punctuation: a tokenizer may give it a token a byte, and the
    // gateway reserves that much, so the router prices it the same way.
    let text = "{};".repeat(1_000);
    let messages = [Message { role: "user", text: &text }];
    let d = route(&request(&messages), &default_tiers(), &Policy::default(), &RouterConfig::default())
        .expect("routes");
    let tiers = default_tiers();
    for candidate in &d.candidates {
        let tier = tiers.iter().find(|t| t.name == candidate.tier).expect("a tier");
        let output = RouterConfig::default().default_output_tokens.min(tier.max_output);
        let bound = 3_000 + MESSAGE_FRAMING_TOKENS + 200;
        assert_eq!(candidate.estimated_cost_micro_usd, estimate_cost_micro_usd(tier, bound, output));
        assert!(d.estimated_input_tokens < bound, "the context check keeps the estimate");
    }
}
