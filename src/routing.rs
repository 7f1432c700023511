//! `"model": "auto"`: the gateway's side of the router. It turns the price
//! table into tiers, looks up the project's policy and remaining budget,
//! and maps the router's answer to a model or an API error. The scoring
//! itself lives in the `ccgate-router` crate (pure logic).

use ccgate_router::{Policy, RouteError, RouteRequest, Tier};

use crate::app::AppState;
use crate::chat::Message;
use crate::config::Backend;
use crate::error::ApiError;
use crate::money::Micros;
use crate::pricing::PriceTable;

pub use ccgate_router::Decision;

/// The tiers the router chooses among: every model of the price table,
/// under its CLI alias.
pub fn tiers(prices: &PriceTable) -> Vec<Tier> {
    prices
        .models()
        .iter()
        .map(|m| Tier {
            name: m.cli_name().to_string(),
            model: m.cli_name().to_string(),
            level: m.level,
            context_window: m.context_window,
            max_output: m.max_output_tokens,
            input_micro_usd_per_mtok: u64::try_from(m.input_per_mtok.0).unwrap_or(0),
            output_micro_usd_per_mtok: u64::try_from(m.output_per_mtok.0).unwrap_or(0),
        })
        .collect()
}

/// The output allowance the router assumed for a request without
/// `max_tokens`; an auto-routed run is capped at it so that its budget
/// reservation matches what the router checked.
pub fn output_allowance(state: &AppState, max_output: u64) -> u64 {
    state.settings.routing.default_output_tokens.min(max_output)
}

/// Picks a model for the project's request. A request that uses the
/// client's own tools can only run on the direct backend, so only the
/// models it serves are candidates.
pub async fn decide(
    state: &AppState,
    project_id: &str,
    messages: &[Message],
    max_tokens: Option<u64>,
    client_tools: bool,
) -> Result<Decision, ApiError> {
    let mut tiers = tiers(&state.prices);
    if client_tools {
        tiers.retain(|tier| {
            state
                .prices
                .resolve(&tier.model)
                .is_some_and(|m| state.settings.backend_for(&m.id, &m.aliases) == Backend::Api)
        });
        if tiers.is_empty() {
            return Err(ApiError::bad_request(
                "client-side tool calling (`tools`, `tool_calls`, `tool` messages) needs a model served by the \
                 direct backend, and none is (set backends = { haiku = \"api\", … } or default_backend = \"api\")",
                "tools",
            ));
        }
    }
    let headroom = state.budget.headroom(project_id).await?;
    let wire: Vec<ccgate_router::Message<'_>> = messages
        .iter()
        .map(|m| ccgate_router::Message {
            role: match m.role {
                crate::chat::Role::System => "system",
                crate::chat::Role::User => "user",
                crate::chat::Role::Assistant => "assistant",
            },
            text: &m.text,
        })
        .collect();
    let request = RouteRequest {
        messages: &wire,
        max_tokens,
        overhead_tokens: state.settings.prompt_overhead_tokens,
        remaining_budget_micro_usd: headroom.map(|(remaining, _)| to_u64(remaining)),
        budget_limit_micro_usd: headroom.map(|(_, limit)| to_u64(limit)),
    };
    let policy = state.settings.routing_policies.get(project_id).cloned().unwrap_or_else(Policy::default);
    ccgate_router::route(&request, &tiers, &policy, &state.settings.routing).map_err(|e| match e {
        RouteError::ContextLengthExceeded { needed, largest } => ApiError::BadRequest {
            message: format!(
                "this request needs about {needed} tokens, more than the largest context window ({largest})"
            ),
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
        },
        RouteError::InsufficientBudget { cheapest_micro_usd, remaining_micro_usd } => {
            ApiError::InsufficientQuota(format!(
                "project {project_id:?} cannot afford any model for this request: the cheapest may cost up to \
                 ${:.6} and ${:.6} remains",
                Micros(cheapest_micro_usd as i64).as_usd(),
                Micros(remaining_micro_usd as i64).as_usd()
            ))
        }
        RouteError::NoAllowedTier(why) => ApiError::bad_request(format!("no model is allowed: {why}"), "model"),
    })
}

fn to_u64(m: Micros) -> u64 {
    u64::try_from(m.0.max(0)).unwrap_or(0)
}
