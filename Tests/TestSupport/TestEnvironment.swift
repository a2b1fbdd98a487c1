import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fresh temporary directory, removed when released.
public final class TempDir: Sendable {
    public let url: URL

    public init(_ label: String = "test") throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("es-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit {
        // A read-only test directory must be writable again before it can be removed.
        _ = chmod(url.path, 0o755)
        try? FileManager.default.removeItem(at: url)
    }

    public func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// Where the tests find what lives outside the test process.
public enum TestEnvironment {
    /// The package root, from this file's path (Tests/TestSupport/…).
    public static func packageRoot(_ filePath: String = #filePath) -> URL {
        URL(fileURLWithPath: filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// The build directory the tests run from (`.build/debug` or another configuration):
    /// the directory of the test bundle, else `<package root>/.build/debug`.
    public static func buildDirectory() throws -> URL {
        if let arg0 = ProcessInfo.processInfo.arguments.first, !arg0.isEmpty {
            let parts = URL(fileURLWithPath: arg0).standardizedFileURL.pathComponents
            if let bundle = parts.lastIndex(where: { $0.hasSuffix(".xctest") }) {
                return URL(fileURLWithPath: NSString.path(withComponents: Array(parts[..<bundle])))
            }
        }
        return packageRoot().appendingPathComponent(".build/debug")
    }

    /// The `es-test-agent` executable: next to the test runner (the build directory), else
    /// `<package root>/.build/debug/es-test-agent`.
    public static func agentPath() throws -> String {
        var candidates: [String] = []
        if let arg0 = ProcessInfo.processInfo.arguments.first, !arg0.isEmpty {
            let runner = URL(fileURLWithPath: arg0).standardizedFileURL
            // On Linux the runner is `<build dir>/X.xctest`; on macOS `<build dir>/X.xctest/Contents/MacOS/X`.
            let parts = runner.pathComponents
            if let bundle = parts.lastIndex(where: { $0.hasSuffix(".xctest") }) {
                let dir = NSString.path(withComponents: Array(parts[..<bundle]))
                candidates.append((dir as NSString).appendingPathComponent("es-test-agent"))
            }
            candidates.append(runner.deletingLastPathComponent().appendingPathComponent("es-test-agent").path)
        }
        candidates.append(packageRoot().appendingPathComponent(".build/debug/es-test-agent").path)
        if let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) { return found }
        throw ChildProcessError(description: "es-test-agent not found (looked at \(candidates.joined(separator: ", "))); "
            + "build it with `swift build --build-tests` before running the tests")
    }

}
