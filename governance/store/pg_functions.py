"""The PostgreSQL ledger's hot path as server-side functions (migration 2 of `pg_schema`), so a
reservation is one round trip to the database and a settlement one.

`spendfuse_reserve` takes a reservation's claims with the windows the proxy expects them in:
each counter's anchor and shape as the proxy last saw them, and each window's bounds. It locks
the counters in sorted order (code point order, COLLATE "C": Python's), checks that every
expectation still holds at the database's clock (`p_now`, or `clock_timestamp()` when NULL),
checks every claim against its window's totals, and then holds them all or none. When an
expectation does not hold (a window ended, a counter was reset, reshaped or never used) it
writes nothing and answers `stale` with the database's clock and the counters' rows: the proxy
resolves the windows again from those and calls once more (`governance.store.pg_reserve`).

`spendfuse_finish` settles, releases or charges one request: it locks the request, then its
claims in sorted order, moves each claim's hold to spend (the unit rules of
`governance.units.Unit.final_amount` and `at_expiry`, written again in SQL), and writes the
request's outcome and the contexts its answer ended. It answers false for a request already
finished, so a settlement replayed from the proxy's spool counts once.

A function is never edited once released: a change is a new migration that replaces it."""

from __future__ import annotations

from governance import money

_N = money.SUBMICRO_PER_MICRO

ISO = """
CREATE FUNCTION spendfuse_iso(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
"""

RESERVE = """
CREATE FUNCTION spendfuse_reserve(
    p_now timestamptz,
    p_scopes text[], p_anchors text[], p_shapes text[],
    c_scope text[], c_window text[], c_start timestamptz[], c_end timestamptz[],
    c_amount bigint[], c_limit bigint[], c_unit text[], c_rule text[],
    p_enforce boolean, p_record boolean,
    r_id text, r_principal text, r_provider text, r_api text, r_model text, r_stream integer,
    r_est_in bigint, r_max_out bigint, r_reserved bigint, r_decision text, r_rule text,
    r_reason text, r_price_source text, r_requested_out bigint, r_injected_out bigint,
    OUT status text, OUT db_now timestamptz,
    OUT settled bigint[], OUT held bigint[], OUT rest bigint[], OUT topups bigint[],
    OUT k_counter text[], OUT k_anchor text[], OUT k_topup bigint[], OUT k_shape text[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    n integer := coalesce(array_length(c_scope, 1), 0);
    blk integer := 0;
    i integer;
    pos integer;
    t record;
    v_decision text := r_decision;
    v_rule text := r_rule;
BEGIN
    db_now := v_now;
    settled := '{}'; held := '{}'; rest := '{}'; topups := '{}';
    -- Every counter claimed, locked in one order, so two reservations never wait in a circle.
    SELECT array_agg(c.counter ORDER BY c.counter COLLATE "C"),
           array_agg(c.anchor_at ORDER BY c.counter COLLATE "C"),
           array_agg(c.topup_micro ORDER BY c.counter COLLATE "C"),
           array_agg(c.shape ORDER BY c.counter COLLATE "C")
      INTO k_counter, k_anchor, k_topup, k_shape
      FROM (SELECT counter, anchor_at, topup_micro, shape FROM counters WHERE counter = ANY(p_scopes)
            ORDER BY counter COLLATE "C" FOR UPDATE) c;
    FOR i IN 1 .. coalesce(array_length(p_scopes, 1), 0) LOOP
        pos := array_position(k_counter, p_scopes[i]);
        IF pos IS NULL OR k_anchor[pos] IS DISTINCT FROM p_anchors[i]
           OR k_shape[pos] IS DISTINCT FROM p_shapes[i] THEN
            status := 'stale';
            RETURN;
        END IF;
    END LOOP;
    FOR i IN 1 .. n LOOP
        -- Is the window the proxy computed the one the database's clock is in?
        IF (c_start[i] IS NOT NULL AND v_now < c_start[i])
           OR (c_end[i] IS NOT NULL AND v_now >= c_end[i]) THEN
            status := 'stale';
            RETURN;
        END IF;
        SELECT x.settled, x.held, x.settled_rest INTO t FROM totals x
         WHERE x.scope = c_scope[i] AND x.window_start = c_window[i];
        settled := settled || coalesce(t.settled, 0);
        held := held || coalesce(t.held, 0);
        rest := rest || coalesce(t.settled_rest, 0);
        topups := topups || k_topup[array_position(k_counter, c_scope[i])];
        -- money.used_micro: spend plus holds, a rest below a micro-unit rounding up
        IF blk = 0 AND c_amount[i] > c_limit[i] + topups[i]
               - (settled[i] + held[i] + CASE WHEN rest[i] > 0 THEN 1 ELSE 0 END) THEN
            blk := i;
        END IF;
    END LOOP;
    IF blk > 0 AND p_enforce THEN
        status := 'refused';
        IF p_record THEN
            INSERT INTO requests (id, created_at, principal, provider, api, model, stream, est_input_tokens,
                max_output_tokens, reserved_micro, state, decision, rule, reason, price_source,
                requested_output_tokens, injected_output_tokens, counters)
            VALUES (r_id, spendfuse_iso(v_now), r_principal, r_provider, r_api, r_model, r_stream, r_est_in,
                r_max_out, 0, 'refused', 'refused', c_rule[blk], r_reason, r_price_source,
                r_requested_out, r_injected_out, NULL);
        END IF;
        RETURN;
    END IF;
    IF blk > 0 THEN  -- dry run: held regardless, recorded as a would-be refusal
        v_decision := 'dry_run';
        v_rule := coalesce(r_rule, c_rule[blk]);
    END IF;
    INSERT INTO requests (id, created_at, principal, provider, api, model, stream, est_input_tokens,
        max_output_tokens, reserved_micro, state, decision, rule, reason, price_source,
        requested_output_tokens, injected_output_tokens, counters)
    VALUES (r_id, spendfuse_iso(v_now), r_principal, r_provider, r_api, r_model, r_stream, r_est_in,
        r_max_out, r_reserved, 'held', v_decision, v_rule, r_reason, r_price_source,
        r_requested_out, r_injected_out, array_to_string(c_scope, ','));
    IF n > 0 THEN
        INSERT INTO claims (request_id, scope, window_start, amount, state, unit)
        SELECT r_id, s, w, a, 'held', u FROM unnest(c_scope, c_window, c_amount, c_unit) AS x(s, w, a, u);
        -- Totals in sorted order, as every transaction takes them.
        INSERT INTO totals AS tt (scope, window_start, settled, held)
        SELECT s, w, 0, sum(a) FROM unnest(c_scope, c_window, c_amount) AS x(s, w, a)
         GROUP BY s, w ORDER BY s COLLATE "C", w COLLATE "C"
        ON CONFLICT (scope, window_start) DO UPDATE SET held = tt.held + excluded.held;
    END IF;
    status := 'granted';
END
$$;
"""

FINISH = f"""
CREATE FUNCTION spendfuse_finish(
    p_now timestamptz, p_id text, p_cost bigint, p_sub bigint, p_state text, p_outcome text,
    p_in bigint, p_out bigint, p_cache_read bigint, p_cache_write bigint,
    p_price_source text, p_model text, x_id text[], x_tokens bigint[]
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_state text;
    v_reserved bigint;
    v_cost bigint;
    v_expired boolean;
    c record;
    v_final bigint;
    v_rest bigint;
BEGIN
    SELECT state, reserved_micro INTO v_state, v_reserved FROM requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR v_state NOT IN ('held', 'expired') THEN
        RETURN false;  -- already settled or released: settlement is idempotent
    END IF;
    v_cost := coalesce(p_cost, v_reserved);
    v_expired := v_state = 'expired';
    FOR c IN SELECT scope, window_start, amount, unit FROM claims WHERE request_id = p_id
             ORDER BY scope COLLATE "C", window_start COLLATE "C" FOR UPDATE LOOP
        v_final := CASE
            WHEN c.unit = 'usd' THEN v_cost
            WHEN c.unit = 'in_flight' OR p_state = 'released' THEN 0
            WHEN c.unit = 'tokens:input' AND p_in IS NOT NULL THEN p_in
            WHEN c.unit = 'tokens:output' AND p_out IS NOT NULL THEN p_out
            WHEN c.unit = 'tokens:total' AND p_in IS NOT NULL THEN p_in + p_out
            WHEN c.unit IN ('tokens:input', 'tokens:output', 'tokens:total', 'requests') THEN c.amount
        END;
        IF v_final IS NULL THEN
            RAISE EXCEPTION 'claim of % in unknown unit %', p_id, c.unit;  -- the hold stays until reaped
        END IF;
        v_rest := CASE WHEN c.unit = 'usd' THEN p_sub ELSE 0 END;
        -- An expired hold was already charged by the reaper (its amount; nothing in flight).
        UPDATE totals SET
            held = held - CASE WHEN v_expired THEN 0 ELSE c.amount END,
            settled = settled + v_final
                - CASE WHEN v_expired AND c.unit <> 'in_flight' THEN c.amount ELSE 0 END
                + (settled_rest + v_rest) / {_N},
            settled_rest = (settled_rest + v_rest) % {_N}
         WHERE scope = c.scope AND window_start = c.window_start;
        UPDATE claims SET amount = v_final, amount_rest = v_rest, state = 'settled'
         WHERE request_id = p_id AND scope = c.scope AND window_start = c.window_start;
    END LOOP;
    UPDATE requests SET state = p_state, outcome = p_outcome, settled_at = spendfuse_iso(v_now),
        cost_micro = v_cost, cost_submicro = p_sub, input_tokens = p_in, output_tokens = p_out,
        cache_read_tokens = p_cache_read, cache_write_tokens = p_cache_write,
        price_source = coalesce(p_price_source, price_source), model = coalesce(model, p_model)
     WHERE id = p_id;
    -- The larger size wins (`holds.context_rows`); ids sorted by the caller.
    INSERT INTO contexts AS x (id, tokens, updated_at)
    SELECT i, t, spendfuse_iso(v_now) FROM unnest(x_id, x_tokens) AS u(i, t)
    ON CONFLICT (id) DO UPDATE
        SET tokens = GREATEST(x.tokens, excluded.tokens), updated_at = excluded.updated_at;
    RETURN true;
END
$$;
"""
