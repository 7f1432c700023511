//! Measures `estimate_tokens` against reference counts from the only public
//! Claude tokenizer (shipped with the Anthropic Python SDK up to 0.38) for
//! every prompt of the evaluation set.
//!
//!     cargo test -p ccgate-router --test token_estimate -- --nocapture

use ccgate_router::{estimate_tokens, parse_eval_jsonl};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    line: usize,
    reference_tokens: u64,
}

#[test]
fn estimate_tracks_the_reference_tokenizer() {
    let root = env!("CARGO_MANIFEST_DIR");
    let prompts =
        std::fs::read_to_string(format!("{root}/../../tests/data/route_eval.jsonl")).expect("eval set");
    let prompts = parse_eval_jsonl(&prompts).expect("eval set parses");
    let refs =
        std::fs::read_to_string(format!("{root}/tests/data/token_reference.jsonl")).expect("references");
    let refs: Vec<Reference> =
        refs.lines().map(|l| serde_json::from_str(l).expect("reference line")).collect();
    assert_eq!(refs.len(), prompts.len(), "one reference per prompt");

    let (mut ours, mut quarter, mut reference) = (Vec::new(), Vec::new(), 0u64);
    for r in &refs {
        let text = &prompts[r.line - 1].prompt;
        let truth = r.reference_tokens as f64;
        ours.push((estimate_tokens(text) as f64 - truth).abs() / truth);
        quarter.push((text.chars().count() as f64 / 4.0 - truth).abs() / truth);
        reference += r.reference_tokens;
    }
    let total: u64 = prompts.iter().map(|p| estimate_tokens(&p.prompt)).sum();
    let summary = |errors: &mut Vec<f64>| {
        errors.sort_by(f64::total_cmp);
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        (mean, errors[errors.len() / 2], errors[errors.len() * 9 / 10])
    };
    let (mean, median, p90) = summary(&mut ours);
    let (q_mean, q_median, q_p90) = summary(&mut quarter);
    println!("{} prompts, {reference} reference tokens, estimate total {total}", refs.len());
    println!(
        "estimate_tokens: mean abs error {:.1}%, median {:.1}%, p90 {:.1}%",
        mean * 100.0,
        median * 100.0,
        p90 * 100.0
    );
    println!(
        "chars / 4:       mean abs error {:.1}%, median {:.1}%, p90 {:.1}%",
        q_mean * 100.0,
        q_median * 100.0,
        q_p90 * 100.0
    );

    assert!(mean < 0.10, "mean error {mean:.3}");
    assert!(mean < q_mean, "should beat chars/4");
    let ratio = total as f64 / reference as f64;
    assert!((0.9..1.1).contains(&ratio), "total ratio {ratio:.3}");
}
