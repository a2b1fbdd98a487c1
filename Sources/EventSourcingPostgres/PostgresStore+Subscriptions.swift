import EventSourcing
import Logging
import PostgresNIO
import Synchronization

/// Wake-ups for the notification log's subscribers (`NotificationLog.subscribe`): LISTEN/NOTIFY,
/// with a periodic re-poll behind it.
///
/// A statement-level trigger on the events table (installed on every start, see
/// ``PostgresSchema/commitNotification(_:channel:)``) calls `pg_notify` in every transaction that
/// inserts events, whoever runs it (this process, another instance, a tracked write); the server
/// delivers the notification when that transaction commits, and folds the notifications of one
/// transaction into one. Notification ids are assigned under the events table's lock, so they
/// become visible in order and a subscriber woken by a commit never skips an earlier one.
///
/// The first subscription starts one LISTEN session on a connection of the store's pool, held
/// until ``close()`` (with an injected client, one of the application's connections; a store
/// whose own pool has a single connection does not LISTEN and only polls). Each notification
/// signals ``commitSignal``. If the session dies (the server restarted, the backend was
/// terminated) it is opened again, 100 ms later at first and at most every 5 s. Notifications
/// sent while nobody listened are lost, so subscribers also read the log again at least every
/// ``Configuration/subscriptionPollInterval``, and whenever the session is (re)opened.
extension PostgresStore: CommitNotifying {
    public var commitSignal: CommitSignal {
        if !closed.load(ordering: .acquiring), usesInjectedClient || configuration.poolSize > 1 {
            listener.start { [client, commitChannel, logger, listener, executor] in
                Task(executorPreference: executor) {
                    await PostgresStore.listen(client: client, channel: commitChannel, signal: listener.signal, logger: logger)
                }
            }
        }
        return listener.signal
    }

    public var commitPollInterval: Duration? {
        max(configuration.subscriptionPollInterval, .milliseconds(10))
    }

    /// The NOTIFY channel of this store's schema (a channel name has at most 63 bytes; the schema
    /// name is a plain identifier, so this is too).
    var commitChannel: String { String(("es_commits_" + configuration.schema).prefix(63)) }

    /// Listens on `channel` until the task is cancelled, signalling each notification, and
    /// opens the session again whenever it ends.
    static func listen(client: PostgresClient, channel: String, signal: CommitSignal, logger: Logger) async {
        let backoffStart: Duration = .milliseconds(100)
        var delay = backoffStart
        let listened = ListenFlag()
        while !Task.isCancelled {
            listened.set(false)
            do {
                try await client.withConnection { connection in
                    try await connection.listen(on: channel) { notifications in
                        listened.set(true)
                        // Listening (again): commits made while nobody listened are found by the
                        // reads this wakes.
                        signal.signal()
                        for try await _ in notifications { signal.signal() }
                    }
                }
            } catch {
                if Task.isCancelled { break }
                logger.debug("the LISTEN session for the notification log's subscribers ended; it is opened again",
                             metadata: ["channel": "\(channel)", "error": "\(String(reflecting: type(of: error)))"])
            }
            // Whatever ended the session, subscribers read again (a notification may be lost).
            signal.signal()
            if listened.value { delay = backoffStart }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }
}

/// The LISTEN task of a store and the signal it wakes; started by the first subscription.
final class CommitListener: Sendable {
    private struct State {
        var task: Task<Void, Never>?
        var stopped = false
    }

    let signal = CommitSignal()
    private let state = Mutex(State())

    /// Starts the task `make` returns unless one runs or the listener was stopped.
    func start(_ make: () -> Task<Void, Never>) {
        state.withLock { s in
            guard s.task == nil, !s.stopped else { return }
            s.task = make()
        }
    }

    /// Stops the task and waits for it; wakes the subscribers (their next read fails: the store is closed).
    func stop() async {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.stopped = true
            defer { s.task = nil }
            return s.task
        }
        task?.cancel()
        await task?.value
        signal.signal()
    }

    /// Cancels the task without waiting (deinit).
    func cancel() {
        state.withLock { s -> Task<Void, Never>? in
            s.stopped = true
            return s.task
        }?.cancel()
    }

    /// Whether a LISTEN task was started (for tests).
    var isListening: Bool { state.withLock { $0.task != nil } }
}

final class ListenFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set(_ value: Bool) { flag.store(value, ordering: .relaxed) }
    var value: Bool { flag.load(ordering: .relaxed) }
}

extension PostgresSchema {
    /// A trigger that notifies `channel` once per statement inserting events, so LISTENing
    /// subscribers wake when the transaction commits. Made if missing on every start (the
    /// function is replaced); it changes no stored byte.
    static func commitNotification(_ s: String, channel: String) -> [String] {
        [
            """
            CREATE OR REPLACE FUNCTION \(s).notify_commit() RETURNS trigger LANGUAGE plpgsql AS $fn$
            BEGIN
                PERFORM pg_notify('\(channel)', '');
                RETURN NULL;
            END
            $fn$
            """,
            """
            DO $do$
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_trigger
                               WHERE tgname = 'events_notify_commit' AND tgrelid = '\(s).events'::regclass) THEN
                    CREATE TRIGGER events_notify_commit AFTER INSERT ON \(s).events
                        FOR EACH STATEMENT EXECUTE FUNCTION \(s).notify_commit();
                END IF;
            END
            $do$
            """,
        ]
    }
}
