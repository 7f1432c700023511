//! What a request will run: the model (named, or chosen by the router for
//! `auto`), whether its backend can carry the request's content, and the
//! most the run may cost, which is what gets reserved.

use super::{content, prompt, ChatRequest, Role, RouteInfo};
use crate::app::AppState;
use crate::config::Backend;
use crate::error::ApiError;
use crate::money::Micros;
use crate::pricing::{Model, TokenUsage};

/// The model a request runs on and its output cap.
pub(super) struct Choice {
    pub(super) model: String,
    pub(super) max_tokens: Option<u64>,
    pub(super) route: Option<RouteInfo>,
}

/// `auto` (or no model) asks the router; anything else is taken as named.
pub fn is_auto(model: &str) -> bool {
    model.is_empty() || model == "auto"
}

pub(super) async fn choose(state: &AppState, request: &ChatRequest) -> Result<Choice, ApiError> {
    if !is_auto(&request.model) {
        return Ok(Choice { model: request.model.clone(), max_tokens: request.max_tokens, route: None });
    }
    let decision = crate::routing::decide(
        state,
        &request.project_id,
        &request.messages,
        request.max_tokens,
        request.uses_client_tools(),
    )
    .await?;
    let model = resolve_model(state, &decision.model)?;
    // The router checked the budget against this output allowance; the
    // run is held to it so the reservation matches.
    let max_tokens =
        request.max_tokens.or(Some(crate::routing::output_allowance(state, model.max_output_tokens)));
    Ok(Choice {
        model: decision.model,
        max_tokens,
        route: Some(RouteInfo { tier: decision.tier, score: decision.complexity_score }),
    })
}

/// What a request will run, and its worst-case cost.
pub(super) struct Plan {
    pub(super) model: Model,
    pub(super) prompt: prompt::Prompt,
    pub(super) amount: Micros,
    /// The bounds `amount` was priced from.
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
}

pub(super) fn plan(state: &AppState, request: &ChatRequest, choice: &Choice) -> Result<Plan, ApiError> {
    let model = resolve_model(state, &choice.model)?;
    let prompt =
        prompt::build(&request.messages).map_err(|e| ApiError::bad_request(e.to_string(), "messages"))?;
    if let Some(max) = choice.max_tokens {
        if max == 0 || max > model.max_output_tokens {
            return Err(ApiError::bad_request(
                format!("max_tokens must be between 1 and {} for {}", model.max_output_tokens, model.id),
                "max_tokens",
            ));
        }
    }
    check_content(state, request, &model)?;
    // The reservation's bound, which no input beats (a token a byte, and
    // each message's framing); the context window is checked against an
    // estimate, which over-counts ordinary text but would not refuse a
    // large document that fits.
    let input_tokens = |text: fn(&str) -> u64, besides_text: u64| {
        text(&prompt.prompt)
            + prompt.system.as_deref().map(text).unwrap_or(0)
            + state.settings.prompt_overhead_tokens
            + besides_text
    };
    let input_bound = input_tokens(
        prompt::token_upper_bound,
        content::token_upper_bound(&request.messages, request.tools.as_ref()),
    ) + request.messages.len() as u64 * ccgate_router::MESSAGE_FRAMING_TOKENS;
    let input_estimate = input_tokens(
        prompt::token_estimate,
        content::token_estimate(&request.messages, request.tools.as_ref()),
    );
    let output_bound = choice.max_tokens.unwrap_or(model.max_output_tokens);
    if input_estimate.saturating_add(output_bound) > model.context_window {
        return Err(ApiError::BadRequest {
            message: format!(
                "this request may need {} tokens of input and {output_bound} of output, more than the \
                 {} tokens of {}'s context window",
                input_estimate, model.context_window, model.id
            ),
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
        });
    }
    let plain = TokenUsage { input_tokens: input_bound, output_tokens: output_bound, ..Default::default() };
    let amount = match content::cache_lifetime(&request.messages, request.tools.as_ref()) {
        // With prompt-cache markers any input token may be written to the
        // cache, which costs more than reading it fresh (twice the input
        // price for an hour's entry).
        Some(one_hour) => {
            let written = TokenUsage {
                cache_write_tokens: input_bound,
                cache_write_1h_tokens: if one_hour { input_bound } else { 0 },
                output_tokens: output_bound,
                ..Default::default()
            };
            model.cost(&plain).max(model.cost(&written))
        }
        None => model.cost(&plain),
    };
    Ok(Plan { model, prompt, amount, input_tokens: input_bound, output_tokens: output_bound })
}

/// Refuses images and client tools that the model's backend cannot carry,
/// and images over the size limit, rather than dropping them.
fn check_content(state: &AppState, request: &ChatRequest, model: &Model) -> Result<(), ApiError> {
    let max = state.settings.max_image_bytes;
    // Images a tool returned count too.
    let mut images = request
        .messages
        .iter()
        .flat_map(|m| m.images.iter().chain(m.tool_results.iter().flat_map(|r| &r.images)));
    if let Some(image) = images.find(|i| i.size > max) {
        return Err(ApiError::PayloadTooLarge(format!(
            "an image is {} bytes decoded, more than the {max} bytes allowed (max_image_bytes)",
            image.size
        )));
    }
    if state.settings.backend_for(&model.id, &model.aliases) == Backend::Api {
        return Ok(());
    }
    if request.uses_client_tools() {
        return Err(ApiError::bad_request(
            format!(
                "client-side tool calling (`tools`, tool calls and tool results: OpenAI's `tool_calls` and \
                 `tool` messages, Anthropic's `tool_use` and `tool_result` blocks) is not supported by the \
                 Claude Code CLI backend that serves {}; serve the model on the direct backend \
                 (backends = {{ {} = \"api\" }}) to use it",
                model.id,
                model.aliases.first().unwrap_or(&model.id)
            ),
            "tools",
        ));
    }
    // The CLI takes one user message per run: earlier turns go as a text
    // transcript, which cannot hold an image.
    let last_user = request.messages.iter().rposition(|m| m.role == Role::User);
    let earlier_image =
        request.messages.iter().enumerate().any(|(i, m)| !m.images.is_empty() && Some(i) != last_user);
    if earlier_image {
        return Err(ApiError::bad_request(
            format!(
                "the Claude Code CLI backend that serves {} takes images only in the last user message; \
                 use the direct backend for images in earlier turns",
                model.id
            ),
            "messages",
        ));
    }
    Ok(())
}

pub fn resolve_model(state: &AppState, name: &str) -> Result<Model, ApiError> {
    state.prices.resolve(name).cloned().ok_or_else(|| ApiError::NotFound {
        message: format!(
            "the model {name:?} does not exist or is not served here; see GET /v1/models (for example: {})",
            state
                .prices
                .models()
                .iter()
                .filter_map(|m| m.aliases.first().cloned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        param: Some("model".into()),
        code: Some("model_not_found"),
    })
}
