@testable import EventSourcing
import Foundation
import KeyManagement
import Testing

/// Bugs the fuzz targets of Fuzz/ found in the mapper's read path, each kept as a test.
@Suite("Mapper: fuzzing findings")
struct MapperFuzzFindingsTests {
    /// fuzz-store-file: a store file whose data_keys pages were corrupt made the read of a record
    /// fail with the store's databaseCorrupt error naming no record (only the notification).
    @Test("A store failure while fetching a record's data key names the record and the key scope")
    func keyStoreFailureNamesTheRecord() throws {
        let id = UUID()
        let stored = StoredEvent(originatorID: id, originatorVersion: 4, topic: "Dog.registered", state: [0xE5, 0x53, 0x01, 0x02])
        // What SQLiteStore throws when reading data_keys from a corrupt file.
        let storeError = EventSourcingError(.databaseCorrupt, "SQLite: database disk image is malformed", notificationID: 9)
        let e = Mapper.translate(storeError, stored: stored, scope: "customer:42")
        #expect(e.code == .databaseCorrupt)
        #expect(e.message == storeError.message)
        #expect(e.originatorID == id)
        #expect(e.originatorVersion == 4)
        #expect(e.topic == "Dog.registered")
        #expect(e.notificationID == 9)
        #expect(e.keyScope == "customer:42")
        // An error that already names a record keeps it.
        let other = EventSourcingError(.shredded, "gone", originatorID: UUID(), originatorVersion: 1, keyScope: "s")
        let kept = Mapper.translate(other, stored: stored, scope: "customer:42")
        #expect(kept.originatorID == other.originatorID && kept.originatorVersion == 1 && kept.keyScope == "s")
    }
}
