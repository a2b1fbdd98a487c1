import ESTestTags
import EventSourcing
import EventSourcingSQLite
import Foundation
import KeyManagement
import Testing

/// Records compressed with an application's preset dictionary: esctl reads them only when
/// given the dictionary's bytes (`--compression-dictionary`), and says so when it is not.
@Suite("esctl and preset compression dictionaries", .tags(.multiProcess))
struct CompressionDictionaryCommandTests {
    /// The dictionary the seeding application writes `Account.opened` records with.
    static let dictionaryBytes = Array(String(repeating: "{\"opened\":{\"owner\":\"subject-dora\",\"name\":\"Dora the account of Dora\"}}", count: 4).utf8)

    /// An initialised store with three accounts of subject-dora opened with the dictionary
    /// (one renamed without it), and the dictionary's bytes in a file.
    static func seeded(_ name: String = #function) async throws -> (Workspace, CompressionDictionary, String) {
        let ws = try Workspace(name)
        try await ws.initStore()
        let key = try MasterKey(contentsOfFile: ws.keyPath)
        let dictionary = try CompressionDictionary(dictionaryBytes)
        let store = try SQLiteStore(path: ws.storePath, logger: Stores.quiet)
        do {
            let keyring = try await Keyring.open(store: store, masterKeys: [key], logger: Stores.quiet)
            let mapper = Mapper(keyring: keyring, configuration: .init(compressionDictionaries: ["Account.opened": dictionary]))
            let app = Application(recorder: store, snapshots: store, mapper: mapper, logger: Stores.quiet)
            for i in 0..<3 {
                var account = try AggregateRoot<Account>(.opened(owner: "subject-dora", name: "Dora the account of Dora \(i)"))
                try account.record(.renamed(name: "Dora \(i)"))
                try await app.save(&account)
            }
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        let path = ws.path("dictionary.bin")
        try Data(dictionaryBytes).write(to: URL(fileURLWithPath: path))
        return (ws, dictionary, path)
    }

    @Test("verify without the dictionary fails the records written with it (67), naming compressionDictionaryMissing and the id; with it, all is ok")
    func verify() async throws {
        let (ws, dictionary, path) = try await Self.seeded()
        let without = try await ws.esctl(ws.with() + ["verify"])
        #expect(without.status == CLI.Code.verificationFailed, "\(without.summary)")
        #expect(without.stdout.contains("events:    3 ok, 0 shredded, 0 plaintext, 3 failing"), "\(without.stdout)")
        let fails = without.stdout.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
        #expect(fails.count == 3 && fails.allSatisfy { $0.contains("compressionDictionaryMissing") && $0.contains(String(format: "0x%08x", dictionary.id)) },
                "\(without.stdout)")
        #expect(!without.stdout.contains("Dora the account"), "the report shows a payload")
        #expect(without.stderr.contains("records compressed with a preset dictionary esctl was not given: 3")
                && without.stderr.contains("--compression-dictionary PATH"), "\(without.summary)")

        let with = try await ws.esctl(ws.with() + ["--compression-dictionary", path, "verify"])
        #expect(with.status == 0, "\(with.summary)")
        #expect(with.stdout.contains("events:    6 ok, 0 shredded, 0 plaintext, 0 failing"), "\(with.stdout)")

        let export = try await ws.esctl(ws.with() + ["--compression-dictionary", path, "export", "subject-dora"])
        #expect(export.status == 0 && export.stdout.contains("Dora the account of Dora 2"), "\(export.summary)")
        let exportWithout = try await ws.esctl(ws.with() + ["export", "subject-dora"])
        #expect(exportWithout.status == CLI.Code.verificationFailed, "\(exportWithout.summary)")
        #expect(exportWithout.stderr.contains("compressionDictionaryMissing") && exportWithout.stderr.contains("--compression-dictionary PATH")
                && !exportWithout.stderr.contains("Dora the"), "\(exportWithout.summary)")
    }

    @Test("verify reads an unencrypted record compressed with a dictionary with the dictionary given (plaintext), and fails it without")
    func plaintextWithDictionary() async throws {
        let (ws, dictionary, path) = try await Self.seeded()
        let store = try SQLiteStore(path: ws.storePath, configuration: .init(allowsPlaintextWrites: true), logger: Stores.quiet)
        do {
            let mapper = Mapper(configuration: .init(compressionDictionaries: ["Account.opened": dictionary]))
            var account = try AggregateRoot<Account>(.opened(owner: "", name: "Dora the account of Dora, in the clear"))
            try await Application(recorder: store, mapper: mapper, logger: Stores.quiet).save(&account)
        } catch {
            await store.close()
            throw error
        }
        await store.close()
        let with = try await ws.esctl(ws.with() + ["--compression-dictionary", path, "verify"])
        #expect(with.stdout.contains("events:    6 ok, 0 shredded, 1 plaintext, 0 failing"), "\(with.summary)")
        let without = try await ws.esctl(ws.with() + ["verify"])
        #expect(without.stdout.contains("events:    3 ok, 0 shredded, 0 plaintext, 4 failing"), "\(without.summary)")
    }

    @Test("a dictionary file that is missing, empty or over 32 KiB is refused with 64 before the store is opened; a wrong one fails like none")
    func badFiles() async throws {
        let (ws, _, _) = try await Self.seeded()
        let empty = ws.path("empty.bin")
        let big = ws.path("big.bin")
        let other = ws.path("other.bin")
        try Data().write(to: URL(fileURLWithPath: empty))
        try Data(count: CompressionDictionary.maxSize + 1).write(to: URL(fileURLWithPath: big))
        try Data("another dictionary altogether".utf8).write(to: URL(fileURLWithPath: other))
        let before = ws.bytes(ws.storePath)
        for (file, says) in [(ws.path("absent.bin"), "cannot be read"), (empty, "the file is empty"), (big, "the file is larger"),
                            (ws.dir.path, "not a readable regular file"), ("/dev/zero", "not a readable regular file")] {
            let r = try await ws.esctl(ws.with() + ["--compression-dictionary", file, "verify"])
            #expect(r.status == CLI.Code.usage, "\(file): \(r.summary)")
            #expect(r.stderr.contains("compression dictionary") && r.stderr.contains(says), "\(r.summary)")
            #expect(r.stdout.isEmpty, "\(r.summary)")
        }
        #expect(ws.bytes(ws.storePath) == before, "a refused command changed the store")
        let wrong = try await ws.esctl(ws.with() + ["--compression-dictionary", other, "verify"])
        #expect(wrong.status == CLI.Code.verificationFailed && wrong.stdout.contains("3 failing")
                && wrong.stdout.contains("compressionDictionaryMissing"), "\(wrong.summary)")
    }
}
