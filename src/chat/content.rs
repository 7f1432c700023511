//! What a message carries besides text: images, and the client's own tool
//! calls and results (OpenAI `tools`: the client runs them, not the gateway;
//! an agent's own tools are `workers::ToolActivity`).

use base64::Engine;

/// Image types the model accepts.
pub const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Input tokens reserved per image: Anthropic counts about (w×h)/750 and
/// scales larger images down to about 1.15 megapixels, so ~1,600 at most.
pub const IMAGE_TOKENS: u64 = 1600;

/// An image attached to a message, as the model receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// One of [`IMAGE_TYPES`].
    pub media_type: String,
    pub data_base64: String,
    /// Its size once decoded, in bytes.
    pub size: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error(
        "only data: URLs are supported for images (data:image/png;base64,…); the gateway fetches nothing"
    )]
    NotDataUrl,
    #[error("image type {0:?} is not supported: use image/png, image/jpeg, image/gif or image/webp")]
    UnsupportedType(String),
    #[error("the image is not valid base64 (a data URL needs `;base64,` and base64 data)")]
    BadBase64,
}

impl Image {
    /// Reads a `data:<type>;base64,<data>` URL.
    pub fn from_data_url(url: &str) -> Result<Image, ImageError> {
        let Some(rest) = url.strip_prefix("data:") else { return Err(ImageError::NotDataUrl) };
        let Some((header, data)) = rest.split_once(',') else { return Err(ImageError::BadBase64) };
        let Some(media_type) = header.strip_suffix(";base64") else { return Err(ImageError::BadBase64) };
        Image::from_base64(media_type, data)
    }

    /// Reads an image given as its media type and base64 data (Anthropic's
    /// `source` of type `base64`).
    pub fn from_base64(media_type: &str, data: &str) -> Result<Image, ImageError> {
        let media_type = media_type.trim().to_ascii_lowercase();
        if !IMAGE_TYPES.contains(&media_type.as_str()) {
            return Err(ImageError::UnsupportedType(media_type));
        }
        let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(&data).map_err(|_| ImageError::BadBase64)?;
        if decoded.is_empty() {
            return Err(ImageError::BadBase64);
        }
        Ok(Image { media_type, data_base64: data, size: decoded.len() })
    }
}

/// A call the model made to one of the client's tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (OpenAI's form).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as the JSON object Anthropic's `input` is. Arguments
    /// that do not parse to an object are kept as a string under
    /// `arguments`, so nothing is lost; none at all are `{}`.
    pub fn input(&self) -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&self.arguments)
            .ok()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| {
                if self.arguments.trim().is_empty() {
                    serde_json::json!({})
                } else {
                    serde_json::json!({"arguments": self.arguments})
                }
            })
    }
}

/// A client's answer to a tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    pub tool_call_id: String,
    pub content: String,
    /// Images the tool returned (Anthropic's `tool_result` may hold them).
    pub images: Vec<Image>,
    /// The tool failed, and `content` says how (Anthropic's `is_error`).
    pub is_error: bool,
}

impl ToolResult {
    /// A successful result of text alone.
    pub fn text(tool_call_id: impl Into<String>, content: impl Into<String>) -> ToolResult {
        ToolResult {
            tool_call_id: tool_call_id.into(),
            content: content.into(),
            images: Vec::new(),
            is_error: false,
        }
    }
}

/// A tool the client offers the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of the arguments.
    pub parameters: serde_json::Value,
    /// Anthropic's `cache_control` on this tool (a prompt-cache breakpoint
    /// after the tool definitions up to it), when the client set one.
    pub cache: Option<serde_json::Value>,
    /// Whether the model's calls must follow `parameters` exactly
    /// (OpenAI's `function.strict`, Anthropic's `strict`).
    pub strict: bool,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool, the model's choice.
    Required,
    Named(String),
}

/// The client's tools for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTools {
    pub tools: Vec<ToolSpec>,
    pub choice: Option<ToolChoice>,
}

/// A piece of a tool call as it streams: the first piece of a call has its
/// id and name, later ones add to its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// The call's position among this reply's tool calls.
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// Whether a request asks for prompt caching (`cache_control` on a turn or
/// a tool) and, if it does, whether for an hour (`"ttl": "1h"`) anywhere.
pub fn cache_lifetime(messages: &[super::Message], tools: Option<&ClientTools>) -> Option<bool> {
    let on_tools = tools.into_iter().flat_map(|t| t.tools.iter().filter_map(|tool| tool.cache.as_ref()));
    messages
        .iter()
        .filter_map(|m| m.cache.as_ref())
        .chain(on_tools)
        .fold(None, |one_hour, marker| Some(one_hour.unwrap_or(false) || marker["ttl"] == "1h"))
}

/// An upper bound on the input tokens that images, tool calls, tool
/// results and tool definitions add (the text transcript counts the rest),
/// for reservations: their text at `prompt::token_upper_bound`.
pub fn token_upper_bound(messages: &[super::Message], tools: Option<&ClientTools>) -> u64 {
    tokens_besides_text(messages, tools, super::prompt::token_upper_bound)
}

/// The same as `token_upper_bound` with text at `prompt::token_estimate`.
pub fn token_estimate(messages: &[super::Message], tools: Option<&ClientTools>) -> u64 {
    tokens_besides_text(messages, tools, super::prompt::token_estimate)
}

fn tokens_besides_text(
    messages: &[super::Message],
    tools: Option<&ClientTools>,
    text_bound: fn(&str) -> u64,
) -> u64 {
    let in_messages: u64 = messages
        .iter()
        .map(|m| {
            m.images.len() as u64 * IMAGE_TOKENS
                + m.tool_calls
                    .iter()
                    .map(|c| text_bound(&c.name) + text_bound(&c.arguments) + 16)
                    .sum::<u64>()
                + m.tool_results
                    .iter()
                    .map(|r| text_bound(&r.content) + r.images.len() as u64 * IMAGE_TOKENS + 16)
                    .sum::<u64>()
                + m.thinking
                    .iter()
                    .map(|t| match t {
                        Thinking::Text { thinking, signature } => {
                            text_bound(thinking) + text_bound(signature)
                        }
                        Thinking::Redacted { data } => text_bound(data),
                    })
                    .sum::<u64>()
        })
        .sum();
    // Tool use adds its own system prompt upstream (a few hundred tokens).
    let in_tools = tools.map_or(0, |t| {
        500 + t
            .tools
            .iter()
            .map(|s| {
                text_bound(&s.name)
                    + s.description.as_deref().map_or(0, text_bound)
                    + text_bound(&s.parameters.to_string())
            })
            .sum::<u64>()
    });
    in_messages + in_tools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_are_read_and_checked() {
        let png = Image::from_data_url("data:image/png;base64,iVBORw0KGgo=").unwrap();
        assert_eq!(
            (png.media_type.as_str(), png.data_base64.as_str(), png.size),
            ("image/png", "iVBORw0KGgo=", 8)
        );
        let cases = [
            ("https://example.com/cat.png", ImageError::NotDataUrl),
            ("data:image/tiff;base64,AAAA", ImageError::UnsupportedType("image/tiff".into())),
            ("data:text/plain;base64,AAAA", ImageError::UnsupportedType("text/plain".into())),
            ("data:image/png;base64,not*base64", ImageError::BadBase64),
            ("data:image/png,rawbytes", ImageError::BadBase64),
            ("data:image/png;base64,", ImageError::BadBase64),
        ];
        for (url, error) in cases {
            assert_eq!(Image::from_data_url(url), Err(error), "{url}");
        }
    }
}

/// A block of the model's extended thinking, kept whole so it can be handed
/// back: the API checks its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thinking {
    Text { thinking: String, signature: String },
    Redacted { data: String },
}

/// A piece of extended thinking as it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkingPiece {
    /// A block begins: a thinking block (then text and a signature), or a
    /// redacted one, whole.
    Start {
        redacted: Option<String>,
    },
    Text(String),
    Signature(String),
}
