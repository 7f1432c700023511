//! The model router behind `"model": "auto"`: picks the cheapest Claude tier
//! that will do the job well, never one the budget cannot pay for, never one
//! whose context window cannot hold the request, and says why.
//!
//! Pure logic: no I/O, no network, no clock. The gateway passes in the tiers
//! (prices and windows are data), the project's policy and budget, and the
//! config; it gets back a [`Decision`] or a [`RouteError`].
//!
//! ```
//! use ccgate_router::{default_tiers, route, Message, Policy, RouteRequest, RouterConfig};
//!
//! let messages = [Message { role: "user", text: "What's the capital of Australia?" }];
//! let req = RouteRequest {
//!     messages: &messages,
//!     max_tokens: None,
//!     overhead_tokens: 200,
//!     remaining_budget_micro_usd: Some(5_000_000),
//!     budget_limit_micro_usd: Some(10_000_000),
//! };
//! let decision = route(&req, &default_tiers(), &Policy::default(), &RouterConfig::default()).unwrap();
//! assert_eq!(decision.tier, "haiku");
//! assert_eq!(decision.reasons.len(), 5);
//! ```
//!
//! # API
//! - [`route`]`(req, tiers, policy, cfg) -> Result<Decision, RouteError>`: the decision.
//! - [`complexity`]`(messages, cfg) -> Complexity`: the score (0..1) and its named [`Signal`]s.
//! - [`estimate_tokens`]`(text) -> u64`: tokenizer-free token estimate.
//! - [`estimate_cost_micro_usd`]`(tier, input, output) -> u64`: integer cost, rounded up.
//! - [`default_tiers`]`()`: haiku, sonnet, opus, fable and sonnet\[1m\] as the CLI prices them.
//! - [`eval`]: [`parse_eval_jsonl`], [`eval::held_out_split`], [`evaluate`] → [`EvalReport`]
//!   (accuracy, confusion matrix, costs, APGR against two baselines; `Display` prints a
//!   table), [`apgr`]. [`baseline`] has the word-count and keyword scorers it compares with.
//!
//! See `docs/ROUTING.md` for the signals, the weights, the evaluation and the figures.
//!
//! # How a tier is chosen
//! 1. Policy: `fixed_model`, `allowed_tiers`, `min_tier`/`max_tier` bound the candidates.
//! 2. Context: a candidate must hold input (+ a margin for estimate error) plus the
//!    output allowance (`max_tokens`, else `min(default_output_tokens, max_output)`).
//! 3. Budget: a candidate's cost (input plus the full output allowance) must fit what
//!    is left. If nothing fits → `ContextLengthExceeded` or `InsufficientBudget`.
//! 4. Complexity picks a level through the [`Thresholds`]; a low budget steps it down
//!    ([`LowBudget`]); the policy clamps it.
//! 5. The cheapest eligible candidate nearest that level wins (lower level on a tie).

pub mod baseline;
mod complexity;
mod config;
pub mod eval;
mod lexicon;
mod lines;
mod reasons;
mod route;
mod scan;
mod tier;
mod tokens;
mod words;

pub use complexity::{complexity, Complexity, Signal, Weights, SIGNAL_NAMES};
pub use config::{LowBudget, RouterConfig, Thresholds};
pub use eval::{apgr, evaluate, parse_eval_jsonl, EvalItem, EvalReport};
pub use route::{
    route, Candidate, Decision, Message, Policy, RouteError, RouteRequest, MESSAGE_FRAMING_TOKENS,
};
pub use tier::{default_tiers, estimate_cost_micro_usd, level_of_name, Tier, LEVEL_NAMES};
pub use tokens::estimate_tokens;
