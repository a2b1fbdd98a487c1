import EventSourcing
#if PostgreSQL
import EventSourcingPostgres
#endif
import Foundation

/// Where a store is: a SQLite file or a PostgreSQL database, parsed from a store URL.
///
/// The accepted forms are `sqlite:PATH` and `sqlite://PATH` (a relative or absolute file
/// path; `sqlite:///abs/path` is the absolute path `/abs/path`), and
/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE?…` or `postgresql://…` with the
/// parameters `PostgresStore.Configuration.init(url:)` reads. The same
/// strings `esctl --store` takes.
///
/// PostgreSQL URLs need the package trait `PostgreSQL` (on by default). A build without it
/// (`--disable-default-traits`) has no `postgres` case and refuses such URLs with a message
/// that says how to build with it.
public enum StoreURL: Sendable, CustomStringConvertible {
    /// A SQLite database file.
    case sqlite(path: String)
    #if PostgreSQL
    /// A PostgreSQL database (its password, if any, is never shown in `description`).
    case postgres(PostgresStore.Configuration)
    #endif

    /// Why a build without the package trait `PostgreSQL` refuses a PostgreSQL store.
    static let noPostgreSQL = "this build has no PostgreSQL support: it was built without the package trait "
        + "PostgreSQL (on by default; --disable-default-traits leaves it out). Build with the default traits, "
        + "or with --traits PostgreSQL"

    /// Whether this build opens PostgreSQL stores (the package trait `PostgreSQL`).
    public static var supportsPostgreSQL: Bool {
        #if PostgreSQL
        true
        #else
        false
        #endif
    }

    /// How the accepted forms are described in errors.
    public static let usage = "a store URL is sqlite:PATH or postgres://USER@HOST:PORT/DB"

    /// Parses a store URL.
    /// - Parameters:
    ///   - url: the store URL: `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`.
    ///   - setting: the name of the setting the URL came from (an environment variable or a
    ///     configuration key), put at the front of an error's message so the operator knows what
    ///     to fix; nil for none.
    /// - Throws: `EventSourcingError` `.invalidArgument`: an unknown scheme (with a
    ///   hint when it looks like a misspelt `sqlite:`), a bare path (with the `sqlite:` spelling to
    ///   use), an empty SQLite path, or what `PostgresStore.Configuration.init(url:)`
    ///   refuses. The message never contains a password.
    public init(parsing url: String, setting: String? = nil) throws {
        func refuse(_ message: String) -> EventSourcingError {
            EventSourcingError(.invalidArgument, setting.map { "\($0): " + message } ?? message)
        }
        if url.hasPrefix("sqlite:") {
            let path = url.hasPrefix("sqlite://") ? String(url.dropFirst("sqlite://".count)) : String(url.dropFirst("sqlite:".count))
            guard !path.isEmpty else { throw refuse("empty store path (\(Self.usage))") }
            self = .sqlite(path: path)
            return
        }
        if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
            #if PostgreSQL
            do {
                self = .postgres(try PostgresStore.Configuration(url: url))
            } catch let error as EventSourcingError {
                // PostgresStore.Configuration's messages never contain the password.
                throw refuse(error.message)
            }
            return
            #else
            // The URL itself (it may hold a password) is not repeated.
            throw refuse(Self.noPostgreSQL)
            #endif
        }
        // A scheme that is not ours ("mysql:", "sqlite3:"), or a bare path (the likely intent is a
        // SQLite file).
        if let colon = url.firstIndex(of: ":"), !url[..<colon].contains("/"), !url[..<colon].contains(".") {
            let scheme = url[..<colon]
            let hint = scheme.lowercased().hasPrefix("sqlite")
                ? "; did you mean sqlite:" + url[url.index(after: colon)...].drop { $0 == "/" } + "?" : ""
            throw refuse("unknown store URL scheme '\(scheme):' (\(Self.usage))\(hint)")
        }
        guard !url.isEmpty else { throw refuse("empty store URL (\(Self.usage))") }
        throw refuse("'\(url)' is not a store URL: did you mean sqlite:\(url)? (\(Self.usage))")
    }

    /// The SQLite file's path; nil for PostgreSQL.
    public var sqlitePath: String? {
        if case .sqlite(let path) = self { return path }
        return nil
    }

    /// The URL, with a PostgreSQL password shown as `***`.
    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite:" + path
        #if PostgreSQL
        case .postgres(let configuration): configuration.description
        #endif
        }
    }
}
