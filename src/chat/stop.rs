//! Stop sequences (Anthropic's `stop_sequences`, OpenAI's `stop`), applied
//! by the gateway to every answer: the CLI backend cannot stop the model on
//! them, so the answer is cut at the first one (which is not included), as
//! the API would; the run itself goes on to its end and is billed in full.
//! The direct backend passes them to the API, which stops the model there,
//! so on that backend nothing is left for the gateway to cut.

use crate::chat::ToolCallDelta;
use crate::workers::RunReport;

/// Stop sequences over one run's events, in the order they come: text is
/// cut, and held back while it could still be the start of a sequence; once
/// one has matched the answer is over, so later text and tool calls are
/// dropped (the API would not have produced them).
#[derive(Debug, Default)]
pub struct AnswerCut {
    stop: StopSequences,
    /// Tool calls begun before any stop.
    calls: usize,
}

impl AnswerCut {
    pub fn new(sequences: &[String]) -> AnswerCut {
        AnswerCut { stop: StopSequences::new(sequences), calls: 0 }
    }

    /// The text to pass on now (maybe none).
    pub fn text(&mut self, text: &str) -> String {
        self.stop.push(text)
    }

    /// `None` when the answer has stopped and the piece is dropped; else
    /// the text held back that must go out before it (a call shows that
    /// the held text did not start a stop sequence).
    pub fn tool_call(&mut self, delta: &ToolCallDelta) -> Option<String> {
        if self.stop.matched().is_some() {
            return None;
        }
        if delta.id.is_none() {
            return Some(String::new());
        }
        self.calls += 1;
        Some(self.stop.finish())
    }

    /// The text still held back at the end, with the run's report cut as
    /// the answer was: its text, its tool calls, and a `stop_sequence` stop.
    pub fn finish(&mut self, report: &mut RunReport) -> String {
        let held = self.stop.finish();
        if let Some(sequence) = self.stop.matched() {
            // The report holds the whole text the pieces came from, and the
            // match was the earliest of any sequence in it: the first place
            // this one occurs.
            if let Some(at) = report.text.find(sequence) {
                report.text.truncate(at);
            }
            report.tool_calls.truncate(self.calls);
            report.stop_reason = Some("stop_sequence".into());
            report.stop_sequence = Some(sequence.to_string());
        }
        held
    }
}

/// Cuts streamed text at the first stop sequence, holding back only a tail
/// that could still turn out to start one.
#[derive(Debug, Default)]
pub struct StopSequences {
    sequences: Vec<String>,
    held: String,
    matched: Option<String>,
}

impl StopSequences {
    pub fn new(sequences: &[String]) -> StopSequences {
        StopSequences {
            sequences: sequences.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..StopSequences::default()
        }
    }

    /// Takes the next piece of text and returns what may be sent now:
    /// nothing once a stop sequence has been seen.
    pub fn push(&mut self, text: &str) -> String {
        if self.matched.is_some() {
            return String::new();
        }
        self.held.push_str(text);
        let earliest = self
            .sequences
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, sequence)) = earliest {
            self.matched = Some(sequence.clone());
            let mut sent = std::mem::take(&mut self.held);
            sent.truncate(at);
            return sent;
        }
        // A match not yet complete must start in the longest tail that is
        // the beginning of some sequence; everything before it is safe.
        let keep = self.sequences.iter().map(|s| tail_overlap(&self.held, s)).max().unwrap_or(0);
        let sent = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        sent
    }

    /// The text still held back, at the end of the answer.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The stop sequence the answer was cut at, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// A whole answer, cut.
    pub fn cut(&mut self, text: &str) -> String {
        let mut sent = self.push(text);
        sent.push_str(&self.finish());
        sent
    }
}

/// Length of the longest end of `text` that is a proper beginning of `sequence`.
fn tail_overlap(text: &str, sequence: &str) -> usize {
    (1..sequence.len())
        .rev()
        .filter(|&k| sequence.is_char_boundary(k))
        .find(|&k| text.ends_with(&sequence[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ToolCall;
    use crate::workers::RunEnd;

    fn call(id: Option<&str>) -> ToolCallDelta {
        ToolCallDelta {
            index: 0,
            id: id.map(String::from),
            name: id.map(|_| "f".into()),
            arguments: "{}".into(),
        }
    }

    #[test]
    fn held_text_goes_out_before_a_call_and_a_matched_stop_ends_the_answer() {
        // "Let me" might start the stop sequence: held until the call shows it did not.
        let mut cut = AnswerCut::new(&["Let me stop".into()]);
        assert_eq!(cut.text("Sure. Let me"), "Sure. ");
        assert_eq!(cut.tool_call(&call(Some("t1"))).as_deref(), Some("Let me"));
        assert_eq!(cut.tool_call(&call(None)).as_deref(), Some(""));

        let mut cut = AnswerCut::new(&["STOP".into()]);
        assert_eq!(cut.tool_call(&call(Some("t1"))).as_deref(), Some(""));
        assert_eq!(cut.text("done STOP and more"), "done ");
        assert_eq!(cut.text("after"), "");
        assert_eq!(cut.tool_call(&call(Some("t2"))), None, "no call after the stop");
        let mut report = RunReport::new(RunEnd::Completed);
        report.text = "done STOP and moreafter".into();
        report.stop_reason = Some("end_turn".into());
        let made = |id: &str| ToolCall { id: id.into(), name: "f".into(), arguments: "{}".into() };
        report.tool_calls = vec![made("t1"), made("t2")];
        assert_eq!(cut.finish(&mut report), "");
        assert_eq!(report.text, "done ");
        assert_eq!(report.tool_calls, vec![made("t1")]);
        assert_eq!(report.stop_reason.as_deref(), Some("stop_sequence"));
        assert_eq!(report.stop_sequence.as_deref(), Some("STOP"));
    }

    #[test]
    fn without_a_match_the_report_is_left_alone() {
        let mut cut = AnswerCut::new(&["END".into()]);
        assert_eq!(cut.text("almost E"), "almost ");
        let mut report = RunReport::new(RunEnd::Completed);
        report.text = "almost E".into();
        report.stop_reason = Some("end_turn".into());
        assert_eq!(cut.finish(&mut report), "E");
        assert_eq!((report.text.as_str(), report.stop_reason.as_deref()), ("almost E", Some("end_turn")));
        assert_eq!(report.stop_sequence, None);
    }

    fn sequences(list: &[&str]) -> StopSequences {
        StopSequences::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Stop sequences, pieces of text, the text sent, the sequence matched.
    type Case = (&'static [&'static str], &'static [&'static str], &'static str, Option<&'static str>);

    #[test]
    fn streamed_text_is_cut_at_the_earliest_sequence_wherever_the_pieces_split() {
        let cases: [Case; 7] = [
            (&[], &["a b", " c"], "a b c", None),
            (&["END"], &["one two ", "three"], "one two three", None),
            (&["END"], &["one E", "N", "D two"], "one ", Some("END")),
            (&["END"], &["one EN", "X two"], "one ENX two", None),
            (&["\n\nHuman:", "two"], &["one\n\nHu", "man: two"], "one", Some("\n\nHuman:")),
            (&["é!", "b"], &["aé", "!", "b"], "a", Some("é!")),
            (&["", "x"], &["ab", "cx", "d"], "abc", Some("x")),
        ];
        for (list, pieces, sent, matched) in cases {
            let mut stop = sequences(list);
            let mut out = String::new();
            for piece in pieces {
                out.push_str(&stop.push(piece));
            }
            out.push_str(&stop.finish());
            assert_eq!((out.as_str(), stop.matched()), (sent, matched), "{list:?} {pieces:?}");
            assert_eq!(sequences(list).cut(&pieces.concat()), sent, "whole text: {list:?}");
        }
    }

    #[test]
    fn text_that_may_start_a_sequence_is_held_only_until_it_cannot() {
        let mut stop = sequences(&["STOP"]);
        assert_eq!(stop.push("go ST"), "go ");
        assert_eq!(stop.push("O"), "");
        assert_eq!(stop.push("RE now, S"), "STORE now, ");
        assert_eq!(stop.finish(), "S");
        assert_eq!(stop.matched(), None);
    }
}
