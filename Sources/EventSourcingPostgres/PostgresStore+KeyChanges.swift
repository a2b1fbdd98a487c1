import EventSourcing
import Foundation
import KeyManagement
import PostgresNIO

/// The key-change feed (``KeyChangeFeed``) and the encryption counts (``KeyUsageCounter``):
/// schema 2.
///
/// `key_changes` gets a row from triggers, in the same transaction as the change: an insert
/// into `tombstones` (kind `shred`) and an insert into `data_keys` above version 1 (kind
/// `rotate`). `record_key_change` numbers rows `max(seq) + 1` under an EXCLUSIVE lock on
/// `key_changes` held to the commit, so positions become visible in order (a sequence would
/// let a later position commit first, and a reader that saw it would skip the earlier one
/// for good). Each insert prunes rows ``KeyChange/retained`` or more positions behind it.
/// `key_usage` holds the encryptions reserved per key version; the shred trigger deletes the
/// scope's rows. Neither holds key material or anything but scope ids.
///
/// Other processes learn of changes by polling the newest position (one index look-up) at most
/// once per refresh interval of their key ring; no LISTEN session is needed, and none can
/// lose a change.
extension PostgresSchema {
    static func version2(_ s: String) -> [String] {
        [
            """
            CREATE TABLE IF NOT EXISTS \(s).key_changes (
                seq bigint PRIMARY KEY,
                scope text NOT NULL,
                kind text NOT NULL,
                at double precision NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS \(s).key_usage (
                scope text NOT NULL,
                version bigint NOT NULL,
                reserved bigint NOT NULL,
                PRIMARY KEY (scope, version)
            )
            """,
        ]
    }

    /// The function that records a change and the triggers that call it. Made on every start
    /// (the functions are replaced, the triggers made if missing).
    static func keyChangeFunctions(_ s: String) -> [String] {
        [
            """
            CREATE OR REPLACE FUNCTION \(s).record_key_change(p_scope text, p_kind text, p_at double precision)
            RETURNS void LANGUAGE plpgsql AS $fn$
            DECLARE
                n bigint;
            BEGIN
                LOCK TABLE \(s).key_changes IN EXCLUSIVE MODE;
                SELECT coalesce(max(seq), 0) + 1 INTO n FROM \(s).key_changes;
                INSERT INTO \(s).key_changes (seq, scope, kind, at) VALUES (n, p_scope, p_kind, p_at);
                DELETE FROM \(s).key_changes WHERE seq <= n - \(KeyChange.retained);
            END
            $fn$
            """,
            """
            CREATE OR REPLACE FUNCTION \(s).key_change_shred() RETURNS trigger LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM \(s).record_key_change(NEW.scope, 'shred', NEW.shredded_at);
                DELETE FROM \(s).key_usage WHERE scope = NEW.scope;
                RETURN NULL;
            END
            $fn$
            """,
            """
            CREATE OR REPLACE FUNCTION \(s).key_change_rotate() RETURNS trigger LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM \(s).record_key_change(NEW.scope, 'rotate', NEW.created_at);
                RETURN NULL;
            END
            $fn$
            """,
            """
            DO $do$
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_trigger
                               WHERE tgname = 'tombstones_key_change' AND tgrelid = '\(s).tombstones'::regclass) THEN
                    CREATE TRIGGER tombstones_key_change AFTER INSERT ON \(s).tombstones
                        FOR EACH ROW EXECUTE FUNCTION \(s).key_change_shred();
                END IF;
                IF NOT EXISTS (SELECT 1 FROM pg_trigger
                               WHERE tgname = 'data_keys_key_change' AND tgrelid = '\(s).data_keys'::regclass) THEN
                    CREATE TRIGGER data_keys_key_change AFTER INSERT ON \(s).data_keys
                        FOR EACH ROW WHEN (NEW.version > 1) EXECUTE FUNCTION \(s).key_change_rotate();
                END IF;
            END
            $do$
            """,
        ]
    }
}

extension PostgresStore: KeyChangeFeed {
    /// The statement that records a key change in the caller's transaction (for operations that
    /// change keys without a tombstone or a new version: retiring old versions records kind
    /// `retire`). Bind the scope, the kind's raw value and the time (seconds since 1970).
    static func recordKeyChange(scope: String, kind: KeyChangeKind, at time: Date, schema s: String) -> PostgresQuery {
        "SELECT \(unescaped: s).record_key_change(\(scope), \(kind.rawValue), \(time.timeIntervalSince1970))"
    }

    public func keyChangeMark() async throws -> Int64 {
        let s = schema
        return try await run { client in
            var mark: Int64 = 0
            for try await v in try await client.query("SELECT max(seq) FROM \(unescaped: s).key_changes",
                                                      logger: self.logger).decode(Int64?.self) {
                mark = v ?? 0
            }
            return mark
        }
    }

    public func keyChanges(after seq: Int64, limit: Int) async throws -> KeyChangePage {
        let s = schema
        let lim = Int64(min(max(1, limit), 10_000))
        return try await run { client in
            var gap = false
            for try await (lo, hi) in try await client.query(
                "SELECT min(seq), max(seq) FROM \(unescaped: s).key_changes", logger: self.logger).decode((Int64?, Int64?).self) {
                if let lo, let hi { gap = hi > seq && lo > seq &+ 1 }
            }
            if gap { return KeyChangePage(changes: [], gap: true) }
            var out: [KeyChange] = []
            for try await (n, scope, kind, at) in try await client.query("""
                SELECT seq, scope, kind, at FROM \(unescaped: s).key_changes WHERE seq > \(seq) ORDER BY seq LIMIT \(lim)
                """, logger: self.logger).decode((Int64, String, String, Double).self) {
                // An unknown kind (a newer library, or a forged row) evicts the scope's keys.
                out.append(KeyChange(seq: n, scope: scope, kind: KeyChangeKind(rawValue: kind) ?? .retire,
                                     at: Date(timeIntervalSince1970: at)))
            }
            return KeyChangePage(changes: out, gap: false)
        }
    }
}

extension PostgresStore: KeyUsageCounter {
    public func reserveEncryptions(scope: String, version: UInt32, count: UInt64, limit: UInt64) async throws -> UInt64? {
        // A version without a row has its first block reserved implicitly (KeyUsage.firstBlock).
        guard let initial = KeyUsage.initialTotal(count: count, limit: limit), let i = Int64(exactly: initial),
              let c = Int64(exactly: count), let l = Int64(exactly: limit) else { return nil }
        let s = schema
        return try await run { client in
            var total: UInt64?
            for try await v in try await client.query("""
                INSERT INTO \(unescaped: s).key_usage AS u (scope, version, reserved) VALUES (\(scope), \(Int64(version)), \(i))
                ON CONFLICT (scope, version) DO UPDATE SET reserved = u.reserved + \(c)
                WHERE u.reserved <= \(l) - \(c)
                RETURNING reserved
                """, logger: self.logger).decode(Int64.self) {
                total = UInt64(exactly: v)
            }
            return total
        }
    }

    public func reservedEncryptions(scope: String) async throws -> [UInt32: UInt64] {
        let s = schema
        return try await run { client in
            var out: [UInt32: UInt64] = [:]
            for try await (v, n) in try await client.query(
                "SELECT version, reserved FROM \(unescaped: s).key_usage WHERE scope = \(scope)",
                logger: self.logger).decode((Int64, Int64).self) {
                guard let version = UInt32(exactly: v), let count = UInt64(exactly: n) else {
                    throw KeyManagementError(.storeFailure,
                        "a key_usage row holds version \(v) with \(n) encryptions, not a key version and a count", scope: scope)
                }
                out[version] = count
            }
            return out
        }
    }
}
