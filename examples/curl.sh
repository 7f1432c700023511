#!/usr/bin/env bash
# Every ccgate endpoint with curl, top to bottom. Start a gateway with an
# admin key first, for example offline with the simulated upstream:
#
#   CCGATE_ADMIN_KEY=change-me-0123456789 scripts/run.sh --offline
#
# then, in another shell:
#
#   CCGATE_ADMIN_KEY=change-me-0123456789 examples/curl.sh
#
# It creates a project named example-<time> and deletes it at the end
# (its ledger rows stay, as they always do). Needs only bash and curl.
# The reference for every call: docs/API_REFERENCE.md.
set -euo pipefail

CCGATE_URL="${CCGATE_URL:-http://127.0.0.1:8080}"
: "${CCGATE_ADMIN_KEY:?set CCGATE_ADMIN_KEY to the admin key of the gateway}"
PROJECT="example-$(date +%s)"

admin=(-H "Authorization: Bearer $CCGATE_ADMIN_KEY")
json=(-H 'content-type: application/json')
# -sS: quiet but show transport errors; --fail-with-body: exit non-zero on an
# HTTP error and still print the error object.
ok=(curl -sS --fail-with-body)

section() { printf '\n\n=== %s\n' "$*"; }
# A top-level string field of a JSON object, without needing jq.
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -n 1; }

section "Service: name and links, health, the OpenAPI document (no key needed)"
"${ok[@]}" "$CCGATE_URL/"
echo
"${ok[@]}" "$CCGATE_URL/health"
echo
openapi="$("${ok[@]}" "$CCGATE_URL/openapi.json")"
echo "${openapi:0:200} …"
echo "Swagger UI: $CCGATE_URL/docs   ReDoc: $CCGATE_URL/redoc"

section "Admin: create a project with a daily and a monthly budget"
"${ok[@]}" "$CCGATE_URL/admin/projects" "${admin[@]}" "${json[@]}" \
    -d "{\"id\": \"$PROJECT\", \"name\": \"Example\", \"budget\": {\"daily_usd\": 5, \"monthly_usd\": 100}}"

section "Admin: list projects, read one, change its budget (null removes a limit)"
"${ok[@]}" "$CCGATE_URL/admin/projects" "${admin[@]}"
echo
"${ok[@]}" "$CCGATE_URL/admin/projects/$PROJECT" "${admin[@]}"
echo
"${ok[@]}" -X PATCH "$CCGATE_URL/admin/projects/$PROJECT" "${admin[@]}" "${json[@]}" \
    -d '{"budget": {"weekly_usd": 20, "monthly_usd": null}}'

section "Admin: create a project key (the secret is in this reply only), list keys"
created="$("${ok[@]}" "$CCGATE_URL/admin/projects/$PROJECT/keys" "${admin[@]}" "${json[@]}" \
    -d '{"name": "example", "rpm_limit": 60, "tpm_limit": 200000, "max_concurrent": 4}')"
echo "$created"
KEY="$(field key <<<"$created")"
KEY_ID="$(field key_id <<<"$created")"
project=(-H "Authorization: Bearer $KEY")
"${ok[@]}" "$CCGATE_URL/admin/projects/$PROJECT/keys" "${admin[@]}"
echo
"${ok[@]}" "$CCGATE_URL/admin/keys" "${admin[@]}"

section "Models (with a project key: the reply carries x-ratelimit-* headers)"
models="$("${ok[@]}" -i "$CCGATE_URL/v1/models" "${project[@]}")"
echo "${models:0:900} …"

section "Chat: not streaming (x-ccgate-cost-usd and x-request-id headers)"
"${ok[@]}" -i "$CCGATE_URL/v1/chat/completions" "${project[@]}" "${json[@]}" -H 'x-request-id: example-chat-1' \
    -d '{"model": "haiku", "max_tokens": 200, "messages": [
          {"role": "system", "content": "Be brief."},
          {"role": "user", "content": "Say hello"}]}'

section "Chat: streaming, with usage and cost on the last chunks"
"${ok[@]}" -N "$CCGATE_URL/v1/chat/completions" "${project[@]}" "${json[@]}" \
    -d '{"model": "haiku", "stream": true, "stream_options": {"include_usage": true},
         "messages": [{"role": "user", "content": "Count to five"}]}'

section "Routing: what \"model\": \"auto\" would pick and why, then a chat with it (x-ccgate-route)"
"${ok[@]}" "$CCGATE_URL/v1/route" "${project[@]}" "${json[@]}" \
    -d '{"messages": [{"role": "user", "content": "Prove that there are infinitely many primes"}]}'
echo
"${ok[@]}" -i "$CCGATE_URL/v1/chat/completions" "${project[@]}" "${json[@]}" \
    -d '{"model": "auto", "max_tokens": 200, "messages": [{"role": "user", "content": "What is 2 + 2?"}]}'

section "Usage: the project's day and week (as the admin, and with its own key)"
"${ok[@]}" "$CCGATE_URL/v1/usage?project_id=$PROJECT&period=day" "${admin[@]}"
echo
"${ok[@]}" "$CCGATE_URL/v1/usage?period=week" "${project[@]}"

section "Batch in one call: POST /v1/batch (an invalid request fails alone)"
"${ok[@]}" "$CCGATE_URL/v1/batch" "${project[@]}" "${json[@]}" \
    -d '{"max_concurrency": 2, "requests": [
          {"custom_id": "a", "model": "haiku", "messages": [{"role": "user", "content": "one"}]},
          {"custom_id": "b", "model": "haiku", "messages": [{"role": "user", "content": "two"}]},
          {"custom_id": "c", "model": "no-such-model", "messages": [{"role": "user", "content": "three"}]}]}'

section "Files and batches: upload a JSONL file, run it as a batch, read the output"
input="$(mktemp)"
trap 'rm -f "$input"' EXIT
for i in 1 2 3; do
    printf '{"custom_id": "req-%s", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "haiku", "max_tokens": 100, "messages": [{"role": "user", "content": "Name a colour (%s)"}]}}\n' "$i" "$i"
done >"$input"
file="$("${ok[@]}" "$CCGATE_URL/v1/files" "${project[@]}" -F purpose=batch -F "file=@$input;filename=requests.jsonl")"
echo "$file"
FILE_ID="$(field id <<<"$file")"
batch="$("${ok[@]}" "$CCGATE_URL/v1/batches" "${project[@]}" "${json[@]}" \
    -d "{\"input_file_id\": \"$FILE_ID\", \"endpoint\": \"/v1/chat/completions\", \"completion_window\": \"24h\", \"metadata\": {\"job\": \"example\"}}")"
echo "$batch"
BATCH_ID="$(field id <<<"$batch")"
echo
echo "waiting for $BATCH_ID …"
for _ in $(seq 1 120); do
    batch="$("${ok[@]}" "$CCGATE_URL/v1/batches/$BATCH_ID" "${project[@]}")"
    case "$(field status <<<"$batch")" in
        completed | failed | expired | cancelled) break ;;
    esac
    sleep 1
done
echo "$batch"
OUTPUT_ID="$(field output_file_id <<<"$batch")"
echo
"${ok[@]}" "$CCGATE_URL/v1/files/$OUTPUT_ID" "${project[@]}"
echo
"${ok[@]}" "$CCGATE_URL/v1/files/$OUTPUT_ID/content" "${project[@]}"
batches="$("${ok[@]}" "$CCGATE_URL/v1/batches?limit=5" "${project[@]}")"
echo "${batches:0:600} …"
"${ok[@]}" "$CCGATE_URL/v1/files?purpose=batch" "${project[@]}"

section "Cancel a batch: a second one, cancelled at once (409 if it had already ended)"
batch="$("${ok[@]}" "$CCGATE_URL/v1/batches" "${project[@]}" "${json[@]}" \
    -d "{\"input_file_id\": \"$FILE_ID\", \"endpoint\": \"/v1/chat/completions\", \"completion_window\": \"24h\"}")"
curl -sS -X POST "$CCGATE_URL/v1/batches/$(field id <<<"$batch")/cancel" "${project[@]}"

section "Errors: each is an OpenAI error object (printed with its status)"
show() { curl -sS -w '  → HTTP %{http_code}\n' "$@"; }
echo "no key:"
show "$CCGATE_URL/v1/models"
echo "unknown model:"
show "$CCGATE_URL/v1/chat/completions" "${project[@]}" "${json[@]}" \
    -d '{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}'
echo "invalid field (param names it):"
show "$CCGATE_URL/v1/chat/completions" "${project[@]}" "${json[@]}" \
    -d '{"model": "haiku", "messages": [{"role": "user", "content": 5}]}'
echo "a project key acting for another project:"
show "$CCGATE_URL/v1/usage?project_id=default" "${project[@]}"
echo "a project key on the admin API:"
show "$CCGATE_URL/admin/projects" "${project[@]}"
echo "budget exhausted (a daily limit of \$0.0001 cannot cover an opus request):"
"${ok[@]}" -o /dev/null -X PATCH "$CCGATE_URL/admin/projects/$PROJECT" "${admin[@]}" "${json[@]}" \
    -d '{"budget": {"daily_usd": 0.0001}}'
show "$CCGATE_URL/v1/chat/completions" "${project[@]}" "${json[@]}" \
    -d '{"model": "opus", "messages": [{"role": "user", "content": "hi"}]}'

section "Metrics (admin key or the metrics_token setting)"
metrics="$("${ok[@]}" "$CCGATE_URL/metrics" "${admin[@]}")"
grep -E '^(# HELP|ccgate_runs_total|ccgate_cost_usd_total)' <<<"$metrics"

section "Clean up: revoke the key (it gets 401 from now on), delete the files and the project"
"${ok[@]}" -X DELETE "$CCGATE_URL/admin/keys/$KEY_ID" "${admin[@]}" -w 'revoked: HTTP %{http_code}\n'
show "$CCGATE_URL/v1/models" "${project[@]}"
"${ok[@]}" -X DELETE "$CCGATE_URL/v1/files/$FILE_ID" "${admin[@]}" -H "X-Project-Id: $PROJECT"
echo
"${ok[@]}" -X DELETE "$CCGATE_URL/admin/projects/$PROJECT" "${admin[@]}" -w 'project deleted: HTTP %{http_code}\n'
