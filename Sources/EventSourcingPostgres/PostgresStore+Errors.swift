import EventSourcing
import Foundation
import KeyManagement
import PostgresNIO
import Synchronization

extension PostgresStore {
    /// Maps driver errors to typed errors without leaking the password or query values.
    static func translate(_ error: any Error, configuration: PostgresStore.Configuration) -> any Error {
        if error is EventSourcingError || error is KeyManagementError || error is CancellationError { return error }
        if let t = error as? PostgresTransactionError {
            if let inner = t.closureError ?? t.beginError ?? t.commitError { return translate(inner, configuration: configuration) }
            return EventSourcingError(.databaseUnavailable, "PostgreSQL transaction failed")
        }
        if let d = error as? PostgresDecodingError {
            // Only a schema changed outside the library (a NOT NULL dropped, a column retyped)
            // lets a row hold this. Named by column and type, never by value.
            let what = d.code == .missingData ? "NULL" : "a \(d.postgresType) value"
            return EventSourcingError(.databaseCorrupt,
                                      "PostgreSQL returned \(what) in column \(d.columnName), which the store cannot read as \(d.targetType)")
        }
        guard let p = error as? PSQLError else {
            // NIO connect errors (refused, timed out, unresolvable) name no secrets; keep their text.
            let text = String(describing: error).replacingOccurrences(of: configuration.password ?? "\u{0}", with: "***")
            return EventSourcingError(.databaseUnavailable, "PostgreSQL at \(configuration.host):\(configuration.port): \(text)")
        }
        let where_ = "PostgreSQL at \(configuration.host):\(configuration.port)"
        if p.code == .server, let info = p.serverInfo {
            let state = info[.sqlState] ?? ""
            let message = info[.message] ?? "server error"
            let code = state.isEmpty ? nil : state
            switch state {
            case "55P03", "40P01": return EventSourcingError(.databaseLocked, "\(where_): \(message) (\(state))", storeCode: code)
            // 57014: the statement ran past statement_timeout (the operation timeout) or was
            // cancelled by an operator, like a server that did not answer.
            case "28P01", "28000", "3D000", "57P01", "57P02", "57P03", "53300", "57014":
                return EventSourcingError(.databaseUnavailable, "\(where_): \(message) (\(state))", storeCode: code)
            // Only the events' primary key is a concurrency conflict; any other unique index,
            // NOT NULL, CHECK or foreign key is a constraint violation.
            case "23505" where info[.constraintName] == "events_pkey":
                return EventSourcingError(.concurrencyConflict, "\(where_): \(message)", storeCode: code)
            case _ where state.hasPrefix("23"):
                return EventSourcingError(.constraintViolation, "\(where_): \(message) (\(state))", storeCode: code)
            // Raised by the save function: the notification ids would pass the largest bigint.
            case "ES004": return EventSourcingError(.databaseCorrupt, "\(where_): \(message)", storeCode: code)
            default: return EventSourcingError(.recorderFailure, "\(where_): \(message) (\(state))", storeCode: code)
            }
        }
        switch p.code {
        case .serverClosedConnection, .connectionError, .uncleanShutdown, .clientClosedConnection, .poolClosed:
            return EventSourcingError(.databaseUnavailable,
                "\(where_): connection lost (\(p.code)); an in-flight save may or may not have committed")
        default:
            return EventSourcingError(.databaseUnavailable, "\(where_): \(p.code)")
        }
    }
}
