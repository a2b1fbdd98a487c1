import EventSourcing
import Foundation

/// Checks a database file's header before SQLite opens it, so a file that is not a SQLite
/// database, or one that was truncated, is refused with a clear error and left untouched.
enum SQLiteFile {
    static func validate(path: String) throws(EventSourcingError) {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            if FileManager.default.fileExists(atPath: path) {
                throw EventSourcingError(.databaseUnavailable, "cannot read database file \(path)")
            }
            return  // a new database
        }
        defer { try? handle.close() }
        let header = [UInt8]((try? handle.read(upToCount: 100)) ?? nil ?? Data())
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        if size == 0 { return }  // SQLite treats an empty file as a new database
        guard header.count == 100, Array(header[0..<16]) == Array("SQLite format 3\0".utf8) else {
            throw EventSourcingError(.databaseCorrupt, "\(path) is not a SQLite database")
        }
        var pageSize = Int(header[16]) << 8 | Int(header[17])
        if pageSize == 1 { pageSize = 65536 }
        let pages = Int(header[28]) << 24 | Int(header[29]) << 16 | Int(header[30]) << 8 | Int(header[31])
        let changeCounter = Array(header[24..<28])
        let validFor = Array(header[92..<96])
        // The in-header size is only trustworthy when "version-valid-for" matches the change counter.
        if changeCounter == validFor, pages > 0, size < pages * pageSize {
            throw EventSourcingError(.databaseCorrupt,
                "\(path) is truncated: \(size) bytes, the header says \(pages * pageSize)")
        }
        if size % pageSize != 0 {
            throw EventSourcingError(.databaseCorrupt, "\(path) is truncated: \(size) bytes is not a whole number of \(pageSize)-byte pages")
        }
    }
}
