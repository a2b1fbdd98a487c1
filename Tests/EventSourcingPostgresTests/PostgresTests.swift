import ESTestTags
import Testing

/// Every PostgreSQL test of this target, one at a time: they share one server, several
/// measure timing or concurrency, and running them side by side would blur both.
/// Left out (with one loud line) when no server is configured, unless CI=true.
@Suite("PostgreSQL store", .serialized, .enabled(if: PostgresTestServer.available), .tags(.postgres))
struct PostgresTests {}
