import ServiceLifecycle

/// In a swift-service-lifecycle `ServiceGroup`, the store stays open until the group shuts
/// down gracefully (or is cancelled), then closes. (A store over a `PostgresClient` the
/// application runs itself closes only what it owns; the client is the application's.)
extension PostgresStore: Service {
    /// Waits for graceful shutdown or cancellation, without polling, then closes the store.
    /// Returns normally either way; later calls fail with
    /// `EventSourcingError.Code.databaseUnavailable`.
    public func run() async throws {
        // Throws CancellationError on cancellation: the store is closed just the same.
        try? await gracefulShutdown()
        await close()
    }
}
