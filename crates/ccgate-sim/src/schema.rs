//! Structured output: a reply that is an instance of the request's JSON
//! Schema (`output_config.format`), as the API's constrained decoding
//! gives. The instance is a plain function of the schema: every property
//! present, the first of an `enum`, `anyOf` or `oneOf`, one item per array.

use serde_json::{json, Map, Value};

/// How deep an instance goes before it stops at `null` (a recursive
/// schema through `$ref` is not followed; this bounds nesting).
const MAX_DEPTH: usize = 16;

/// The schema the request asks its answer to follow, if any.
pub fn requested(output_config: Option<&Value>) -> Option<&Value> {
    let format = output_config?.get("format")?;
    (format.get("type")?.as_str()? == "json_schema").then(|| format.get("schema")).flatten()
}

/// The tool Claude Code offers with `--json-schema`, to be called with the
/// answer as its input.
pub const OUTPUT_TOOL: &str = "StructuredOutput";

/// The input schema of `OUTPUT_TOOL`, when the request offers it.
pub fn output_tool(tools: Option<&[Value]>) -> Option<&Value> {
    tools?
        .iter()
        .find(|tool| tool.get("name").and_then(Value::as_str) == Some(OUTPUT_TOOL))?
        .get("input_schema")
}

/// An instance of `schema`.
pub fn instance(schema: &Value) -> Value {
    at_depth(schema, 0)
}

fn at_depth(schema: &Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema.get(key).and_then(Value::as_array).and_then(|e| e.first()) {
            return at_depth(first, depth + 1);
        }
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // `["string", "null"]`: the first type.
        Some(Value::Array(kinds)) => kinds.first().and_then(Value::as_str).unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "null",
    };
    match kind {
        "object" => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let fields: Map<String, Value> = properties
                .into_iter()
                .flatten()
                .map(|(name, property)| (name.clone(), at_depth(property, depth + 1)))
                .collect();
            Value::Object(fields)
        }
        "array" => {
            let items = schema.get("items").map(|items| at_depth(items, depth + 1));
            let least = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1).max(1);
            json!(std::iter::repeat_n(items.unwrap_or(Value::Null), least.min(8) as usize).collect::<Vec<_>>())
        }
        "string" => json!("w1"),
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.5)),
        "boolean" => json!(true),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_has_every_property_of_its_type() {
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["name", "age"],
            "properties": {
                "name": {"type": "string"}, "age": {"type": "integer", "minimum": 18},
                "score": {"type": "number"}, "ok": {"type": "boolean"},
                "kind": {"type": "string", "enum": ["cat", "dog"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "maybe": {"type": ["string", "null"]},
                "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "inner": {"type": "object", "properties": {"x": {"const": 3}}}}});
        assert_eq!(
            instance(&schema),
            json!({"name": "w1", "age": 18, "score": 1.5, "ok": true, "kind": "cat", "tags": ["w1"],
                "maybe": "w1", "either": 1, "inner": {"x": 3}})
        );
    }

    #[test]
    fn only_a_json_schema_format_asks_for_one() {
        let schema = json!({"type": "object"});
        let config = json!({"format": {"type": "json_schema", "schema": schema}});
        assert_eq!(requested(Some(&config)), Some(&schema));
        assert_eq!(requested(Some(&json!({"effort": "low"}))), None);
        assert_eq!(requested(None), None);
    }

    #[test]
    fn a_self_nesting_schema_stops() {
        let mut schema = json!({"type": "string"});
        for _ in 0..100 {
            schema = json!({"type": "object", "properties": {"next": schema}});
        }
        let mut depth = 0;
        let mut at = &instance(&schema);
        while let Some(next) = at.get("next") {
            depth += 1;
            at = next;
        }
        assert!(depth <= MAX_DEPTH + 1, "{depth}");
    }
}
