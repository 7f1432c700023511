use super::*;
use crate::default_tiers;

#[test]
fn apgr_matches_hand_computed_curves() {
    // Curve points at x = 0, ¼, ½, ¾, 1 with two of four prompts needing strong.
    let cases: [(&str, [f64; 4], [bool; 4], f64); 5] = [
        ("perfect: 0, ½, 1, 1, 1", [0.9, 0.8, 0.3, 0.1], [true, true, false, false], 0.75),
        ("one swap: 0, ½, ½, 1, 1", [0.9, 0.8, 0.3, 0.1], [true, false, true, false], 0.625),
        ("reversed: 0, 0, 0, ½, 1", [0.9, 0.8, 0.3, 0.1], [false, false, true, true], 0.25),
        ("all tied: a straight line", [0.5; 4], [true, false, true, false], 0.5),
        ("tied top pair: 0, (½ at x = ½), 1, 1", [0.9, 0.9, 0.1, 0.0], [true, false, true, false], 0.5625),
    ];
    for (name, scores, labels, want) in cases {
        let got = apgr(&scores, &labels);
        assert!((got - want).abs() < 1e-12, "{name}: {got}");
    }
}

#[test]
fn apgr_is_neutral_without_anything_to_rank() {
    assert!((apgr(&[], &[]) - 0.5).abs() < f64::EPSILON);
    assert!((apgr(&[0.1, 0.2], &[false, false]) - 0.5).abs() < f64::EPSILON);
}

#[test]
fn parse_reports_the_bad_line() {
    let ok = "{\"prompt\":\"hi\",\"tier\":\"haiku\"}\n\n{\"prompt\":\"prove it\",\"tier\":\"opus\"}\n";
    assert_eq!(parse_eval_jsonl(ok).map(|v| v.len()), Ok(2));
    let bad_tier = "{\"prompt\":\"hi\",\"tier\":\"haiku\"}\n{\"prompt\":\"x\",\"tier\":\"gpt\"}";
    assert!(parse_eval_jsonl(bad_tier).is_err_and(|e| e.starts_with("line 2")));
    assert!(parse_eval_jsonl("not json").is_err_and(|e| e.starts_with("line 1")));
}

#[test]
fn split_holds_out_every_third_item() {
    let items: Vec<EvalItem> =
        (0..7).map(|i| EvalItem { prompt: format!("p{i}"), tier: "haiku".into() }).collect();
    let (tune, held) = held_out_split(&items);
    let names = |v: &[EvalItem]| v.iter().map(|i| i.prompt.clone()).collect::<Vec<_>>();
    assert_eq!(names(&held), ["p2", "p5"]);
    assert_eq!(names(&tune), ["p0", "p1", "p3", "p4", "p6"]);
}

#[test]
fn report_counts_every_prompt_once() {
    let items = vec![
        EvalItem { prompt: "What is 2 + 2?".into(), tier: "haiku".into() },
        EvalItem {
            prompt: "Implement a lock-free MPMC queue in Rust with atomics, explain every memory ordering, \
                     and write loom tests covering wrap-around and concurrent producers."
                .into(),
            tier: "opus".into(),
        },
    ];
    let report = evaluate(&items, &default_tiers(), &RouterConfig::default());
    let counted: usize = report.confusion.iter().flatten().sum();
    assert_eq!(counted + report.refused, items.len());
    assert!(report.always_cost_micro_usd.iter().any(|(n, _)| n == "haiku"));
    assert!(!report.always_cost_micro_usd.iter().any(|(n, _)| n == "sonnet[1m]"));
    let text = report.to_string();
    assert!(text.contains("APGR") && text.contains("confusion"), "{text}");
}
