import EventSourcing
import EventSourcingPostgres
import Foundation
import KeyManagement
import Testing

extension PostgresTests {
    /// Saves that arrive together go to the server in one call; each must still succeed or fail alone.
    @Suite("PostgreSQL group commit")
    struct GroupCommitTests {
        enum Outcome: Equatable, CustomStringConvertible {
            case ok([Int64]), conflict(UUID?, Int?), shredded(String?), keyExists(String?), other(String)
            var description: String {
                switch self {
                case .ok(let ids): "ok \(ids)"
                case .conflict(let id, let v): "conflict \(id?.uuidString ?? "-"):\(v ?? -1)"
                case .shredded(let s): "shredded \(s ?? "-")"
                case .keyExists(let s): "keyExists \(s ?? "-")"
                case .other(let e): "other \(e)"
                }
            }
        }

        static func outcome(_ body: () async throws -> [Int64]) async -> Outcome {
            do { return .ok(try await body()) } catch let e as EventSourcingError where e.code == .concurrencyConflict {
                return .conflict(e.originatorID, e.originatorVersion)
            } catch let e as KeyManagementError where e.code == .shredded {
                return .shredded(e.scope)
            } catch let e as KeyManagementError where e.code == .keyExists {
                return .keyExists(e.scope)
            } catch {
                return .other("\(error)")
            }
        }

        /// A record whose header names `scope`, stamped with it as the mapper stamps what it seals
        /// (the store reads the stamp); the rest is filler.
        static func event(_ id: UUID, _ v: Int, scope: String? = nil) -> StoredEvent {
            let header = StateHeader(flags: scope == nil ? [] : [.encrypted], keyScope: scope, keyVersion: scope == nil ? 0 : 1,
                                     nonce: scope == nil ? [] : [UInt8](repeating: 7, count: 12))
            let state = header.bytes + [UInt8(truncatingIfNeeded: v), 1, 2]
            return StoredEvent(originatorID: id, originatorVersion: v, topic: "T.e", state: state, keyScope: scope)
        }

        @Test("Refused saves among 200 concurrent ones fail alone with their own reason; the rest commit with contiguous ids")
        func refusedSavesFailAlone() async throws {
            try await withStore(try freshConfiguration()) { store in
                let existing = UUID()
                _ = try await store.insertEvents([Self.event(existing, 1), Self.event(existing, 2)])
                let shredded = "gone-subject"
                _ = try await store.shred(scope: shredded, at: Date())
                let keyed = "keyed-subject"
                let key = WrappedDataKey(scope: keyed, version: 1, kekID: "k", wrapped: [1, 2, 3], createdAt: Date())
                try await store.insertDataKey(key)

                enum Kind { case fine, conflict, shredded, keyExists, duplicateInSave }
                let kinds: [Kind] = (0..<200).map {
                    switch $0 % 20 {
                    case 3: .conflict
                    case 7: .shredded
                    case 11: .keyExists
                    case 15: .duplicateInSave
                    default: .fine
                    }
                }
                let results = await withTaskGroup(of: (Int, UUID, Outcome).self) { group in
                    for (i, kind) in kinds.enumerated() {
                        group.addTask {
                            let id = UUID()
                            let outcome = await Self.outcome {
                                switch kind {
                                case .fine:
                                    return try await store.insertEvents([Self.event(id, 1), Self.event(id, 2), Self.event(id, 3)])
                                case .conflict:
                                    return try await store.insertEvents([Self.event(id, 1), Self.event(existing, 2)])
                                case .shredded:
                                    return try await store.insertEvents([Self.event(id, 1, scope: shredded)])
                                case .keyExists:
                                    return try await store.insertEvents(
                                        [Self.event(id, 1, scope: keyed)],
                                        newKeys: [WrappedDataKey(scope: keyed, version: 1, kekID: "k", wrapped: [9], createdAt: Date())])
                                case .duplicateInSave:
                                    return try await store.insertEvents([Self.event(id, 1), Self.event(id, 1)])
                                }
                            }
                            return (i, id, outcome)
                        }
                    }
                    var out: [(Int, UUID, Outcome)] = []
                    for await r in group { out.append(r) }
                    return out
                }
                var committed: [Int64] = []
                for (i, id, outcome) in results {
                    switch kinds[i] {
                    case .fine:
                        guard case .ok(let ids) = outcome else { Issue.record("save \(i): \(outcome)"); continue }
                        #expect(ids.count == 3 && ids[2] - ids[0] == 2, "save \(i): \(ids)")
                        committed += ids
                        #expect(try await store.selectEvents(originatorID: id).count == 3)
                    case .conflict:
                        #expect(outcome == .conflict(existing, 2), "save \(i): \(outcome)")
                    case .shredded:
                        #expect(outcome == .shredded(shredded), "save \(i): \(outcome)")
                    case .keyExists:
                        #expect(outcome == .keyExists(keyed), "save \(i): \(outcome)")
                    case .duplicateInSave:
                        #expect(outcome == .conflict(id, 1), "save \(i): \(outcome)")
                    }
                    if kinds[i] != .fine {
                        #expect(try await store.selectEvents(originatorID: id).isEmpty,
                                "save \(i) was refused but left events")
                    }
                }
                // Only the committed saves took ids: 1…2 for the setup, 3 for the shred's erasure
                // record, then no gaps.
                let fine = kinds.filter { $0 == .fine }.count
                #expect(committed.sorted() == Array(4...Int64(3 + 3 * fine)))
                #expect(try await store.maxNotificationID() == Int64(3 + 3 * fine))
                // The key stored before is the only one: none of the refused saves replaced or added one.
                let stored = try await store.dataKeys(scope: keyed)
                #expect(stored.map(\.version) == [1] && stored.first?.wrapped == key.wrapped && stored.first?.kekID == key.kekID)
                #expect(try await store.dataKeys(scope: shredded).isEmpty)
            }
        }
    }
}
