import ESTestSupport
import EventSourcing
import Foundation
import KeyManagement
import Testing

/// The README's synopsis, compiled and run here so it can never rot. The block between the
/// markers must equal the README's first ```swift block (checked below).
@Suite("README synopsis")
struct SynopsisTests {
    @Test("The synopsis runs: save, get, get at a version, read the notification log")
    func synopsisRuns() async throws {
        // synopsis:begin
        struct Dog: Aggregate {
            static var typeName: String { "Dog" }   // stable: topics are "Dog.registered", …

            enum Event: Codable, Sendable {
                case registered(name: String)
                case addedTrick(String)
            }

            var name = ""
            var tricks: [String] = []

            mutating func apply(_ event: Event) {
                switch event {
                case .registered(let name): self.name = name
                case .addedTrick(let trick): tricks.append(trick)
                }
            }
        }

        // Events are compressed and encrypted under the dog's own data key, which is
        // wrapped by the master key. Swap InMemoryRecorder for SQLiteStore to persist.
        let keyring = try await Keyring.open(store: InMemoryKeyStore(), masterKeys: [MasterKey.generate()])
        let recorder = InMemoryRecorder()
        let app = Application(recorder: recorder, snapshots: recorder, mapper: Mapper(keyring: keyring))

        var dog = try AggregateRoot<Dog>(.registered(name: "Fido"))
        try dog.record(.addedTrick("roll over"))
        try dog.record(.addedTrick("play dead"))
        try await app.save(&dog)

        let fido = try await app.repository.get(Dog.self, id: dog.id)
        print(fido.name, fido.tricks)              // Fido ["roll over", "play dead"]

        let puppy = try await app.repository.get(Dog.self, id: dog.id, version: 2)
        print(puppy.tricks)                        // ["roll over"]

        for item in try await app.notificationLog.read(start: 1, limit: 10) {
            let event = try item.event(as: Dog.self)
            print(item.notification.id, item.notification.topic, event.event)
        }
        // synopsis:end

        #expect(fido.name == "Fido")
        #expect(fido.tricks == ["roll over", "play dead"])
        #expect(fido.version == 3)
        #expect(puppy.tricks == ["roll over"])
        #expect(dog.pendingEvents.isEmpty)
        let items = try await app.notificationLog.read(start: 1, limit: 10)
        #expect(items.map(\.notification.topic) == ["Dog.registered", "Dog.addedTrick", "Dog.addedTrick"])
        #expect(items.map(\.notification.id) == [1, 2, 3])
    }

    /// The README's first Swift block.
    static func readmeBlock() throws -> String {
        let readme = try String(contentsOf: TestEnvironment.packageRoot().appendingPathComponent("README.md"), encoding: .utf8)
        let blocks = readme.components(separatedBy: "```swift\n").dropFirst()
        return try #require(blocks.first?.components(separatedBy: "\n```").first)
    }

    @Test("The README shows exactly the synopsis code that this test runs (inside its @main wrapper)")
    func readmeMatchesTest() throws {
        let here = URL(fileURLWithPath: #filePath)
        let source = try String(contentsOf: here, encoding: .utf8)

        let lines = source.components(separatedBy: "\n")
        let begin = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "// synopsis:begin" })
        let end = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "// synopsis:end" })
        let body = lines[(begin + 1)..<end]
        let indent = body.filter { !$0.isEmpty }.map { $0.prefix { $0 == " " }.count }.min() ?? 0
        let synopsis = body.map { $0.isEmpty ? "" : String($0.dropFirst(indent)) }.joined(separator: "\n")

        // The README wraps the top-level statements in `@main struct … { static func main() … }`.
        var readme = try Self.readmeBlock().components(separatedBy: "\n").filter { !$0.hasPrefix("import ") }
        let main = try #require(readme.firstIndex(of: "@main"))
        #expect(readme[main + 1].hasPrefix("struct ") && readme[main + 2] == "    static func main() async throws {")
        #expect(readme.suffix(2) == ["    }", "}"])
        let wrapped = readme[(main + 3)..<(readme.count - 2)].map { $0.isEmpty ? "" : String($0.dropFirst(8)) }
        readme = Array(readme[..<main]) + wrapped
        #expect(readme.joined(separator: "\n").trimmingCharacters(in: .newlines)
                == synopsis.trimmingCharacters(in: .newlines))
    }

    @Test("The README block type-checks as a file of a new package in Swift 6 mode, against the built modules",
          .timeLimit(.minutes(2)))
    func readmeCompilesStandalone() async throws {
        let root = TestEnvironment.packageRoot()
        let modules = try TestEnvironment.buildDirectory().appendingPathComponent("Modules")
        try #require(FileManager.default.fileExists(atPath: modules.appendingPathComponent("EventSourcing.swiftmodule").path),
                     "build the package first (swift build --build-tests)")
        let dir = try TempDir("synopsis")
        let file = dir.path("Kennel.swift")
        try Self.readmeBlock().write(toFile: file, atomically: true, encoding: .utf8)
        var args = ["swiftc", "-typecheck", "-swift-version", "6", "-parse-as-library", "-I", modules.path]
        for lib in ["CZlib", "COpenSSL", "CSQLite", "CPKCS11"] {
            args += ["-Xcc", "-fmodule-map-file=" + root.appendingPathComponent("Sources/\(lib)/module.modulemap").path]
        }
        let swiftc = try ChildProcess("/usr/bin/env", args + [file], stderrPath: dir.path("swiftc.stderr"))
        swiftc.closeStdin()
        _ = await swiftc.readRemainingLines()
        #expect(await swiftc.waitForExit() == .exited(0), "swiftc rejected the README synopsis:\n\(swiftc.stderr)")

        // The check can fail: the same code as top-level statements of a main.swift does not compile.
        let topLevel = try Self.readmeBlock().replacingOccurrences(of: "@main\nstruct Kennel {\n    static func main() async throws {\n", with: "")
        let main = dir.path("main.swift")
        try String(topLevel.dropLast("\n    }\n}".count)).write(toFile: main, atomically: true, encoding: .utf8)
        let control = try ChildProcess("/usr/bin/env", args.filter { $0 != "-parse-as-library" } + [main],
                                       stderrPath: dir.path("control.stderr"))
        control.closeStdin()
        _ = await control.readRemainingLines()
        #expect(await control.waitForExit() == .exited(1), "the control (top-level code passing a main-actor variable inout) should not compile")
        #expect(control.stderr.contains("inout"), "\(control.stderr)")
    }
}
