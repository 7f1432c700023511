//! Start-up behaviour of the simulator; per-request directives override it.

/// How every request behaves unless its prompt carries a directive saying otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimConfig {
    /// Delay between stream chunks (`content_block_delta` events), in milliseconds.
    pub default_delay_ms: u64,
    /// Delay before the first `content_block_delta`, in milliseconds.
    pub first_token_delay_ms: u64,
    /// When set, every `/v1/messages` request fails with this HTTP status.
    pub fail_status: Option<u16>,
    /// When set, every stream stops after its opening events and never ends
    /// (and every non-streaming request is never answered).
    pub hang: bool,
}
