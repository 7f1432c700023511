//! What the OpenAPI document says once for every operation, because the
//! gateway does it once for every route: the refusals of the middleware
//! (keys, rate limits, bodies) and the one shape of a project id.
//!
//! A client generated from the document, or a tool that checks responses
//! against it, must meet no status the document does not name; and a
//! project id the document allows is one the gateway takes.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::Modify;

use super::is_public;

/// The shape `extract::valid_project_id` checks.
const PROJECT_ID_PATTERN: &str = "^[a-z0-9_-]{1,64}$";

pub struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if is_public(path) {
                continue;
            }
            let admin = path.starts_with("/admin/");
            // Under `/v1/messages` errors come in Anthropic's shape.
            let error_body =
                if super::messages::is_anthropic_path(path) { "AnthropicErrorBody" } else { "ErrorBody" };
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch]
                .into_iter()
                .flatten()
            {
                add_refusals(operation, admin, error_body);
                for parameter in operation.parameters.iter_mut().flatten() {
                    let names_project = match parameter.parameter_in {
                        ParameterIn::Header => parameter.name.eq_ignore_ascii_case("x-project-id"),
                        ParameterIn::Query => parameter.name == "project_id",
                        ParameterIn::Path => {
                            path.starts_with("/admin/projects/{id}") && parameter.name == "id"
                        }
                        ParameterIn::Cookie => false,
                    };
                    if names_project {
                        if let Some(schema) = parameter.schema.as_mut() {
                            constrain_project_id(schema);
                        }
                    }
                }
            }
        }
        // Request bodies name their project in a `project_id` field (and a
        // new project its `id`).
        let Some(components) = openapi.components.as_mut() else { return };
        for (name, schema) in components.schemas.iter_mut() {
            constrain_project_fields(name, schema);
        }
    }
}

/// Constrains an object's `project_id` (and a new project's `id`), also
/// inside an `allOf` (a struct with flattened fields).
fn constrain_project_fields(name: &str, schema: &mut RefOr<Schema>) {
    match schema {
        RefOr::T(Schema::Object(object)) => {
            for (field, property) in object.properties.iter_mut() {
                if field == "project_id" || (name == "CreateProject" && field == "id") {
                    constrain_project_id(property);
                }
            }
        }
        RefOr::T(Schema::AllOf(all)) => {
            for item in all.items.iter_mut() {
                constrain_project_fields(name, item);
            }
        }
        _ => {}
    }
}

/// Holds a string schema to a project id's shape, `[a-z0-9_-]{1,64}`
/// (a `null` it allows stays allowed).
fn constrain_project_id(schema: &mut RefOr<Schema>) {
    if let RefOr::T(Schema::Object(object)) = schema {
        object.pattern = Some(PROJECT_ID_PATTERN.to_string());
    }
}

/// Adds the middleware's refusals an operation does not describe itself.
fn add_refusals(operation: &mut Operation, admin: bool, error_body: &str) {
    let takes_input =
        operation.request_body.is_some() || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut refusals = vec![
        (
            "401",
            "No API key, or one that is unknown, expired or revoked (when the gateway has an `admin_key`)",
        ),
        (
            "403",
            if admin {
                "A project key: admin routes take the admin key"
            } else {
                "The key's project is not the one the request names"
            },
        ),
    ];
    if !admin {
        refusals.push(("429", "A limit of the key: requests or tokens per minute, or requests in flight (`retry-after` says when to try again)"));
    }
    if takes_input {
        refusals.push(("400", "Invalid input: the message says which, and `param` names the field"));
    }
    if operation.request_body.is_some() {
        refusals.push(("408", "The body took longer than `client_body_timeout_secs` to arrive"));
        refusals.push(("413", "The body is larger than `max_body_bytes`"));
    }
    for (status, description) in refusals {
        operation.responses.responses.entry(status.to_string()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(error_body))))
                            .build(),
                    )
                    .build(),
            )
        });
    }
}
