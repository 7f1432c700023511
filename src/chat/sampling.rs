//! How the model samples and where it stops, as the client asked. The
//! direct backend passes all of it to the API; the CLI chooses its own
//! sampling, so there only the stop sequences apply, cut by the gateway
//! (`chat::stop`), which also catches any the upstream let through.

/// Sampling settings and stop sequences of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// 0 to 1, Anthropic's range.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    /// The answer ends before the first of these.
    pub stop: Vec<String>,
}

impl Sampling {
    /// Checks the ranges the Messages API accepts, naming the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(t) = self.temperature.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(("temperature", format!("temperature must be between 0 and 1, not {t}")));
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(("top_p", format!("top_p must be greater than 0 and at most 1, not {p}")));
        }
        if self.top_k == Some(0) {
            return Err(("top_k", "top_k must be at least 1".into()));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(("stop_sequences", "stop sequences must not be empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_those_of_the_messages_api() {
        let ok =
            Sampling { temperature: Some(0.0), top_p: Some(1.0), top_k: Some(40), stop: vec!["x".into()] };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(Sampling { temperature: Some(1.0), ..Sampling::default() }.check(), Ok(()));
        let bad = [
            (Sampling { temperature: Some(1.5), ..Sampling::default() }, "temperature"),
            (Sampling { temperature: Some(-0.1), ..Sampling::default() }, "temperature"),
            (Sampling { temperature: Some(f64::NAN), ..Sampling::default() }, "temperature"),
            (Sampling { top_p: Some(0.0), ..Sampling::default() }, "top_p"),
            (Sampling { top_p: Some(1.2), ..Sampling::default() }, "top_p"),
            (Sampling { top_k: Some(0), ..Sampling::default() }, "top_k"),
            (Sampling { stop: vec![String::new()], ..Sampling::default() }, "stop_sequences"),
        ];
        for (sampling, field) in bad {
            assert_eq!(sampling.check().map_err(|e| e.0), Err(field), "{sampling:?}");
        }
    }
}
