//! Fits the signal weights and tier thresholds on the tuning split (never the
//! held-out third) of a labelled JSONL file, and prints them as Rust.
//!
//!     cargo run -p ccgate-router --example fit_weights -- tests/data/route_eval.jsonl
//!
//! Logistic regression (batch gradient descent, L2 penalty) on the binary
//! target "label >= sonnet", then thresholds chosen to maximise exact-tier
//! accuracy on the same split, counting an under-routed prompt as a worse
//! mistake than an over-routed one.

use ccgate_router::eval::held_out_split;
use ccgate_router::{apgr, complexity, level_of_name, parse_eval_jsonl, Message, RouterConfig, SIGNAL_NAMES};

const L2: f64 = 0.02;
const STEPS: usize = 20_000;
const LEARNING_RATE: f64 = 0.5;
/// An under-routed prompt costs this many over-routed ones.
const UNDER_ROUTE_PENALTY: f64 = 1.5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "tests/data/route_eval.jsonl".to_owned());
    let items = parse_eval_jsonl(&std::fs::read_to_string(&path)?)?;
    let (tune, _held_out) = held_out_split(&items);
    let cfg = RouterConfig::default();
    let rows: Vec<(Vec<f64>, u8)> = tune
        .iter()
        .map(|item| {
            let messages = [Message { role: "user", text: &item.prompt }];
            let values = complexity(&messages, &cfg).signals.iter().map(|s| s.value).collect();
            (values, level_of_name(&item.tier).unwrap_or(0))
        })
        .collect();
    let dims = SIGNAL_NAMES.len();
    let (mut w, mut bias) = (vec![0.0; dims], 0.0);
    let n = rows.len() as f64;
    for _ in 0..STEPS {
        let (mut grad, mut grad_bias) = (vec![0.0; dims], 0.0);
        for (x, label) in &rows {
            let p = predict(&w, bias, x);
            let err = p - target(*label);
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += err * xi;
            }
            grad_bias += err;
        }
        for (wi, g) in w.iter_mut().zip(&grad) {
            *wi -= LEARNING_RATE * (g / n + L2 * *wi);
        }
        bias -= LEARNING_RATE * grad_bias / n;
    }
    let scores: Vec<f64> = rows.iter().map(|(x, _)| predict(&w, bias, x)).collect();
    let labels: Vec<u8> = rows.iter().map(|(_, l)| *l).collect();
    let strong: Vec<bool> = labels.iter().map(|&l| l >= 1).collect();
    println!("tuning split: {} prompts, APGR {:.3}", rows.len(), apgr(&scores, &strong));
    println!("bias: {bias:.2},");
    for (name, wi) in SIGNAL_NAMES.iter().zip(&w) {
        println!("{name}: {wi:.2},");
    }
    let (sonnet, opus, acc) = best_thresholds(&scores, &labels);
    println!("thresholds: sonnet {sonnet:.2}, opus {opus:.2} (tuning accuracy {:.1}%)", acc * 100.0);
    Ok(())
}

/// The binary target "needs more than haiku", or with `FIT_TARGET=ordinal`
/// a soft target that also orders sonnet below opus.
fn target(label: u8) -> f64 {
    if std::env::var("FIT_TARGET").is_ok_and(|t| t == "ordinal") {
        [0.0, 0.6, 1.0, 1.0][usize::from(label.min(3))]
    } else {
        f64::from(u8::from(label >= 1))
    }
}

fn predict(w: &[f64], bias: f64, x: &[f64]) -> f64 {
    let z: f64 = bias + w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
    1.0 / (1.0 + (-z).exp())
}

/// Grid search over cut points on a 0.01 grid; returns (sonnet, opus, accuracy).
fn best_thresholds(scores: &[f64], labels: &[u8]) -> (f64, f64, f64) {
    let mut best = (0.5, 0.8, f64::MAX, 0.0);
    for a in 1..100 {
        for b in a..100 {
            let (t1, t2) = (f64::from(a) / 100.0, f64::from(b) / 100.0);
            let (mut loss, mut correct) = (0.0, 0usize);
            for (&s, &l) in scores.iter().zip(labels) {
                let chosen = u8::from(s >= t1) + u8::from(s >= t2);
                let l = l.min(2);
                loss += match chosen.cmp(&l) {
                    std::cmp::Ordering::Less => UNDER_ROUTE_PENALTY,
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.0,
                };
                correct += usize::from(chosen == l);
            }
            if loss < best.2 {
                best = (t1, t2, loss, correct as f64 / scores.len() as f64);
            }
        }
    }
    (best.0, best.1, best.3)
}
