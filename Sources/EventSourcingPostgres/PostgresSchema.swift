import EventSourcing
import KeyManagement
import Logging
import PostgresNIO
import Synchronization

/// The DDL and the save function. `s` is a validated plain identifier (see PostgresStore.Configuration).
enum PostgresSchema {
    /// The schema-version table, made before anything else (it says which migrations ran).
    static func metaTable(_ s: String) -> String {
        "CREATE TABLE IF NOT EXISTS \(s).es_meta (key text PRIMARY KEY, value bigint NOT NULL)"
    }

    /// Unencrypted events, counted without a scan (encrypted rows never enter the index).
    /// Added after version 1 was first released, so made if missing on every start.
    static func plaintextIndex(_ s: String) -> String {
        "CREATE INDEX IF NOT EXISTS events_plaintext ON \(s).events (notification_id) WHERE key_scope IS NULL"
    }

    /// Tracking records (PostgresStore+Tracking.swift): one row per name holding the highest
    /// notification id its follower processed. Added after version 1 was first released, so
    /// made if missing on every start.
    static func trackingTable(_ s: String) -> String {
        "CREATE TABLE IF NOT EXISTS \(s).tracking (name text PRIMARY KEY, notification_id bigint NOT NULL)"
    }

    static func version1(_ s: String) -> [String] {
        [
            """
            CREATE TABLE \(s).events (
                notification_id bigint NOT NULL,
                originator_id uuid NOT NULL,
                originator_version bigint NOT NULL,
                topic text NOT NULL,
                state bytea NOT NULL,
                key_scope text,
                PRIMARY KEY (originator_id, originator_version)
            )
            """,
            "CREATE UNIQUE INDEX events_notification_id ON \(s).events (notification_id)",
            "CREATE INDEX events_key_scope ON \(s).events (key_scope) WHERE key_scope IS NOT NULL",
            """
            CREATE TABLE \(s).snapshots (
                originator_id uuid NOT NULL,
                originator_version bigint NOT NULL,
                topic text NOT NULL,
                state bytea NOT NULL,
                key_scope text,
                PRIMARY KEY (originator_id, originator_version)
            )
            """,
            "CREATE INDEX snapshots_key_scope ON \(s).snapshots (key_scope) WHERE key_scope IS NOT NULL",
            """
            CREATE TABLE \(s).data_keys (
                scope text NOT NULL,
                version bigint NOT NULL,
                kek_id text NOT NULL,
                wrapped bytea NOT NULL,
                created_at double precision NOT NULL,
                PRIMARY KEY (scope, version)
            )
            """,
            """
            CREATE TABLE \(s).tombstones (
                scope text PRIMARY KEY,
                shredded_at double precision NOT NULL,
                destroyed_versions text NOT NULL
            )
            """,
            """
            CREATE TABLE \(s).master_key_checks (
                kek_id text PRIMARY KEY,
                sealed bytea NOT NULL,
                kdf text,
                created_at double precision NOT NULL
            )
            """,
        ]
    }

    /// Inserts a group of saves in one statement. Each save runs in its own subtransaction and
    /// reports `ok` (with its first notification id; its ids are contiguous), `conflict` (the
    /// events' primary key), `constraint` (any other constraint: `SQLSTATE:constraint name`),
    /// `shredded` or `key_exists`. Notification ids are max + 1, … under an EXCLUSIVE lock, so
    /// they follow commit order and a failed save leaves no gap. A group whose ids would pass
    /// the largest bigint (only a forged row can put the log there) fails whole with `ES004`.
    static func insertSavesFunction(_ s: String) -> String {
        """
        CREATE OR REPLACE FUNCTION \(s).insert_saves(
            lock_ms bigint, ev_counts int[], ids uuid[], versions bigint[], topics text[], states bytea[], scopes text[],
            key_counts int[], k_scopes text[], k_versions bigint[], k_keks text[], k_wrapped bytea[], k_created float8[])
        RETURNS TABLE (save_index int, status text, detail text, first_id bigint)
        LANGUAGE plpgsql
        -- Plan each statement once per connection: re-planning on every call cost more than running it.
        SET plan_cache_mode = force_generic_plan
        AS $fn$
        DECLARE
            next_id bigint;
            ev_off int := 0;
            k_off int := 0;
            n int;
            kn int;
            i int;
            bad text;
            violated text;
        BEGIN
            PERFORM set_config('lock_timeout', lock_ms::text, true);
            LOCK TABLE \(s).events IN EXCLUSIVE MODE;
            SELECT coalesce(max(e.notification_id), 0) INTO next_id FROM \(s).events e;
            IF next_id > 9223372036854775807 - coalesce(array_length(ids, 1), 0) THEN
                RAISE EXCEPTION USING ERRCODE = 'ES004',
                    MESSAGE = 'the events table holds notification id ' || next_id || ': no room for '
                              || array_length(ids, 1) || ' more; the row was not written by this library';
            END IF;
            -- Fast path: every save of the group at once, set-based, in one subtransaction. If
            -- anything is refused (a tombstone, an existing key, a conflict), it is undone and
            -- the saves go one by one below, each failing alone with its reason.
            BEGIN
                IF EXISTS (SELECT 1 FROM \(s).tombstones t WHERE t.scope = ANY (k_scopes) OR t.scope = ANY (scopes)) THEN
                    RAISE EXCEPTION USING ERRCODE = 'ES000';
                END IF;
                INSERT INTO \(s).data_keys (scope, version, kek_id, wrapped, created_at)
                    SELECT * FROM unnest(k_scopes, k_versions, k_keks, k_wrapped, k_created);
                INSERT INTO \(s).events (notification_id, originator_id, originator_version, topic, state, key_scope)
                    SELECT next_id + u.ord, u.id, u.v, u.t, u.st, NULLIF(u.sc, '')
                    FROM unnest(ids, versions, topics, states, scopes) WITH ORDINALITY AS u(id, v, t, st, sc, ord);
                -- Nothing can fail after this point: the rows below are the result.
                RETURN QUERY
                    SELECT (g.i - 1)::int, 'ok'::text, NULL::text,
                           CASE WHEN g.n > 0 THEN next_id + g.before + 1 END
                    FROM (SELECT c.i, c.n, (sum(c.n) OVER (ORDER BY c.i) - c.n) AS before
                          FROM unnest(ev_counts) WITH ORDINALITY AS c(n, i)) g
                    ORDER BY g.i;
                RETURN;
            EXCEPTION
                WHEN SQLSTATE 'ES000' OR integrity_constraint_violation THEN NULL;
            END;
            FOR i IN 1 .. coalesce(array_length(ev_counts, 1), 0) LOOP
                n := ev_counts[i];
                kn := key_counts[i];
                save_index := i - 1;
                status := 'ok';
                detail := NULL;
                first_id := NULL;
                BEGIN
                    IF kn > 0 THEN
                        SELECT t.scope INTO bad FROM \(s).tombstones t
                            WHERE t.scope = ANY (k_scopes[k_off + 1 : k_off + kn]) LIMIT 1;
                        IF bad IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = 'ES002', MESSAGE = bad; END IF;
                        SELECT k.scope INTO bad FROM \(s).data_keys k
                            JOIN unnest(k_scopes[k_off + 1 : k_off + kn], k_versions[k_off + 1 : k_off + kn]) AS u(sc, v)
                            ON k.scope = u.sc AND k.version = u.v LIMIT 1;
                        IF bad IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = 'ES003', MESSAGE = bad; END IF;
                        INSERT INTO \(s).data_keys (scope, version, kek_id, wrapped, created_at)
                            SELECT * FROM unnest(k_scopes[k_off + 1 : k_off + kn], k_versions[k_off + 1 : k_off + kn],
                                                 k_keks[k_off + 1 : k_off + kn], k_wrapped[k_off + 1 : k_off + kn],
                                                 k_created[k_off + 1 : k_off + kn]);
                    END IF;
                    IF n > 0 THEN
                        SELECT t.scope INTO bad FROM \(s).tombstones t
                            WHERE t.scope = ANY (scopes[ev_off + 1 : ev_off + n]) LIMIT 1;
                        IF bad IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = 'ES002', MESSAGE = bad; END IF;
                        -- A conflict (with a stored event or within the save) is the primary key's
                        -- unique violation, handled below; no separate look-up on the happy path.
                        INSERT INTO \(s).events (notification_id, originator_id, originator_version, topic, state, key_scope)
                            SELECT next_id + u.ord, u.id, u.v, u.t, u.st, NULLIF(u.sc, '')
                            FROM unnest(ids[ev_off + 1 : ev_off + n], versions[ev_off + 1 : ev_off + n],
                                        topics[ev_off + 1 : ev_off + n], states[ev_off + 1 : ev_off + n],
                                        scopes[ev_off + 1 : ev_off + n]) WITH ORDINALITY AS u(id, v, t, st, sc, ord);
                        first_id := next_id + 1;
                        next_id := next_id + n;
                    END IF;
                EXCEPTION
                    WHEN SQLSTATE 'ES001' THEN status := 'conflict'; detail := SQLERRM;
                    WHEN SQLSTATE 'ES002' THEN status := 'shredded'; detail := SQLERRM;
                    WHEN SQLSTATE 'ES003' THEN status := 'key_exists'; detail := SQLERRM;
                    WHEN unique_violation THEN
                        GET STACKED DIAGNOSTICS bad = PG_EXCEPTION_DETAIL, violated = CONSTRAINT_NAME;
                        IF violated = 'data_keys_pkey' THEN
                            -- The same key version twice within this save.
                            status := 'key_exists';
                            detail := k_scopes[k_off + 1];
                        ELSIF violated = 'events_pkey' THEN
                            -- "Key (originator_id, originator_version)=(<uuid>, <version>) already exists."
                            status := 'conflict';
                            detail := (SELECT m[1] || ':' || m[2] FROM regexp_match(bad, '=\\(([0-9a-f-]{36}), (-?[0-9]+)\\)') AS m);
                        ELSE
                            -- Another unique index (added to the schema outside the library).
                            status := 'constraint';
                            detail := '23505:' || coalesce(violated, '');
                        END IF;
                    WHEN integrity_constraint_violation THEN
                        -- NOT NULL, CHECK, foreign key, exclusion: not a concurrency conflict.
                        GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
                        status := 'constraint';
                        detail := SQLSTATE || ':' || coalesce(violated, '');
                END;
                RETURN NEXT;
                ev_off := ev_off + n;
                k_off := k_off + kn;
            END LOOP;
        END
        $fn$
        """
    }

    /// The read of whole aggregates, written once for the server function (a group of gets)
    /// and the prepared statement (one get; ``ReadAggregateStatement``): `requests` yields rows
    /// `(id, gt, lte, n)`; the result is each request's events with `gt < version <= lte` as
    /// `(n, version, topic, state, NULL, NULL)`, then the data keys of the scopes those events
    /// are sealed with as `(0, version, kek_id, wrapped, scope, created_at)`, ordered by the
    /// first two columns. `prefix` is `schema.` or empty (tables found through `search_path`).
    static func readAggregatesQuery(requests: String, prefix: String) -> String {
        """
        WITH r AS (\(requests)),
            ev AS (SELECT r.n, e.originator_version, e.topic, e.state, e.key_scope FROM r
                   JOIN \(prefix)events e
                   ON e.originator_id = r.id AND e.originator_version > r.gt AND e.originator_version <= r.lte)
            SELECT ev.n, ev.originator_version, ev.topic, ev.state, NULL::text, NULL::double precision FROM ev
            UNION ALL
            SELECT 0::bigint, k.version, k.kek_id, k.wrapped, k.scope, k.created_at FROM \(prefix)data_keys k
            -- Looked up through the primary key: the cost follows the scopes read, never the
            -- size of the table (an IN (subquery) here was planned as a scan of every key).
            WHERE k.scope = ANY (ARRAY(SELECT DISTINCT ev.key_scope FROM ev WHERE ev.key_scope IS NOT NULL))
            ORDER BY 1, 2
        """
    }

    /// Reads whole aggregates for a group of gets in one call: row `i` (1-based) of the request
    /// arrays gets its events with `gt < version <= lte`, in version order; rows with `i = 0` are
    /// the data keys of the scopes those events are sealed with (`topic` holds the KEK id).
    /// A function rather than a statement so the server plans it once per connection.
    static func readAggregatesFunction(_ s: String) -> String {
        """
        CREATE OR REPLACE FUNCTION \(s).read_aggregates(ids uuid[], gts bigint[], ltes bigint[])
        RETURNS TABLE (r_i bigint, r_version bigint, r_topic text, r_state bytea, r_scope text, r_created double precision)
        LANGUAGE plpgsql STABLE
        -- Plan the query once per connection: re-planning it on every call cost three times its run.
        SET plan_cache_mode = force_generic_plan
        AS $fn$
        BEGIN
            RETURN QUERY
            \(readAggregatesQuery(requests: "SELECT * FROM unnest(ids, gts, ltes) WITH ORDINALITY AS u(id, gt, lte, n)", prefix: s + "."));
        END
        $fn$
        """
    }
}

extension PostgresStore {
    /// The statements every start (re)creates, in order: the tables added since version 1, the
    /// server functions and the commit-notification trigger.
    func startStatements() -> [String] {
        let s = schema
        return [PostgresSchema.plaintextIndex(s), PostgresSchema.trackingTable(s),
                PostgresSchema.insertSavesFunction(s), PostgresSchema.readAggregatesFunction(s)]
            + PostgresSchema.commitNotification(s, channel: commitChannel)
            + PostgresSchema.keyChangeFunctions(s)
            + PostgresSchema.trackingFunctions(s)
    }

    /// A fingerprint of ``startStatements()`` (the first 8 bytes of their SHA-256), kept in
    /// `es_meta`: a start whose statements are those already installed skips them.
    func startFingerprint() -> Int64 {
        let digest = Digest.sha256(Array(startStatements().joined(separator: "\u{0}").utf8))
        return digest.prefix(8).reduce(Int64(0)) { $0 << 8 | Int64($1) }
    }

    /// Whether the schema is current: its version, the fingerprint of the start statements,
    /// and the tracking table and commit trigger still there. One query; any error (no schema
    /// yet) means no.
    func schemaIsCurrent() async -> Bool {
        let s = schema
        let fingerprint = startFingerprint()
        let query = PostgresQuery(unsafeSQL: """
            SELECT (SELECT value FROM \(s).es_meta WHERE key = 'schema_version') = \(PostgresStore.schemaVersion)
               AND (SELECT value FROM \(s).es_meta WHERE key = 'start_fingerprint') = \(fingerprint)
               AND to_regclass('\(s).tracking') IS NOT NULL
               AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tombstones_key_change' AND tgrelid = to_regclass('\(s).tombstones'))
               AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'events_notify_commit' AND tgrelid = to_regclass('\(s).events'))
            """)
        do {
            return try await run { client in
                var current = false
                for try await v in try await client.query(query, logger: self.logger).decode(Bool?.self) { current = v ?? false }
                return current
            }
        } catch {
            return false
        }
    }

    func migrate() async throws {
        // Most starts find the schema as this version of the library leaves it: one query.
        if await schemaIsCurrent() { return }
        let s = schema
        let statements = startStatements()
        let fingerprint = startFingerprint()
        _ = try await run { connection in
            try await connection.withTransaction(logger: self.logger) { conn in
                try await conn.query("SELECT pg_advisory_xact_lock(hashtext(\("eventsourcing-schema:" + self.configuration.schema)))",
                                     logger: self.logger)
                try await conn.query("CREATE SCHEMA IF NOT EXISTS \(unescaped: s)", logger: self.logger)
                try await conn.query(PostgresQuery(unsafeSQL: PostgresSchema.metaTable(s)), logger: self.logger)
                var stored: Int64?
                for try await v in try await conn.query(
                    "SELECT value FROM \(unescaped: s).es_meta WHERE key = 'schema_version'", logger: self.logger).decode(Int64.self) {
                    stored = v
                }
                // Only this function writes the version, after the tables, in one transaction.
                if let stored, stored < 1 {
                    throw EventSourcingError(.databaseCorrupt,
                        "schema \(s) has schema_version \(stored), not a schema version (1 or more)")
                }
                let found = stored.map { Int(clamping: $0) } ?? 0
                if found > PostgresStore.schemaVersion {
                    throw EventSourcingError(.unsupportedSchema,
                        "schema \(s) has version \(found); this library reads up to \(PostgresStore.schemaVersion). Upgrade the library.")
                }
                if found < 1 {
                    for statement in PostgresSchema.version1(s) {
                        try await conn.query(PostgresQuery(unsafeSQL: statement), logger: self.logger)
                    }
                }
                if found < 2 {
                    for statement in PostgresSchema.version2(s) {
                        try await conn.query(PostgresQuery(unsafeSQL: statement), logger: self.logger)
                    }
                }
                // The functions are replaced whenever they changed, so a fix to them needs no migration.
                for statement in statements {
                    try await conn.query(PostgresQuery(unsafeSQL: statement), logger: self.logger)
                }
                try await conn.query(
                    "INSERT INTO \(unescaped: s).es_meta (key, value) VALUES ('start_fingerprint', \(fingerprint)) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    logger: self.logger)
                try await conn.query(
                    "INSERT INTO \(unescaped: s).es_meta (key, value) VALUES ('schema_version', \(Int64(PostgresStore.schemaVersion))) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    logger: self.logger)
            }
        }
    }
}
