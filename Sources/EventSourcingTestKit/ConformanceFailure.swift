import EventSourcing
import Foundation
import KeyManagement

/// One behaviour of a conformance suite that a recorder or key store did not show.
///
/// Names the suite and the behaviour, what was expected and what was seen. It never holds key
/// bytes: the suites store only their own made-up wrapped keys, and describe them by scope,
/// version, master-key id and length.
public struct ConformanceFailure: Error, Sendable, CustomStringConvertible {
    /// The suite, e.g. `"RecorderConformance"`.
    public var suite: String
    /// The behaviour's name, the `rawValue` of the suite's `Behaviour`.
    public var behaviour: String
    /// What the suite expected.
    public var expected: String
    /// What it saw instead.
    public var observed: String
    /// Where in the suite the check failed.
    public var file: String
    /// The line of that check.
    public var line: Int

    /// Creates a failure.
    public init(suite: String, behaviour: String, expected: String, observed: String,
                file: String = #fileID, line: Int = #line) {
        self.suite = suite
        self.behaviour = behaviour
        self.expected = expected
        self.observed = observed
        self.file = file
        self.line = line
    }

    public var description: String {
        "\(suite).\(behaviour): expected \(expected); observed \(observed) (\(file):\(line))"
    }
}

/// Every failed behaviour of one `run()`, in the order the suite checks them.
public struct ConformanceFailures: Error, Sendable, CustomStringConvertible {
    /// The failures, at least one.
    public var failures: [ConformanceFailure]

    /// Creates the error.
    public init(_ failures: [ConformanceFailure]) { self.failures = failures }

    /// The names of the behaviours that failed.
    public var behaviours: [String] { failures.map(\.behaviour) }

    public var description: String {
        "\(failures.count) conformance failure(s):\n" + failures.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// The checks a behaviour makes; each failed check throws a ``ConformanceFailure``.
struct Checker: Sendable {
    let suite: String
    let behaviour: String

    func fail(expected: String, observed: String, file: String = #fileID, line: Int = #line) -> ConformanceFailure {
        ConformanceFailure(suite: suite, behaviour: behaviour, expected: expected, observed: observed, file: file, line: line)
    }

    /// Throws unless `observed == expected`.
    func equal<T: Equatable>(_ observed: T, _ expected: T, _ what: String,
                             describe: (T) -> String = { "\($0)" },
                             file: String = #fileID, line: Int = #line) throws(ConformanceFailure) {
        guard observed != expected else { return }
        throw fail(expected: "\(what) = \(describe(expected))", observed: describe(observed), file: file, line: line)
    }

    /// Throws unless `condition` holds.
    func require(_ condition: Bool, _ expected: String, observed: @autoclosure () -> String = "it did not",
                 file: String = #fileID, line: Int = #line) throws(ConformanceFailure) {
        guard !condition else { return }
        throw fail(expected: expected, observed: observed(), file: file, line: line)
    }

    /// Runs `body`, which must throw an ``EventSourcingError`` with `code`; returns that error.
    func eventSourcingError<T>(_ code: EventSourcingError.Code, _ operation: String,
                               file: String = #fileID, line: Int = #line,
                               _ body: () async throws -> T) async throws -> EventSourcingError {
        try await thrown("EventSourcingError", code, operation, file: file, line: line, code: \.code, message: \.message, body)
    }

    /// Runs `body`, which must throw a ``KeyManagementError`` with `code`; returns that error.
    func keyManagementError<T>(_ code: KeyManagementError.Code, _ operation: String,
                               file: String = #fileID, line: Int = #line,
                               _ body: () async throws -> T) async throws -> KeyManagementError {
        try await thrown("KeyManagementError", code, operation, file: file, line: line, code: \.code, message: \.message, body)
    }

    /// Runs `body`, which must throw an `E` whose code is `expected`; returns that error.
    private func thrown<E: Error, Code: Equatable, T>(_ name: String, _ expected: Code, _ operation: String,
                                                      file: String, line: Int, code: (E) -> Code,
                                                      message: (E) -> String,
                                                      _ body: () async throws -> T) async throws -> E {
        let wanted = "\(operation) throws \(name)(\(expected))"
        do {
            _ = try await body()
        } catch let e as E {
            guard code(e) == expected else {
                throw fail(expected: wanted, observed: "\(name)(\(code(e))): \(message(e))", file: file, line: line)
            }
            return e
        } catch {
            throw fail(expected: wanted, observed: "\(type(of: error)): \(error)", file: file, line: line)
        }
        throw fail(expected: wanted, observed: "it returned normally", file: file, line: line)
    }
}

/// Runs one behaviour: a failed check is rethrown as it is; any other error (the store threw
/// where it should not have) becomes a ``ConformanceFailure`` of that behaviour.
func runBehaviour(suite: String, behaviour: String, _ body: (Checker) async throws -> Void) async throws(ConformanceFailure) {
    let checker = Checker(suite: suite, behaviour: behaviour)
    do {
        try await body(checker)
    } catch let f as ConformanceFailure {
        throw f
    } catch {
        throw checker.fail(expected: "no error", observed: "\(type(of: error)): \(error)")
    }
}

/// Checks each of `behaviours` with `check`, every one of them, and throws all the failures
/// together (each suite's `run()`).
func runEach<B>(_ behaviours: [B], _ check: (B) async throws(ConformanceFailure) -> Void) async throws {
    var failures: [ConformanceFailure] = []
    for b in behaviours {
        do { try await check(b) } catch { failures.append(error) }
    }
    if !failures.isEmpty { throw ConformanceFailures(failures) }
}

/// Runs one behaviour against a fresh subject from `make`, which `close` closes afterwards,
/// also when the behaviour failed (each suite's `check(_:)`). A failure to make or close the
/// subject is a failure of the behaviour; a failed behaviour is reported before a failed close.
func checkOnFreshSubject<S>(suite: String, behaviour: String, subject what: String,
                            make: () async throws -> S, close: (S) async throws -> Void,
                            _ body: (Checker, S) async throws -> Void) async throws(ConformanceFailure) {
    let checker = Checker(suite: suite, behaviour: behaviour)
    let subject: S
    do { subject = try await make() } catch {
        throw checker.fail(expected: "makeStore() gives a fresh \(what)", observed: "\(type(of: error)): \(error)")
    }
    var failure: ConformanceFailure?
    do {
        try await runBehaviour(suite: suite, behaviour: behaviour) { c in try await body(c, subject) }
    } catch { failure = error }
    do { try await close(subject) } catch {
        if failure == nil { failure = checker.fail(expected: "close() succeeds", observed: "\(type(of: error)): \(error)") }
    }
    if let failure { throw failure }
}
