//! Tiers (the models the router may choose between) and what a request costs on each.

use serde::{Deserialize, Serialize};

/// One model the router may pick. The gateway passes the list in as data, so
/// prices and windows can change without a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Unique name shown in reasons and reports, e.g. `"haiku"` or `"sonnet[1m]"`.
    pub name: String,
    /// What the gateway passes to the CLI's `--model` (an alias such as
    /// `"haiku"` or `"sonnet[1m]"`, or a full model id).
    pub model: String,
    /// Capability rank: 0 = haiku, 1 = sonnet, 2 = opus, 3 = fable. Several
    /// tiers may share a level (`sonnet` and `sonnet[1m]`).
    pub level: u8,
    /// Tokens the model can hold: input plus output.
    pub context_window: u64,
    /// Most output tokens one reply may have.
    pub max_output: u64,
    /// Price of input, micro-dollars per million tokens ($1 = 1_000_000).
    pub input_micro_usd_per_mtok: u64,
    /// Price of output, micro-dollars per million tokens.
    pub output_micro_usd_per_mtok: u64,
}

impl Tier {
    fn new(name: &str, level: u8, context_k: u64, max_out_k: u64, usd_in: u64, usd_out: u64) -> Tier {
        Tier {
            name: name.to_owned(),
            model: name.to_owned(),
            level,
            context_window: context_k * 1000,
            max_output: max_out_k * 1000,
            input_micro_usd_per_mtok: usd_in * 1_000_000,
            output_micro_usd_per_mtok: usd_out * 1_000_000,
        }
    }
}

/// Names of the capability levels, indexed by [`Tier::level`]; used to read
/// labels and policy tier names that refer to a level rather than one tier.
pub const LEVEL_NAMES: [&str; 4] = ["haiku", "sonnet", "opus", "fable"];

/// The level a tier name such as `"opus"` stands for, if it names one.
pub fn level_of_name(name: &str) -> Option<u8> {
    let name = name.trim();
    LEVEL_NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)).and_then(|i| u8::try_from(i).ok())
}

/// The tiers the Claude Code CLI offered when this was written, including the
/// 1M-context Sonnet variant as an extra candidate at Sonnet's level.
pub fn default_tiers() -> Vec<Tier> {
    vec![
        Tier::new("haiku", 0, 200, 32, 1, 5),
        Tier::new("sonnet", 1, 200, 64, 3, 15),
        Tier::new("opus", 2, 200, 64, 5, 25),
        Tier::new("fable", 3, 200, 64, 10, 50),
        Tier::new("sonnet[1m]", 1, 1000, 64, 3, 15),
    ]
}

/// Cost in micro-dollars of `input_tokens` in and `output_tokens` out on
/// `tier`, rounded up so an estimate never undercounts. Integer arithmetic
/// (u128 inside) because budgets are integer money.
pub fn estimate_cost_micro_usd(tier: &Tier, input_tokens: u64, output_tokens: u64) -> u64 {
    let scaled = u128::from(input_tokens) * u128::from(tier.input_micro_usd_per_mtok)
        + u128::from(output_tokens) * u128::from(tier.output_micro_usd_per_mtok);
    let micro = scaled.div_ceil(1_000_000);
    u64::try_from(micro).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_scales_with_price() {
        let tiers = default_tiers();
        let cases: [(&str, u64, u64, u64); 6] = [
            // name, input, output, micro-dollars
            ("haiku", 1_000_000, 0, 1_000_000),
            ("haiku", 0, 1_000_000, 5_000_000),
            ("sonnet", 1_000, 500, 3_000 + 7_500),
            ("opus", 1, 0, 5),
            ("haiku", 1, 1, 6),
            ("fable", 3, 0, 30),
        ];
        for (name, input, output, want) in cases {
            let tier = tiers.iter().find(|t| t.name == name).expect("default tier");
            assert_eq!(estimate_cost_micro_usd(tier, input, output), want, "{name} {input}/{output}");
        }
        // A fractional micro-dollar is charged as a whole one.
        let mut cheap = tiers[0].clone();
        cheap.input_micro_usd_per_mtok = 1;
        assert_eq!(estimate_cost_micro_usd(&cheap, 1, 0), 1);
        assert_eq!(estimate_cost_micro_usd(&cheap, 0, 0), 0);
    }

    #[test]
    fn cost_saturates_instead_of_overflowing() {
        let tier = &default_tiers()[3];
        assert_eq!(estimate_cost_micro_usd(tier, u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn level_names_resolve() {
        let cases =
            [("haiku", Some(0)), ("Sonnet", Some(1)), (" opus ", Some(2)), ("fable", Some(3)), ("gpt", None)];
        for (name, want) in cases {
            assert_eq!(level_of_name(name), want, "{name}");
        }
    }
}
