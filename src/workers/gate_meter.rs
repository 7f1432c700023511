//! Reading what a call through the spend gate cost, from its answer as it
//! passes to the worker: the usage of a stream's `message_start` and
//! `message_delta` events, or of a whole message. A call that ends without
//! its usage (cut off, or the worker gone) is counted at its worst case.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::gate_run::Admitted;
use super::messages_sse::{data_of, parse_data, SseLines, StreamEvent, WholeMessage};
use crate::pricing::TokenUsage;

/// A whole message larger than this is not kept to be read: its call is
/// counted at its worst case.
const MAX_WHOLE_BYTES: usize = 16 * 1024 * 1024;

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The answer's bytes, passed on unchanged, with the usage read from them.
pub(super) struct Meter {
    upstream: Upstream,
    /// A whole (JSON) message, kept until its end; `None` for a stream.
    whole: Option<Vec<u8>>,
    lines: SseLines,
    usage: TokenUsage,
    /// Whether the usage is complete: `message_stop`, or the whole message read.
    complete: bool,
    /// Settled once, at the end or when dropped.
    books: Option<Admitted>,
}

impl Meter {
    pub(super) fn new(
        upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
        json: bool,
        admitted: Admitted,
    ) -> Meter {
        Meter {
            upstream: Box::pin(upstream),
            whole: json.then(Vec::new),
            lines: SseLines::default(),
            usage: TokenUsage::default(),
            complete: false,
            books: Some(admitted),
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        if let Some(whole) = &mut self.whole {
            if whole.len() + bytes.len() <= MAX_WHOLE_BYTES {
                whole.extend_from_slice(bytes);
            } else {
                self.whole = None;
                self.books_at_worst();
            }
            return;
        }
        self.lines.push(bytes);
        while let Some(line) = self.lines.next_line() {
            // Only the events that carry usage are parsed: text deltas,
            // most of a stream, pass by unread.
            let Some(data) = data_of(&line) else { continue };
            if !data.contains("\"message_") {
                continue;
            }
            match parse_data(data) {
                Some(StreamEvent::MessageStart { message }) => {
                    if let Some(usage) = message.usage {
                        usage.apply_to(&mut self.usage);
                    }
                }
                Some(StreamEvent::MessageDelta { usage: Some(usage), .. }) => usage.apply_to(&mut self.usage),
                Some(StreamEvent::MessageStop) => self.complete = true,
                _ => {}
            }
        }
    }

    /// The answer has ended: a whole message is read now.
    fn end(&mut self) {
        if let Some(whole) = self.whole.take() {
            if let Ok(message) = serde_json::from_slice::<WholeMessage>(&whole) {
                if let Some(usage) = message.usage {
                    usage.apply_to(&mut self.usage);
                    self.complete = true;
                }
            }
        }
        self.settle();
    }

    /// Counts the call at what its usage says, or at its worst case when
    /// the usage is not all there. A call whose usage was read bounds the
    /// run's later calls (`Shape`).
    fn settle(&mut self) {
        let Some(Admitted { run, model, worst, shape }) = self.books.take() else { return };
        if !self.complete {
            run.settle(worst, worst);
            return;
        }
        let usage = &self.usage;
        run.learn(shape, usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens);
        run.settle(worst, model.cost(usage));
    }

    fn books_at_worst(&mut self) {
        self.complete = false;
        self.settle();
    }
}

impl Stream for Meter {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.upstream.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(bytes))) => {
                let bytes = bytes.clone();
                self.read(&bytes);
            }
            Poll::Ready(Some(Err(_))) => self.books_at_worst(),
            Poll::Ready(None) => self.end(),
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // The worker went away before the end: what the call used is not
        // known, and may be all of it.
        if self.books.is_some() {
            self.books_at_worst();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use std::sync::Arc;

    use super::*;
    use crate::money::Micros;
    use crate::pricing::{Model, PriceTable};
    use crate::workers::gate_run::{Admission, Call, GateRun, InputRate, Shape};

    fn haiku() -> Model {
        PriceTable::builtin().resolve("haiku").expect("haiku").clone()
    }

    fn chunks(parts: &[&str]) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
        let parts: Vec<reqwest::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from(p.to_string()))).collect();
        futures::stream::iter(parts)
    }

    fn run(limit: i64) -> Arc<GateRun> {
        Arc::new(GateRun::new(Micros(limit)))
    }

    /// A call of `run` admitted at haiku's prices with a worst case of 5,000 µ$.
    fn admitted(run: &Arc<GateRun>) -> Admitted {
        run.hold_for_tests(Micros(5_000));
        Admitted { run: Arc::clone(run), model: haiku(), worst: Micros(5_000), shape: sent() }
    }

    fn sent() -> Shape {
        Shape::of(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    }

    /// The worst case, at haiku's prices, of a call that sends what `sent`
    /// did, with a one-token estimate and 10 tokens of output.
    async fn worst_of_the_same_again(run: &GateRun) -> Micros {
        let haiku = haiku();
        let call = Call { model: &haiku, input_tokens: 1, rate: InputRate::Plain, max_tokens: 10 };
        match run.admit(&call, &sent()).await {
            Admission::Pass { worst, .. } => worst,
            Admission::Refuse => panic!("refused"),
        }
    }

    const STREAM: &[&str] = &[
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,",
        "\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,",
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":20}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];

    #[tokio::test]
    async fn a_stream_is_passed_on_unchanged_and_counted_at_its_usage() {
        let run = run(1_000_000);
        let meter = Meter::new(chunks(STREAM), false, admitted(&run));
        let passed: Vec<Bytes> = meter.map(|b| b.unwrap()).collect().await;
        assert_eq!(passed.concat(), STREAM.concat().into_bytes());
        // 100 input tokens at $1/M and 20 output at $5/M.
        assert_eq!(run.spent(), Micros(100 + 100));
        assert_eq!(run.held_for_tests(), Micros(0));
        // The same call again is bounded by the 100 input tokens this one
        // read, not by its one-token estimate.
        assert_eq!(worst_of_the_same_again(&run).await, Micros(100 + 10 * 5));
    }

    #[tokio::test]
    async fn a_stream_cut_off_is_counted_at_its_worst() {
        let run = run(1_000_000);
        let mut meter = Meter::new(chunks(&STREAM[..3]), false, admitted(&run));
        // The worker reads two chunks and goes away.
        meter.next().await;
        meter.next().await;
        drop(meter);
        assert_eq!(run.spent(), Micros(5_000));
        assert_eq!(run.held_for_tests(), Micros(0));
        // Its usage was not all read: nothing to bound a later call by but
        // a token per byte of all it sends.
        let sent = r#"{"role":"user","content":"hi"}"#.len() as i64;
        assert_eq!(worst_of_the_same_again(&run).await, Micros(sent + 10 * 5));
    }

    #[tokio::test]
    async fn a_whole_message_is_counted_at_its_usage() {
        let run = run(1_000_000);
        let whole = r#"{"type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,"output_tokens":2}}"#;
        let (a, b) = whole.split_at(20);
        let meter = Meter::new(chunks(&[a, b]), true, admitted(&run));
        let passed: Vec<Bytes> = meter.map(|b| b.unwrap()).collect().await;
        assert_eq!(passed.concat(), whole.as_bytes());
        assert_eq!(run.spent(), Micros(10 + 10));
        assert_eq!(worst_of_the_same_again(&run).await, Micros(10 + 10 * 5));
    }
}
