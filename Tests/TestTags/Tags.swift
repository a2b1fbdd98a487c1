import Testing

/// The tags of this package's tests, declared once for every test target. Run a subset with
/// `swift test --filter` / `--skip` on the tag (see README, "Testing").
extension Tag {
    /// Needs the PostgreSQL server named by `ES_POSTGRES_URL` (scripts/test.sh starts one).
    @Tag public static var postgres: Self
    /// Takes seconds rather than milliseconds (large stores, timeouts, many rounds).
    @Tag public static var slow: Self
    /// Starts child processes (the `es-test-agent` or `esctl`), which must be built first.
    @Tag public static var multiProcess: Self
    /// The test kit's conformance suites run against the library's own backends.
    @Tag public static var conformance: Self
}
