import EventSourcing
import Foundation

/// A dog: the aggregate of the README, with one domain rule (a trick needs a name).
struct Dog: Aggregate, Equatable {
    static let typeName = "Dog"

    enum Event: Codable, Sendable, Equatable {
        case registered(name: String)
        case addedTrick(String)
    }

    struct EmptyTrick: Error, Equatable {}

    var name = ""
    var tricks: [String] = []

    mutating func apply(_ event: Event) throws {
        switch event {
        case .registered(let name): self.name = name
        case .addedTrick(let trick):
            guard !trick.isEmpty else { throw EmptyTrick() }
            tricks.append(trick)
        }
    }
}

/// The same stored aggregate ("Dog") after a schema change: `registered` gained a `breed`.
/// Event schema 2 with an upcaster from 1; snapshot schema 2 with no snapshot upcaster, so
/// version-1 snapshots are unreadable and must be replayed from events.
struct DogV2: Aggregate, Equatable {
    static let typeName = "Dog"
    static var eventSchemaVersion: Int { 2 }
    static var snapshotSchemaVersion: Int { 2 }

    enum Event: Codable, Sendable, Equatable {
        case registered(name: String, breed: String)
        case addedTrick(String)
    }

    var name = ""
    var breed = ""
    var tricks: [String] = []

    mutating func apply(_ event: Event) throws {
        switch event {
        case .registered(let name, let breed):
            self.name = name
            self.breed = breed
        case .addedTrick(let trick): tricks.append(trick)
        }
    }

    static func upcastEvent(_ json: inout JSONValue, from version: Int) throws {
        guard version == 1 else {
            throw EventSourcingError(.decodingFailed, "DogV2 cannot upcast from event schema \(version)")
        }
        // v1 `{"registered":{"name":…}}` → v2 `{"registered":{"name":…,"breed":"unknown"}}`
        if json["registered"] != nil {
            json["registered"]?["breed"] = .string("unknown")
        }
    }
}

/// A customer whose records are encrypted under the person's key scope, so several
/// aggregates of one person share one data key and one shred erases them all.
struct Customer: Aggregate, Equatable {
    static let typeName = "Customer"

    enum Event: Codable, Sendable, Equatable {
        case registered(personID: String, name: String, email: String)
        case changedEmail(String)
    }

    var personID = ""
    var name = ""
    var email = ""

    var dataSubject: String? { personID.isEmpty ? nil : personID }

    mutating func apply(_ event: Event) throws {
        switch event {
        case .registered(let personID, let name, let email):
            self.personID = personID
            self.name = name
            self.email = email
        case .changedEmail(let email): self.email = email
        }
    }
}
