import EventSourcing
import EventSourcingPostgres
import EventSourcingStores
import Testing

@Suite("Store URLs")
struct StoreURLTests {
    @Test("sqlite:PATH and sqlite://PATH name a SQLite file")
    func sqlite() throws {
        #expect(try StoreURL(parsing: "sqlite:./events.sqlite").sqlitePath == "./events.sqlite")
        #expect(try StoreURL(parsing: "sqlite:/var/lib/app/events.sqlite").sqlitePath == "/var/lib/app/events.sqlite")
        #expect(try StoreURL(parsing: "sqlite://events.sqlite").sqlitePath == "events.sqlite")
        #expect(try StoreURL(parsing: "sqlite:///abs/events.sqlite").sqlitePath == "/abs/events.sqlite")
        #expect(try StoreURL(parsing: "sqlite:x.sqlite").description == "sqlite:x.sqlite")
    }

    @Test("postgres:// and postgresql:// name a PostgreSQL database; the password is never shown")
    func postgres() throws {
        for scheme in ["postgres", "postgresql"] {
            let url = try StoreURL(parsing: "\(scheme)://shop:s3cret-pw@db.internal:6543/orders?schema=shop&sslmode=require")
            guard case .postgres(let c) = url else {
                Issue.record("\(scheme):// parsed as \(url)")
                continue
            }
            #expect(c.host == "db.internal" && c.port == 6543 && c.username == "shop" && c.database == "orders")
            #expect(c.password == "s3cret-pw" && c.schema == "shop" && c.tls == .require)
            #expect(url.sqlitePath == nil)
            #expect(!url.description.contains("s3cret-pw"))
        }
    }

    @Test("Bad URLs: typed errors that say what a store URL is, name the setting, never the password",
          arguments: [
              ("mysql://x", "unknown store URL scheme 'mysql:'"),
              ("sqlite3:events.db", "did you mean sqlite:events.db?"),
              ("SQLite://events.db", "did you mean sqlite:events.db?"),
              ("./events.sqlite", "is not a store URL: did you mean sqlite:./events.sqlite?"),
              ("sqlite:", "empty store path"),
              ("sqlite://", "empty store path"),
              ("", "empty store URL"),
              ("postgres://:pw-secret-1@host/db", "has no user name"),
              ("postgres://u:pw-secret-1@host/db?sslmode=sometimes", "unknown sslmode"),
              ("postgres://u:pw-secret-1@host/db?schema=a;drop", "plain SQL identifier"),
          ])
    func bad(url: String, phrase: String) throws {
        let error = try #require(throws: EventSourcingError.self) { try StoreURL(parsing: url, setting: "APP_STORE") }
        #expect(error.code == .invalidArgument)
        #expect(error.message.hasPrefix("APP_STORE: "), "\(error.message)")
        #expect(error.message.contains(phrase), "\(error.message)")
        #expect(!error.message.contains("pw-secret-1") && !"\(error)".contains("pw-secret-1"))
        if phrase.hasPrefix("unknown store URL") || phrase.contains("not a store URL") || phrase.hasPrefix("empty") {
            #expect(error.message.contains(StoreURL.usage))
        }
    }
}
