//! The price table: which models exist, what they cost, and how large they
//! are. It is data (`prices.toml`, compiled in and replaceable at start-up),
//! so a price change never needs a code change.

use std::path::Path;

use serde::Deserialize;

use crate::money::Micros;

/// The table shipped with ccgate, dated inside the file.
const BUILTIN: &str = include_str!("../prices.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    effective_date: String,
    cache_read_factor: f64,
    /// Five-minute cache writes, the API's default.
    cache_write_factor: f64,
    /// One-hour cache writes (`"ttl": "1h"`); older tables lack it.
    #[serde(default = "one_hour_write_factor")]
    cache_write_1h_factor: f64,
    models: Vec<ModelEntry>,
}

fn one_hour_write_factor() -> f64 {
    2.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    /// A name for people (`GET /v1/models`); the id when absent.
    #[serde(default)]
    display_name: Option<String>,
    aliases: Vec<String>,
    tier: String,
    level: u8,
    input_usd_per_mtok: f64,
    output_usd_per_mtok: f64,
    context_window: u64,
    max_output_tokens: u64,
}

/// One model the gateway serves, with prices in micro-dollars per million
/// tokens (integers from here on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub id: String,
    /// A name for people, as Anthropic's model list gives one.
    pub display_name: String,
    pub aliases: Vec<String>,
    pub tier: String,
    pub level: u8,
    pub input_per_mtok: Micros,
    pub output_per_mtok: Micros,
    pub cache_read_per_mtok: Micros,
    pub cache_write_per_mtok: Micros,
    pub cache_write_1h_per_mtok: Micros,
    pub context_window: u64,
    pub max_output_tokens: u64,
}

impl Model {
    /// What the CLI is given as `--model`: the first alias, or the id.
    pub fn cli_name(&self) -> &str {
        self.aliases.first().map(String::as_str).unwrap_or(&self.id)
    }

    /// The cost of a run, rounded up to the next micro-dollar.
    pub fn cost(&self, usage: &TokenUsage) -> Micros {
        // Products are in micro-dollars × tokens; dividing once at the end by
        // a million keeps the rounding error below one micro-dollar.
        let total = per_mtok(self.input_per_mtok, usage.input_tokens)
            + per_mtok(self.output_per_mtok, usage.output_tokens)
            + per_mtok(self.cache_read_per_mtok, usage.cache_read_tokens)
            + per_mtok(self.cache_write_per_mtok, usage.cache_write_tokens - usage.one_hour_writes())
            + per_mtok(self.cache_write_1h_per_mtok, usage.one_hour_writes());
        Micros(total.div_ceil(1_000_000).min(i64::MAX as u128) as i64)
    }
}

fn per_mtok(price: Micros, tokens: u64) -> u128 {
    price.0.max(0) as u128 * tokens as u128
}

/// Token counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Of `cache_write_tokens`, those written for an hour (priced higher).
    pub cache_write_1h_tokens: u64,
}

impl TokenUsage {
    fn one_hour_writes(&self) -> u64 {
        self.cache_write_1h_tokens.min(self.cache_write_tokens)
    }
}

#[derive(Debug, Clone)]
pub struct PriceTable {
    pub effective_date: String,
    models: Vec<Model>,
}

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("cannot read price file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid price file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid price file: {0}")]
    Invalid(String),
}

impl PriceTable {
    pub fn builtin() -> PriceTable {
        // The compiled-in table is checked by a unit test, so parsing it
        // cannot fail at run time.
        PriceTable::parse(BUILTIN).expect("built-in prices.toml is valid")
    }

    pub fn load(path: &Path) -> Result<PriceTable, PriceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PriceError::Read { path: path.display().to_string(), source })?;
        PriceTable::parse(&text)
    }

    pub fn parse(text: &str) -> Result<PriceTable, PriceError> {
        let file: PriceFile = toml::from_str(text)?;
        if file.models.is_empty() {
            return Err(PriceError::Invalid("no models".into()));
        }
        let mut models = Vec::with_capacity(file.models.len());
        for m in file.models {
            if m.input_usd_per_mtok < 0.0 || m.output_usd_per_mtok < 0.0 {
                return Err(PriceError::Invalid(format!("negative price for {}", m.id)));
            }
            if m.context_window == 0 || m.max_output_tokens == 0 {
                return Err(PriceError::Invalid(format!("zero context or output size for {}", m.id)));
            }
            models.push(Model {
                input_per_mtok: Micros::from_usd_ceil(m.input_usd_per_mtok),
                output_per_mtok: Micros::from_usd_ceil(m.output_usd_per_mtok),
                cache_read_per_mtok: Micros::from_usd_ceil(m.input_usd_per_mtok * file.cache_read_factor),
                cache_write_per_mtok: Micros::from_usd_ceil(m.input_usd_per_mtok * file.cache_write_factor),
                cache_write_1h_per_mtok: Micros::from_usd_ceil(
                    m.input_usd_per_mtok * file.cache_write_1h_factor,
                ),
                display_name: m.display_name.unwrap_or_else(|| m.id.clone()),
                id: m.id,
                aliases: m.aliases,
                tier: m.tier,
                level: m.level,
                context_window: m.context_window,
                max_output_tokens: m.max_output_tokens,
            });
        }
        Ok(PriceTable { effective_date: file.effective_date, models })
    }

    /// Adds names clients may send as `model` (the `model_aliases`
    /// setting), each for the model its target names by id or alias. A
    /// name goes after the model's own aliases, so the CLI is still given
    /// the first. A name that already names a model, or a target the table
    /// does not know, is refused.
    pub fn add_aliases<'a>(
        &mut self,
        aliases: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<(), String> {
        for (alias, target) in aliases {
            if self.resolve(alias).is_some() {
                return Err(format!("{alias:?} already names a model of the price table"));
            }
            let Some(model) = self.models.iter_mut().find(|m| m.id == *target || m.aliases.contains(target))
            else {
                return Err(format!("the price table has no model {target:?} (for {alias:?})"));
            };
            model.aliases.push(alias.clone());
        }
        Ok(())
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// Finds a model by id or alias. Matching is exact (aliases are
    /// lower-case), so `Sonnet` is not silently taken for `sonnet`.
    pub fn resolve(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == name || m.aliases.iter().any(|a| a == name))
    }

    /// Finds the model a CLI reported by id, tolerating the CLI's habit of
    /// reporting a long-context variant by its base id.
    pub fn by_reported_id(&self, id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn builtin_table_parses_and_resolves_aliases() {
        let table = PriceTable::builtin();
        let cases = [
            ("haiku", "claude-haiku-4-5-20251001"),
            ("sonnet", "claude-sonnet-5"),
            ("opus", "claude-opus-4-8"),
            ("fable", "claude-fable-5"),
            ("sonnet[1m]", "claude-sonnet-5[1m]"),
            ("claude-opus-4-8", "claude-opus-4-8"),
        ];
        for (name, id) in cases {
            assert_eq!(table.resolve(name).map(|m| m.id.as_str()), Some(id), "{name}");
        }
        assert!(table.resolve("gpt-4o").is_none());
        assert!(table.resolve("Sonnet").is_none());
    }

    #[test]
    fn model_aliases_add_names_after_a_models_own_and_refuse_clashes() {
        let mut table = PriceTable::builtin();
        let aliases: BTreeMap<String, String> =
            [("gpt-4o", "sonnet"), ("gpt-4o-mini", "claude-haiku-4-5-20251001")]
                .map(|(a, t)| (a.to_string(), t.to_string()))
                .into();
        table.add_aliases(&aliases).unwrap();
        let sonnet = table.resolve("gpt-4o").unwrap();
        assert_eq!(sonnet.id, "claude-sonnet-5");
        // The CLI is still given the model's first own alias.
        assert_eq!(sonnet.cli_name(), "sonnet");
        assert_eq!(table.resolve("gpt-4o-mini").map(|m| m.id.as_str()), Some("claude-haiku-4-5-20251001"));

        let refused = |alias: &str, target: &str| {
            let mut table = PriceTable::builtin();
            let one = BTreeMap::from([(alias.to_string(), target.to_string())]);
            table.add_aliases(&one).unwrap_err()
        };
        assert!(refused("opus", "haiku").contains("already names a model"));
        assert!(refused("claude-sonnet-5", "haiku").contains("already names a model"));
        assert!(refused("gpt-4o", "gpt-5").contains("no model \"gpt-5\""));
    }

    #[test]
    fn cost_matches_the_cli() {
        // The CLI charged $0.00027 for 120 input and 30 output tokens on haiku,
        // and $0.00081 for the same on sonnet (fixtures/claude-cli).
        let table = PriceTable::builtin();
        let usage = TokenUsage { input_tokens: 120, output_tokens: 30, ..TokenUsage::default() };
        assert_eq!(table.resolve("haiku").map(|m| m.cost(&usage)), Some(Micros(270)));
        assert_eq!(table.resolve("sonnet").map(|m| m.cost(&usage)), Some(Micros(810)));
        assert_eq!(table.resolve("opus").map(|m| m.cost(&usage)), Some(Micros(1350)));
    }

    #[test]
    fn cache_tokens_are_priced_separately() {
        let table = PriceTable::builtin();
        let haiku = table.resolve("haiku").cloned();
        let Some(haiku) = haiku else { panic!("haiku missing") };
        let usage = TokenUsage {
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 1_000_000,
            ..TokenUsage::default()
        };
        assert_eq!(haiku.cost(&usage), Micros(100_000 + 1_250_000));
        // Of the writes, those for an hour cost twice the input price.
        let usage = TokenUsage { cache_write_1h_tokens: 400_000, ..usage };
        assert_eq!(haiku.cost(&usage), Micros(100_000 + 750_000 + 800_000));
    }

    #[test]
    fn rejects_bad_tables() {
        assert!(PriceTable::parse(
            "effective_date = \"x\"\ncache_read_factor = 0.1\ncache_write_factor = 1.0\nmodels = []"
        )
        .is_err());
        assert!(PriceTable::parse("nonsense = 1").is_err());
    }
}
