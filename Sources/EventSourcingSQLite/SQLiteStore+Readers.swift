import EventSourcing
import Foundation
import Synchronization

extension SQLiteStore {
    // MARK: Readers

    /// Runs `body` on a pooled reader connection, on the caller's thread: reads are short,
    /// and a thread hand-over would cost more than the query.
    func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        guard !closed.load(ordering: .acquiring) else {
            throw EventSourcingError(.databaseUnavailable, "the store at \(path) is closed")
        }
        let box = try takeReader()
        defer { giveReader(box) }
        guard let readOnlyAccess else { return try body(box.connection) }
        guard hasSchema else {
            throw EventSourcingError(.databaseUnavailable,
                                     "\(path) holds no event store yet (a new, empty database), and a read-only store creates none")
        }
        try readOnlyAccess.checkUnchanged(path)
        let result = try body(box.connection)
        try readOnlyAccess.checkUnchanged(path)
        return result
    }

    private func takeReader() throws -> ConnectionBox {
        if let b = readers.withLock({ $0.popLast() }) { return b }
        let conn = if let readOnlyAccess {
            try SQLiteConnection(readOnlyURI: readOnlyAccess.uri, path: path, busyTimeoutMillis: busyMillis)
        } else {
            try SQLiteConnection(path: path, create: false, busyTimeoutMillis: busyMillis)
        }
        try conn.execute("PRAGMA query_only = ON")
        return ConnectionBox(conn)
    }

    private func giveReader(_ b: ConnectionBox) {
        let kept = readers.withLock { r -> Bool in
            guard r.count < configuration.readers, !closed.load(ordering: .acquiring) else { return false }
            r.append(b)
            return true
        }
        if !kept { b.connection.close() }
    }
}
