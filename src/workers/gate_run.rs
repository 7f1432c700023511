//! A run's allowance at the spend gate, and the arithmetic of letting a
//! call through: its worst case (input at an upper bound of its tokens and
//! the highest input price it can be charged, plus its whole output), and
//! the output that fits in what is left.

use std::sync::Mutex;

use serde_json::Value;

use super::cli::MIN_THINKING_BUDGET;
use super::gate::lock;
use crate::chat::content::IMAGE_TOKENS;
use crate::chat::prompt::token_estimate_of_len;
use crate::money::Micros;
use crate::pricing::{Model, PriceTable, TokenUsage};

/// One run's allowance and what its calls have used of it.
pub struct GateRun {
    limit: Micros,
    books: Mutex<Books>,
}

#[derive(Default)]
struct Books {
    calls: u32,
    /// What finished calls cost, from their usage.
    spent: Micros,
    /// The worst cases of the calls under way.
    held: Micros,
    refused: bool,
}

impl GateRun {
    pub(super) fn new(limit: Micros) -> GateRun {
        GateRun { limit, books: Mutex::default() }
    }

    /// Whether a call of this run was refused for want of budget.
    pub fn refused(&self) -> bool {
        lock(&self.books).refused
    }

    /// What the run's finished calls cost, at the gate's prices.
    pub fn spent(&self) -> Micros {
        lock(&self.books).spent
    }

    /// Admits one call (see the module note).
    pub(super) fn admit(&self, call: &Call<'_>) -> Admission {
        let mut books = lock(&self.books);
        let first = books.calls == 0;
        books.calls += 1;
        let available = Micros(self.limit.0 - books.spent.0 - books.held.0);
        let admission = if first { call.as_asked() } else { call.within(available) };
        match &admission {
            Admission::Pass { worst, .. } => books.held = Micros(books.held.0 + worst.0),
            Admission::Refuse => {
                books.refused = true;
                tracing::info!(
                    model = %call.model.id,
                    call = books.calls,
                    limit_usd = self.limit.as_usd(),
                    spent_usd = books.spent.as_usd(),
                    held_usd = books.held.as_usd(),
                    "the spend gate refused a call that could cost more than what is left of its run's reservation"
                );
            }
        }
        admission
    }

    /// A call admitted with `worst` has ended, having cost `cost`.
    pub(super) fn settle(&self, worst: Micros, cost: Micros) {
        let mut books = lock(&self.books);
        books.held = Micros(books.held.0 - worst.0);
        books.spent = Micros(books.spent.0 + cost.0);
    }
}

/// The price of a call's input when it asks for prompt caching: writes
/// cost more than plain input, and one-hour writes more again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum InputRate {
    Plain,
    CacheWrite,
    CacheWriteHour,
}

/// One call, as far as its price goes.
pub(super) struct Call<'a> {
    pub(super) model: &'a Model,
    pub(super) input_tokens: u64,
    pub(super) rate: InputRate,
    pub(super) max_tokens: u64,
}

#[derive(Debug, PartialEq)]
pub(super) enum Admission {
    /// Goes, with this `max_tokens`; `worst` is the most it can cost.
    Pass {
        max_tokens: u64,
        worst: Micros,
    },
    Refuse,
}

impl Call<'_> {
    fn input_cost(&self) -> Micros {
        let n = self.input_tokens;
        self.model.cost(&match self.rate {
            InputRate::Plain => TokenUsage { input_tokens: n, ..TokenUsage::default() },
            InputRate::CacheWrite => TokenUsage { cache_write_tokens: n, ..TokenUsage::default() },
            InputRate::CacheWriteHour => {
                TokenUsage { cache_write_tokens: n, cache_write_1h_tokens: n, ..TokenUsage::default() }
            }
        })
    }

    fn worst(&self, max_tokens: u64) -> Micros {
        let output = self.model.cost(&TokenUsage { output_tokens: max_tokens, ..TokenUsage::default() });
        Micros(self.input_cost().0 + output.0)
    }

    fn as_asked(&self) -> Admission {
        Admission::Pass { max_tokens: self.max_tokens, worst: self.worst(self.max_tokens) }
    }

    /// The most output that fits in `available` after the input, up to
    /// what the call asked for; refused below one token.
    fn within(&self, available: Micros) -> Admission {
        let left = available.0 - self.input_cost().0;
        if left <= 0 {
            return Admission::Refuse;
        }
        let price = self.model.output_per_mtok.0.max(0) as u128;
        let affordable = match price {
            0 => self.max_tokens,
            price => u64::try_from(left as u128 * 1_000_000 / price).unwrap_or(u64::MAX),
        };
        let max_tokens = affordable.min(self.max_tokens);
        if max_tokens == 0 {
            return Admission::Refuse;
        }
        Admission::Pass { max_tokens, worst: self.worst(max_tokens) }
    }
}

/// The model a call is priced as: its own, or the dearest the table knows.
pub(super) fn price_model<'a>(prices: &'a PriceTable, name: &str) -> Option<&'a Model> {
    prices
        .resolve(name)
        .or_else(|| prices.models().iter().max_by_key(|m| (m.output_per_mtok.0, m.input_per_mtok.0)))
}

pub(super) fn input_rate(body: &[u8]) -> InputRate {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    match (has(b"cache_control"), has(b"\"1h\"")) {
        (false, _) => InputRate::Plain,
        (true, false) => InputRate::CacheWrite,
        (true, true) => InputRate::CacheWriteHour,
    }
}

/// A bound on a later call's input tokens: one per 2.5 bytes of its body
/// (`chat::prompt::token_estimate`), but an image's base64 data counts as
/// the most tokens an image can be (`chat::content::IMAGE_TOKENS`), far
/// fewer than its bytes would say. Not the reservation's one token per
/// byte: a call repeats Claude Code's own system prompt and tool schemas,
/// tens of kilobytes of ordinary text, and at a token a byte an agent's
/// later calls would not fit in its reservation. Punctuation-dense text
/// that a tool returned can beat it (`ccgate_reservation_overrun_usd`).
pub(super) fn input_bound(call: &Value, len: usize) -> u64 {
    fn images(value: &Value, found: &mut (u64, usize)) {
        match value {
            Value::Array(items) => items.iter().for_each(|item| images(item, found)),
            Value::Object(fields) => {
                let data = value.pointer("/source/data").and_then(Value::as_str);
                match (fields.get("type").and_then(Value::as_str), data) {
                    (Some("image"), Some(data)) => {
                        found.0 += 1;
                        found.1 += data.len();
                    }
                    _ => fields.values().for_each(|field| images(field, found)),
                }
            }
            _ => {}
        }
    }
    let mut found = (0, 0);
    images(call, &mut found);
    let (count, bytes) = found;
    token_estimate_of_len(len.saturating_sub(bytes)) + count * IMAGE_TOKENS
}

/// Lowers a call's `max_tokens`, and a thinking budget that no longer fits
/// under it (or turns thinking off, under the API's smallest budget).
pub(super) fn lower_max_tokens(call: &mut Value, max_tokens: u64) {
    call["max_tokens"] = max_tokens.into();
    let budget = call.pointer("/thinking/budget_tokens").and_then(Value::as_u64);
    if budget.is_some_and(|budget| budget >= max_tokens) {
        call["thinking"] = if max_tokens > MIN_THINKING_BUDGET {
            serde_json::json!({"type": "enabled", "budget_tokens": max_tokens - 1})
        } else {
            serde_json::json!({"type": "disabled"})
        };
    }
}

#[cfg(test)]
impl GateRun {
    pub(super) fn hold_for_tests(&self, worst: Micros) {
        lock(&self.books).held = worst;
    }

    pub(super) fn held_for_tests(&self) -> Micros {
        lock(&self.books).held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn haiku() -> Model {
        PriceTable::builtin().resolve("haiku").expect("haiku").clone()
    }

    fn call(model: &Model, input_tokens: u64, max_tokens: u64) -> Call<'_> {
        Call { model, input_tokens, rate: InputRate::Plain, max_tokens }
    }

    #[test]
    fn a_later_call_gets_the_output_that_fits_and_no_more() {
        let haiku = haiku();
        // haiku: $1 in, $5 out a million tokens; 1,000 input tokens cost
        // 1,000 µ$, and each output token 5 µ$.
        let c = call(&haiku, 1_000, 32_000);
        assert_eq!(
            c.within(Micros(1_000 + 5 * 100)),
            Admission::Pass { max_tokens: 100, worst: Micros(1_500) }
        );
        assert_eq!(
            c.within(Micros(1_000 + 5 * 100 + 4)),
            Admission::Pass { max_tokens: 100, worst: Micros(1_500) }
        );
        assert_eq!(c.within(Micros(1_000 + 4)), Admission::Refuse);
        assert_eq!(c.within(Micros(900)), Admission::Refuse);
        assert_eq!(c.within(Micros(-5)), Admission::Refuse);
        // Room for more than was asked: the call goes as asked.
        let small = call(&haiku, 1_000, 10);
        assert_eq!(small.within(Micros(1_000_000)), Admission::Pass { max_tokens: 10, worst: Micros(1_050) });
    }

    #[test]
    fn cache_markers_price_the_input_as_cache_writes() {
        assert_eq!(input_rate(br#"{"messages":[]}"#), InputRate::Plain);
        assert_eq!(
            input_rate(br#"{"system":[{"cache_control":{"type":"ephemeral"}}]}"#),
            InputRate::CacheWrite
        );
        assert_eq!(
            input_rate(br#"{"system":[{"cache_control":{"type":"ephemeral","ttl":"1h"}}]}"#),
            InputRate::CacheWriteHour
        );
        let haiku = haiku();
        let plain = call(&haiku, 1_000_000, 1).input_cost();
        let write = Call { rate: InputRate::CacheWrite, ..call(&haiku, 1_000_000, 1) }.input_cost();
        let hour = Call { rate: InputRate::CacheWriteHour, ..call(&haiku, 1_000_000, 1) }.input_cost();
        assert_eq!(plain, Micros(1_000_000));
        assert_eq!(write, Micros(1_250_000));
        assert_eq!(hour, Micros(2_000_000));
    }

    #[test]
    fn the_first_call_goes_as_asked_and_later_ones_share_what_is_left() {
        let haiku = haiku();
        let run = GateRun::new(Micros(2_000));
        // The first call is what the reservation was priced from.
        let first = call(&haiku, 1_000, 1_000);
        assert_eq!(run.admit(&first), Admission::Pass { max_tokens: 1_000, worst: Micros(6_000) });
        // While it runs, its worst case is held: nothing is left.
        assert_eq!(run.admit(&call(&haiku, 100, 10)), Admission::Refuse);
        assert!(run.refused());
        // It cost 1,000 of input and 20 tokens of output: 1,100 µ$.
        run.settle(Micros(6_000), Micros(1_100));
        assert_eq!(run.spent(), Micros(1_100));
        // 900 µ$ left: 400 of input, then 100 tokens of output.
        assert_eq!(
            run.admit(&call(&haiku, 400, 32_000)),
            Admission::Pass { max_tokens: 100, worst: Micros(900) }
        );
        assert_eq!(run.admit(&call(&haiku, 1, 1)), Admission::Refuse);
    }

    #[test]
    fn a_lowered_cap_takes_the_thinking_budget_down_with_it() {
        let thinking = serde_json::json!({"model": "m", "max_tokens": 32000,
            "thinking": {"type": "enabled", "budget_tokens": 31999}});
        let mut lowered = thinking.clone();
        lower_max_tokens(&mut lowered, 5_000);
        assert_eq!(lowered["max_tokens"], 5_000);
        assert_eq!(lowered["thinking"], serde_json::json!({"type": "enabled", "budget_tokens": 4_999}));
        let mut off = thinking;
        lower_max_tokens(&mut off, 900);
        assert_eq!(off["thinking"], serde_json::json!({"type": "disabled"}));
        let mut plain = serde_json::json!({"model": "m", "max_tokens": 32000,
            "messages": [{"role": "user", "content": "hi"}]});
        lower_max_tokens(&mut plain, 7);
        assert_eq!(plain["max_tokens"], 7);
        assert_eq!(plain["messages"][0]["content"], "hi");
        assert!(plain.get("thinking").is_none());
    }

    #[test]
    fn an_image_counts_as_the_most_tokens_an_image_can_be_not_as_its_bytes() {
        let data = "A".repeat(1_000_000);
        let call = serde_json::json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
            {"type": "text", "text": "what is this?"},
        ]}]});
        let len = call.to_string().len();
        let bound = input_bound(&call, len);
        assert_eq!(bound, token_estimate_of_len(len - 1_000_000) + IMAGE_TOKENS);
        let text =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(1000)}]});
        let len = text.to_string().len();
        assert_eq!(input_bound(&text, len), token_estimate_of_len(len));
    }

    #[test]
    fn an_unknown_model_is_priced_as_the_dearest() {
        let prices = PriceTable::builtin();
        let dearest = price_model(&prices, "claude-unknown-9").unwrap();
        assert!(prices.models().iter().all(|m| m.output_per_mtok <= dearest.output_per_mtok));
        assert_eq!(
            price_model(&prices, "claude-haiku-4-5-20251001").unwrap().id,
            "claude-haiku-4-5-20251001"
        );
    }
}
