//! Prints the evaluation report for a labelled JSONL file.
//!
//!     cargo run -p ccgate-router --example route_eval -- tests/data/route_eval.jsonl [--split held-out|tune|all] [--list]
//!
//! Without `--split` it prints the held-out split and then the whole set.
//! `--list` also prints every prompt of the split with its score, label and choice.

use ccgate_router::eval::held_out_split;
use ccgate_router::{
    default_tiers, evaluate, parse_eval_jsonl, route, EvalItem, Message, Policy, RouteRequest, RouterConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "tests/data/route_eval.jsonl".into());
    let split = args.iter().position(|a| a == "--split").and_then(|i| args.get(i + 1)).cloned();
    let list = args.iter().any(|a| a == "--list");
    let items = parse_eval_jsonl(&std::fs::read_to_string(&path)?)?;
    let (tune, held_out) = held_out_split(&items);
    let tiers = default_tiers();
    let cfg = RouterConfig::default();
    let sets: Vec<(&str, &[EvalItem])> = match split.as_deref() {
        Some("tune") => vec![("tuning split (two thirds)", &tune)],
        Some("held-out") => vec![("held-out split (every third line)", &held_out)],
        Some("all") => vec![("all prompts", &items)],
        Some(other) => return Err(format!("unknown split {other:?}").into()),
        None => vec![("held-out split (every third line)", &held_out), ("all prompts", &items)],
    };
    for (name, set) in sets {
        println!("== {name}");
        println!("{}\n", evaluate(set, &tiers, &cfg));
        if list {
            print_rows(set, &cfg);
        }
    }
    Ok(())
}

fn print_rows(items: &[EvalItem], cfg: &RouterConfig) {
    let tiers = default_tiers();
    for item in items {
        let messages = [Message { role: "user", text: &item.prompt }];
        let req = RouteRequest {
            messages: &messages,
            max_tokens: None,
            overhead_tokens: 0,
            remaining_budget_micro_usd: None,
            budget_limit_micro_usd: None,
        };
        let Ok(d) = route(&req, &tiers, &Policy::default(), cfg) else { continue };
        let mark = if d.tier.starts_with(item.tier.as_str()) { " " } else { "*" };
        let head: String = item.prompt.chars().take(90).collect::<String>().replace('\n', " ");
        println!("{mark} {:.2} {:<6} → {:<10} {head}", d.complexity_score, item.tier, d.tier);
        println!("      {}", d.reasons[1]);
    }
}
