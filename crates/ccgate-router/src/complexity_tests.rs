use super::*;

fn score_of(text: &str) -> f64 {
    complexity(&[Message { role: "user", text }], &RouterConfig::default()).score
}

#[test]
fn simple_lookups_score_below_the_sonnet_cut() {
    let cut = RouterConfig::default().thresholds.sonnet;
    for text in [
        "What is the tallest mountain in Africa?",
        "who painted the mona lisa",
        "Translate 'good morning' into Italian.",
        "How many grams in a pound?",
        "Define entropy in one sentence.",
    ] {
        let s = score_of(text);
        assert!(s < cut, "{text}: {s:.2}");
    }
}

#[test]
fn hard_multi_step_work_scores_above_the_opus_cut() {
    let cut = RouterConfig::default().thresholds.opus;
    for text in [
        "Implement a distributed rate limiter in Go backed by Redis that stays correct under network partitions, \
         handles clock skew between nodes, and include a Jepsen-style test plan.",
        "Design a multi-region event sourcing architecture for our payments platform: exactly-once processing, \
         schema evolution, replay without double charging, and a migration plan from the current monolith.",
        "Prove that every finite integral domain is a field, then show the result fails for infinite rings \
         with a counterexample, and formalize the first part in Lean 4.",
    ] {
        let s = score_of(text);
        assert!(s >= cut, "{text}: {s:.2}");
    }
}

#[test]
fn contributions_add_up_to_the_score() {
    let cfg = RouterConfig::default();
    let cx = complexity(&[Message { role: "user", text: "Refactor this module and add tests." }], &cfg);
    let names: Vec<&str> = cx.signals.iter().map(|s| s.name).collect();
    assert_eq!(names, SIGNAL_NAMES);
    let logit: f64 = cfg.weights.bias + cx.signals.iter().map(|s| s.contribution).sum::<f64>();
    assert!((cx.score - 1.0 / (1.0 + (-logit).exp())).abs() < 1e-12);
    assert!(cx.signals.iter().all(|s| (0.0..=1.0).contains(&s.value)), "{:?}", cx.signals);
}

#[test]
fn every_signal_has_a_weight_field_of_the_same_name() {
    // Setting each named weight through serde proves the names match the fields.
    let mut zero: serde_json::Map<String, serde_json::Value> =
        SIGNAL_NAMES.iter().map(|n| ((*n).to_owned(), serde_json::json!(0.0))).collect();
    zero.insert("bias".to_owned(), serde_json::json!(0.0));
    let weights: Weights = serde_json::from_value(serde_json::Value::Object(zero)).expect("weights parse");
    let cfg = RouterConfig { weights, ..RouterConfig::default() };
    let cx = complexity(&[Message { role: "user", text: "Implement a compiler in Rust, with tests." }], &cfg);
    assert!((cx.score - 0.5).abs() < 1e-12, "a weight was not zeroed: {:?}", cx.signals);
}

#[test]
fn a_terse_follow_up_inherits_the_earlier_task() {
    let cfg = RouterConfig::default();
    let alone = complexity(&[Message { role: "user", text: "yes, go ahead" }], &cfg).score;
    let thread = [
        Message {
            role: "user",
            text: "Design a sharded job scheduler with exactly-once execution, leader failover and backpressure.",
        },
        Message { role: "assistant", text: "Here is a plan: … Shall I write the code?" },
        Message { role: "user", text: "yes, go ahead" },
    ];
    let followed = complexity(&thread, &cfg).score;
    assert!(followed > alone + 0.2, "{alone:.2} vs {followed:.2}");
}

#[test]
fn long_pastes_with_an_easy_ask_stay_cheap() {
    let article = "The city council met on Tuesday to discuss the new budget. ".repeat(200);
    let s = score_of(&format!("Summarize this in two sentences:\n\n{article}"));
    assert!(s < RouterConfig::default().thresholds.opus, "{s:.2}");
}
