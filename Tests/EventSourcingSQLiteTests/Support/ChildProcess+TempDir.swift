import ESTestSupport
import Foundation

extension ChildProcess {
    /// Runs a command to completion and returns its stdout; throws with its stderr unless it exits 0.
    static func run(_ executable: String, _ arguments: [String], in dir: TempDir) async throws -> String {
        try await run(executable, arguments, stderrPath: dir.path("stderr-\(UUID().uuidString).txt"))
    }
}
