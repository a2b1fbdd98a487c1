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

    @Test("The README shows exactly the synopsis code that this test runs")
    func readmeMatchesTest() throws {
        let here = URL(fileURLWithPath: #filePath)
        let root = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        let source = try String(contentsOf: here, encoding: .utf8)

        let lines = source.components(separatedBy: "\n")
        let begin = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "// synopsis:begin" })
        let end = try #require(lines.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "// synopsis:end" })
        let body = lines[(begin + 1)..<end]
        let indent = body.filter { !$0.isEmpty }.map { $0.prefix { $0 == " " }.count }.min() ?? 0
        let synopsis = body.map { $0.isEmpty ? "" : String($0.dropFirst(indent)) }.joined(separator: "\n")

        let blocks = readme.components(separatedBy: "```swift\n").dropFirst()
        let first = try #require(blocks.first?.components(separatedBy: "\n```").first)
        let readmeCode = first.components(separatedBy: "\n")
            .filter { !$0.hasPrefix("import ") }
            .joined(separator: "\n")
            .trimmingCharacters(in: .newlines)
        #expect(readmeCode == synopsis.trimmingCharacters(in: .newlines))
    }
}
