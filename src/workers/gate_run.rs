//! A run's allowance at the spend gate, and the arithmetic of letting a
//! call through: its worst case (input at an upper bound of its tokens and
//! the highest input price it can be charged, plus its whole output), and
//! the output that fits in what is left.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

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
    /// Told when a call ends, for a call waiting to be bounded.
    ended: Notify,
}

#[derive(Default)]
struct Books {
    calls: u32,
    /// What finished calls cost, from their usage.
    spent: Micros,
    /// The calls under way, and their worst cases.
    under_way: u32,
    held: Micros,
    refused: bool,
    /// The latest finished calls whose usage was read, newest first (at
    /// most `KNOWN_CALLS`): what a later call's input is bounded from.
    known: VecDeque<Known>,
}

/// The longest a later call waits for a call under way to finish and give
/// its bound. Claude Code reads an answer while it makes its next call, so
/// the one under way ends on its own; should a client ever wait for the
/// later call first, this is as long as it is held up before its whole
/// input is counted at a token per byte instead.
const BOUND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The most finished calls a run keeps (a conversation and the side calls
/// or sub-agents beside it).
const KNOWN_CALLS: usize = 4;

/// A finished call: what it sent, and the input tokens its usage reported.
struct Known {
    shape: Shape,
    input_tokens: u64,
}

impl GateRun {
    pub(super) fn new(limit: Micros) -> GateRun {
        GateRun { limit, books: Mutex::default(), ended: Notify::new() }
    }

    /// Whether a call of this run was refused for want of budget.
    pub fn refused(&self) -> bool {
        lock(&self.books).refused
    }

    /// What the run's finished calls cost, at the gate's prices.
    pub fn spent(&self) -> Micros {
        lock(&self.books).spent
    }

    /// Admits one call, which sends `shape` (see the module note). The
    /// run's first call goes as asked: the reservation was priced from it.
    /// A later one's input is bounded from a finished call of the run
    /// (`Shape::bound_after`, the least over those kept), which no input
    /// beats. Without one, a later call waits while a call is under way
    /// (its end gives the bound), for `BOUND_WAIT` at most; past that, or
    /// with none under way (every earlier call failed), its input counts at
    /// a token per byte of all it sends.
    pub(super) async fn admit(&self, call: &Call<'_>, shape: &Shape) -> Admission {
        let until = tokio::time::Instant::now() + BOUND_WAIT;
        let mut may_wait = true;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the books are read: an end between the
            // read and the wait still wakes it.
            ended.as_mut().enable();
            if let Some(admission) = self.try_admit(call, shape, may_wait) {
                return admission;
            }
            may_wait = tokio::time::timeout_at(until, ended).await.is_ok();
        }
    }

    /// `admit` without the wait: `None` when the call is to wait.
    fn try_admit(&self, call: &Call<'_>, shape: &Shape, may_wait: bool) -> Option<Admission> {
        let mut books = lock(&self.books);
        let first = books.calls == 0;
        let bounded = books.known.iter().map(|known| shape.bound_after(known)).min();
        let input_tokens = match bounded {
            Some(bound) => bound,
            None if first => call.input_tokens,
            None if may_wait && books.under_way > 0 => return None,
            None => shape.bound(),
        };
        books.calls += 1;
        let available = Micros(self.limit.0 - books.spent.0 - books.held.0);
        let call = Call { input_tokens, ..*call };
        let admission = if first { call.as_asked() } else { call.within(available) };
        match &admission {
            Admission::Pass { worst, .. } => {
                books.held = Micros(books.held.0 + worst.0);
                books.under_way += 1;
            }
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
        Some(admission)
    }

    /// A call admitted with `worst` has ended, having cost `cost`.
    pub(super) fn settle(&self, worst: Micros, cost: Micros) {
        {
            let mut books = lock(&self.books);
            books.held = Micros(books.held.0 - worst.0);
            books.spent = Micros(books.spent.0 + cost.0);
            books.under_way -= 1;
        }
        self.ended.notify_waiters();
    }

    /// A call that sent `shape` read `input_tokens` (fresh, cached and
    /// written to the cache), as its usage said.
    pub(super) fn learn(&self, shape: Shape, input_tokens: u64) {
        let mut books = lock(&self.books);
        books.known.push_front(Known { shape, input_tokens });
        books.known.truncate(KNOWN_CALLS);
    }
}

/// A call the gate let through: its run, the model it is priced as, its
/// worst case (held against the run until it is settled) and what it sent.
pub(super) struct Admitted {
    pub(super) run: std::sync::Arc<GateRun>,
    pub(super) model: Model,
    pub(super) worst: Micros,
    pub(super) shape: Shape,
}

impl Admitted {
    /// The call ended with nothing to bill: not sent, or not answered with
    /// a success.
    pub(super) fn unbilled(self) {
        self.run.settle(self.worst, Micros::ZERO);
    }
}

/// A Messages call's input in the parts a later call of the same
/// conversation repeats: its system prompt, its tool definitions and each
/// of its messages, as sent.
///
/// A later call of Claude Code's sends the same system prompt and tools
/// and the same messages, then new ones (an answer, a tool's result); the
/// tokens of what it repeats are among those the earlier call read, which
/// its usage reported. So its input is at most what the earlier call read,
/// plus a token per byte of what is new or changed (a part whose JSON
/// differs at all, a moved cache marker say, counts whole), an image at
/// `IMAGE_TOKENS`. Unlike a token per 2.5 bytes of the whole call, no
/// input beats it, and the tens of kilobytes of Claude Code's own prompt
/// that every call repeats are counted at what they really cost.
pub(super) struct Shape {
    system: Part,
    tools: Part,
    messages: Vec<Part>,
}

/// One part of a call: its JSON, and a token per byte of it (images aside).
struct Part {
    json: String,
    bound: u64,
}

impl Part {
    fn of(value: &Value) -> Part {
        let json = if value.is_null() { String::new() } else { value.to_string() };
        let bound = strict_bound(value, json.len());
        Part { json, bound }
    }

    /// Its bound when `earlier` was not the same, else nothing.
    fn unless_same(&self, earlier: &Part) -> u64 {
        if self.json == earlier.json {
            0
        } else {
            self.bound
        }
    }
}

impl Shape {
    pub(super) fn of(call: &Value) -> Shape {
        let messages =
            call["messages"].as_array().map(|m| m.iter().map(Part::of).collect()).unwrap_or_default();
        Shape { system: Part::of(&call["system"]), tools: Part::of(&call["tools"]), messages }
    }

    /// An upper bound on this call's input tokens: a token per byte of
    /// everything it sends (images aside).
    fn bound(&self) -> u64 {
        self.system.bound + self.tools.bound + self.messages.iter().map(|m| m.bound).sum::<u64>()
    }

    /// An upper bound on this call's input tokens, given a finished call
    /// of the same run (see the type's note).
    fn bound_after(&self, known: &Known) -> u64 {
        let earlier = &known.shape;
        let same = self.messages.iter().zip(&earlier.messages).take_while(|(m, e)| m.json == e.json).count();
        let new: u64 = self.messages[same..].iter().map(|m| m.bound).sum();
        known.input_tokens
            + self.system.unless_same(&earlier.system)
            + self.tools.unless_same(&earlier.tools)
            + new
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
#[derive(Clone, Copy)]
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

/// An estimate of a call's input tokens, for a run's first call (which
/// goes as asked, see `GateRun::admit`; its estimate is what it holds
/// while under way): one per 2.5 bytes of its body (`chat::prompt::token_estimate`), but an
/// image's base64 data counts as the most tokens an image can be
/// (`chat::content::IMAGE_TOKENS`), far fewer than its bytes would say. Not
/// a token a byte: every call carries Claude Code's own system prompt and
/// tool schemas, tens of kilobytes of ordinary text.
pub(super) fn input_estimate(call: &Value, len: usize) -> u64 {
    let (count, bytes) = images_in(call);
    token_estimate_of_len(len.saturating_sub(bytes)) + count * IMAGE_TOKENS
}

/// A token per byte of a part `len` bytes long as JSON, but its images at
/// `IMAGE_TOKENS` each.
fn strict_bound(part: &Value, len: usize) -> u64 {
    let (count, bytes) = images_in(part);
    len.saturating_sub(bytes) as u64 + count * IMAGE_TOKENS
}

/// How many images a value holds, and the bytes of their base64 data.
fn images_in(value: &Value) -> (u64, usize) {
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
    images(value, &mut found);
    found
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
    /// Books a call under way with this worst case, as `admit` does.
    pub(super) fn hold_for_tests(&self, worst: Micros) {
        let mut books = lock(&self.books);
        books.calls += 1;
        books.under_way += 1;
        books.held = Micros(books.held.0 + worst.0);
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

    /// The shape of a call with no system prompt, tools or messages.
    fn nothing_sent() -> Shape {
        Shape::of(&serde_json::json!({"model": "m", "max_tokens": 10}))
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

    #[tokio::test]
    async fn the_first_call_goes_as_asked_and_later_ones_share_what_is_left() {
        let haiku = haiku();
        let run = GateRun::new(Micros(2_000));
        // The first call is what the reservation was priced from.
        let first = call(&haiku, 1_000, 1_000);
        assert_eq!(
            run.admit(&first, &nothing_sent()).await,
            Admission::Pass { max_tokens: 1_000, worst: Micros(6_000) }
        );
        // It read 400 tokens and wrote 20: 500 µ$.
        run.learn(nothing_sent(), 400);
        run.settle(Micros(6_000), Micros(500));
        assert_eq!(run.spent(), Micros(500));
        // 1,500 µ$ left: the same input again (400 tokens, what the first
        // read, not the call's own estimate of 1), then 220 tokens of output.
        assert_eq!(
            run.admit(&call(&haiku, 1, 32_000), &nothing_sent()).await,
            Admission::Pass { max_tokens: 220, worst: Micros(1_500) }
        );
        // While it runs, its worst case is held: nothing is left.
        assert_eq!(run.admit(&call(&haiku, 1, 1), &nothing_sent()).await, Admission::Refuse);
        assert!(run.refused());
    }

    #[tokio::test]
    async fn a_later_call_waits_for_a_call_under_way_and_is_bounded_by_what_it_read() {
        let haiku = haiku();
        let run = GateRun::new(Micros(1_000_000));
        let question = serde_json::json!({"role": "user", "content": "hi"});
        let shape = || Shape::of(&conversation(std::slice::from_ref(&question)));
        let first = run.admit(&call(&haiku, 50, 10), &shape()).await;
        assert_eq!(first, Admission::Pass { max_tokens: 10, worst: Micros(100) });
        // Made while the first is under way and none has finished, a call
        // has nothing to bound it by (its estimate of 50 could be beaten):
        // it waits.
        let (later_call, later_shape) = (call(&haiku, 50, 10), shape());
        let later = run.admit(&later_call, &later_shape);
        tokio::pin!(later);
        assert!(futures::future::poll_immediate(later.as_mut()).await.is_none());
        // The first read 5,000 tokens: the same input again is bounded by
        // that, far past the estimate.
        run.learn(shape(), 5_000);
        run.settle(Micros(100), Micros(5_050));
        assert_eq!(later.await, Admission::Pass { max_tokens: 10, worst: Micros(5_050) });
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_call_waits_only_so_long_then_counts_a_token_a_byte_of_all_it_sends() {
        let haiku = haiku();
        let run = GateRun::new(Micros(1_000_000));
        let sent = conversation(&[serde_json::json!({"role": "user", "content": "hi"})]);
        let shape = || Shape::of(&sent);
        assert!(matches!(run.admit(&call(&haiku, 50, 10), &shape()).await, Admission::Pass { .. }));
        // The first never ends: the later call goes after BOUND_WAIT (the
        // paused clock moves on by itself), at a token a byte.
        let started = tokio::time::Instant::now();
        let later = run.admit(&call(&haiku, 50, 10), &shape()).await;
        assert_eq!(started.elapsed(), BOUND_WAIT);
        let parts = whole_call_bytes(&sent);
        assert_eq!(later, Admission::Pass { max_tokens: 10, worst: Micros(parts as i64 + 50) });
    }

    #[tokio::test]
    async fn with_no_call_finished_or_under_way_a_later_call_counts_a_token_a_byte_of_all_it_sends() {
        let haiku = haiku();
        let run = GateRun::new(Micros(1_000_000));
        let sent = conversation(&[serde_json::json!({"role": "user", "content": "{};".repeat(1_000)})]);
        let shape = || Shape::of(&sent);
        let Admission::Pass { worst, .. } = run.admit(&call(&haiku, 50, 10), &shape()).await else {
            panic!("the first call goes as asked")
        };
        // It failed: nothing billed, nothing learnt.
        run.settle(worst, Micros::ZERO);
        let parts = whole_call_bytes(&sent);
        assert_eq!(
            run.admit(&call(&haiku, 50, 10), &shape()).await,
            Admission::Pass { max_tokens: 10, worst: Micros(parts as i64 + 50) }
        );
    }

    /// The bytes of a call's system prompt, tools and messages as JSON: a
    /// token each when nothing bounds the call.
    fn whole_call_bytes(call: &Value) -> usize {
        let messages: usize = call["messages"].as_array().unwrap().iter().map(|m| m.to_string().len()).sum();
        call["system"].to_string().len() + call["tools"].to_string().len() + messages
    }

    fn conversation(messages: &[Value]) -> Value {
        serde_json::json!({"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "You are Claude Code."}],
            "tools": [{"name": "Read", "input_schema": {"type": "object"}}], "messages": messages})
    }

    #[test]
    fn a_later_call_is_bounded_by_what_an_earlier_one_read_plus_a_token_a_byte_of_what_is_new() {
        let question = serde_json::json!({"role": "user", "content": "read notes.txt"});
        let answer = serde_json::json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "notes.txt"}}]});
        let result = serde_json::json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "{};".repeat(1_000)}]});
        let first = Shape::of(&conversation(std::slice::from_ref(&question)));
        let known = Known { shape: first, input_tokens: 700 };
        let later = Shape::of(&conversation(&[question.clone(), answer.clone(), result.clone()]));
        let new = (answer.to_string().len() + result.to_string().len()) as u64;
        assert_eq!(later.bound_after(&known), 700 + new);
        // A dense tool result beats the estimate of the whole call, not this.
        assert!(new > 3_000 && token_estimate_of_len(result.to_string().len()) < 3_000);

        // A changed system prompt counts whole; so does a message whose JSON
        // changed at all (a cache marker moved onto it), and all after it.
        let mut changed = conversation(&[question.clone(), answer.clone(), result.clone()]);
        changed["system"][0]["text"] = "You are someone else.".into();
        let system = changed["system"].to_string().len() as u64;
        assert_eq!(Shape::of(&changed).bound_after(&known), 700 + new + system);
        let mut marked = question.clone();
        marked["cache_control"] = serde_json::json!({"type": "ephemeral"});
        let moved = Shape::of(&conversation(&[marked.clone(), answer]));
        let tokens = moved.bound_after(&known) - 700;
        assert_eq!(tokens, (marked.to_string().len() + moved.messages[1].json.len()) as u64);
    }

    #[test]
    fn an_image_in_a_new_message_counts_as_image_tokens() {
        let known = Known { shape: Shape::of(&conversation(&[])), input_tokens: 100 };
        let image = serde_json::json!({"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(100_000)}}]});
        let bound = Shape::of(&conversation(std::slice::from_ref(&image))).bound_after(&known);
        assert_eq!(bound, 100 + (image.to_string().len() - 100_000) as u64 + IMAGE_TOKENS);
    }

    #[tokio::test]
    async fn a_run_bounds_later_calls_by_the_least_over_its_finished_ones() {
        let haiku = haiku();
        let run = GateRun::new(Micros(1_000_000));
        let question = serde_json::json!({"role": "user", "content": "hi"});
        let shape = Shape::of(&conversation(std::slice::from_ref(&question)));
        assert_eq!(
            run.admit(&call(&haiku, 50, 10), &shape).await,
            Admission::Pass { max_tokens: 10, worst: Micros(100) }
        );
        run.learn(shape, 5_000);
        run.settle(Micros(100), Micros(5_050));
        // Now the same call is priced from what the first one read: 5,000
        // tokens, far past the estimate of 50.
        let again = Shape::of(&conversation(std::slice::from_ref(&question)));
        assert_eq!(
            run.admit(&call(&haiku, 50, 10), &again).await,
            Admission::Pass { max_tokens: 10, worst: Micros(5_050) }
        );
        // The least bound over the calls kept: an unrelated finished call
        // does not raise it.
        run.learn(Shape::of(&conversation(&[])), 1_000_000);
        assert_eq!(
            run.admit(&call(&haiku, 50, 10), &again).await,
            Admission::Pass { max_tokens: 10, worst: Micros(5_050) }
        );
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
        let bound = input_estimate(&call, len);
        assert_eq!(bound, token_estimate_of_len(len - 1_000_000) + IMAGE_TOKENS);
        let text =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(1000)}]});
        let len = text.to_string().len();
        assert_eq!(input_estimate(&text, len), token_estimate_of_len(len));
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
