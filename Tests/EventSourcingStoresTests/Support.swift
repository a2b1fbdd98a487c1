import EventSourcing
import Foundation
import KeyManagement

/// A fresh temporary directory, removed when released.
final class ScratchDir: Sendable {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("es-stores-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    /// Writes a new master key file and returns its path and the key.
    func keyFile(_ name: String = "master.key") throws -> (path: String, key: MasterKey) {
        let key = try MasterKey.generate()
        let path = self.path(name)
        try key.writeKeyFile(to: path)
        return (path, key)
    }
}

/// A small aggregate whose records are encrypted under its data subject's key.
struct Account: Aggregate {
    static let typeName = "Account"

    enum Event: Codable, Sendable {
        case opened(subject: String, owner: String)
        case renamed(String)
    }

    var subject = ""
    var owner = ""

    var dataSubject: String? { subject.isEmpty ? nil : subject }

    mutating func apply(_ event: Event) throws {
        switch event {
        case .opened(let subject, let owner):
            self.subject = subject
            self.owner = owner
        case .renamed(let owner):
            self.owner = owner
        }
    }
}
