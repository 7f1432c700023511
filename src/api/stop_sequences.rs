//! Anthropic's `stop_sequences`, applied by the gateway: the CLI backend
//! cannot stop the model on them, so the answer is cut at the first one
//! (which is not included), as the API would. The run itself goes on to its
//! end and is billed in full.

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
