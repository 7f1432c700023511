-- The budget writes as functions, so that each is one round trip and one
-- statement (its own transaction): the period rows stay locked only while
-- the server runs the function, not across several round trips from the
-- gateway, which is what bounds how many reservations a hot project takes.

-- Reserves `p_amount` against the project's three periods and writes the
-- request's ledger row, or changes nothing. Returns 'reserved',
-- 'not_found' (no such project) or 'exhausted' (a limited period has no
-- room). A request id already recorded raises unique_violation.
CREATE FUNCTION ccgate_reserve(
    p_request_id TEXT, p_created_at_ms BIGINT, p_project_id TEXT, p_key_id TEXT, p_endpoint TEXT,
    p_model_requested TEXT, p_model_used TEXT, p_amount BIGINT,
    p_day BIGINT, p_week BIGINT, p_month BIGINT, p_owner TEXT, p_expires_at_ms BIGINT
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    limits BIGINT[];
    totals RECORD;
    period_limit BIGINT;
BEGIN
    SELECT ARRAY[daily_limit_micros, weekly_limit_micros, monthly_limit_micros] INTO limits
        FROM projects WHERE id = p_project_id;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    INSERT INTO period_totals (project_id, kind, period_start, spent_micros, reserved_micros)
        VALUES (p_project_id, 'day', p_day, 0, 0), (p_project_id, 'week', p_week, 0, 0),
               (p_project_id, 'month', p_month, 0, 0)
        ON CONFLICT DO NOTHING;
    -- One lock order everywhere (by kind), so reservations and settlements
    -- of the same project cannot deadlock; the checks run under the locks.
    FOR totals IN
        SELECT kind, spent_micros, reserved_micros FROM period_totals
        WHERE project_id = p_project_id AND ((kind = 'day' AND period_start = p_day)
            OR (kind = 'week' AND period_start = p_week) OR (kind = 'month' AND period_start = p_month))
        ORDER BY kind FOR UPDATE
    LOOP
        -- No limit is NULL, and a comparison with NULL refuses nothing.
        period_limit := limits[array_position(ARRAY['day', 'week', 'month'], totals.kind)];
        IF totals.spent_micros + totals.reserved_micros + p_amount > period_limit THEN
            RETURN 'exhausted';
        END IF;
    END LOOP;
    INSERT INTO requests (request_id, created_at_ms, project_id, key_id, endpoint, model_requested,
            model_used, status, reserved_micros, day_start, week_start, month_start, owner, expires_at_ms)
        VALUES (p_request_id, p_created_at_ms, p_project_id, p_key_id, p_endpoint, p_model_requested,
            p_model_used, 'in_progress', p_amount, p_day, p_week, p_month, p_owner, p_expires_at_ms);
    UPDATE period_totals SET reserved_micros = reserved_micros + p_amount
        WHERE project_id = p_project_id AND ((kind = 'day' AND period_start = p_day)
            OR (kind = 'week' AND period_start = p_week) OR (kind = 'month' AND period_start = p_month));
    RETURN 'reserved';
END;
$$;

-- Settles an in-progress request: its row takes the outcome and each of
-- its periods trades the reserved amount for the cost. False (nothing
-- changed) when the row was not in progress.
CREATE FUNCTION ccgate_settle(
    p_request_id TEXT, p_status TEXT, p_finished_at_ms BIGINT, p_model_used TEXT, p_http_status INTEGER,
    p_error_message TEXT, p_input_tokens BIGINT, p_output_tokens BIGINT, p_cache_read_tokens BIGINT,
    p_cache_write_tokens BIGINT, p_cost BIGINT, p_latency_ms BIGINT, p_ttft_ms BIGINT
) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    settled RECORD;
BEGIN
    UPDATE requests SET status = p_status, finished_at_ms = p_finished_at_ms,
            model_used = COALESCE(p_model_used, model_used), http_status = p_http_status,
            error_message = p_error_message, input_tokens = p_input_tokens, output_tokens = p_output_tokens,
            cache_read_tokens = p_cache_read_tokens, cache_write_tokens = p_cache_write_tokens,
            cost_micros = p_cost, latency_ms = p_latency_ms, ttft_ms = p_ttft_ms
        WHERE request_id = p_request_id AND status = 'in_progress'
        RETURNING project_id, reserved_micros, day_start, week_start, month_start INTO settled;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    PERFORM 1 FROM period_totals
        WHERE project_id = settled.project_id AND ((kind = 'day' AND period_start = settled.day_start)
            OR (kind = 'week' AND period_start = settled.week_start)
            OR (kind = 'month' AND period_start = settled.month_start))
        ORDER BY kind FOR UPDATE;
    UPDATE period_totals SET reserved_micros = reserved_micros - settled.reserved_micros,
            spent_micros = spent_micros + p_cost
        WHERE project_id = settled.project_id AND ((kind = 'day' AND period_start = settled.day_start)
            OR (kind = 'week' AND period_start = settled.week_start)
            OR (kind = 'month' AND period_start = settled.month_start));
    RETURN TRUE;
END;
$$;
