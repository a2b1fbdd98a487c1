import EventSourcing
import Foundation

/// Checks a database file's header before SQLite opens it, so a file that is not a SQLite
/// database, or one that was truncated, is refused with a clear error and left untouched.
enum SQLiteFile {
    static func validate(path: String) throws(EventSourcingError) {
        // One descriptor for the existence check, the header and the size: another process may
        // be creating or writing the same file at this moment.
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return }  // a new database
            throw EventSourcingError(.databaseUnavailable, "cannot read database file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var header = try readHeader(fd, path)
        if header.isEmpty { return }  // SQLite treats an empty file as a new database
        guard header.count == 100, Array(header[0..<16]) == Array("SQLite format 3\0".utf8) else {
            throw EventSourcingError(.databaseCorrupt, "\(path) is not a SQLite database")
        }
        var pageSize = Int(header[16]) << 8 | Int(header[17])
        if pageSize == 1 { pageSize = 65536 }
        guard pageSize >= 512, pageSize & (pageSize - 1) == 0 else {
            throw EventSourcingError(.databaseCorrupt, "\(path) has an invalid page size in its header")
        }
        for attempt in 0..<2 {
            guard let problem = try truncation(header, pageSize: pageSize, fd, path) else { return }
            // While a WAL exists another process may be checkpointing, which writes page 1 (with
            // the new size) before the pages that extend the file: leave that to SQLite, which
            // reads under its locks and reports corruption itself. Without a WAL, read once more:
            // a checkpoint on close may have finished (and removed the WAL) since the first read.
            if access(path + "-wal", F_OK) == 0 { return }
            if attempt == 1 { throw EventSourcingError(.databaseCorrupt, problem) }
            header = try readHeader(fd, path)
            guard header.count == 100 else { throw EventSourcingError(.databaseCorrupt, problem) }
        }
    }

    /// Up to the first 100 bytes of the file.
    private static func readHeader(_ fd: Int32, _ path: String) throws(EventSourcingError) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 100)
        var count = 0
        while count < 100 {
            let n = header[count...].withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(count)) }
            if n < 0, errno == EINTR { continue }
            if n < 0 {
                throw EventSourcingError(.databaseUnavailable, "cannot read database file \(path): \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            count += n
        }
        return Array(header[0..<count])
    }

    /// Why the file looks truncated, or nil.
    private static func truncation(_ header: [UInt8], pageSize: Int, _ fd: Int32, _ path: String) throws(EventSourcingError) -> String? {
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw EventSourcingError(.databaseUnavailable, "cannot read database file \(path): \(String(cString: strerror(errno)))")
        }
        let size = Int(st.st_size)
        let pages = Int(header[28]) << 24 | Int(header[29]) << 16 | Int(header[30]) << 8 | Int(header[31])
        // The in-header size is only trustworthy when "version-valid-for" matches the change counter.
        if header[24..<28] == header[92..<96], pages > 0, size < pages * pageSize {
            return "\(path) is truncated: \(size) bytes, the header says \(pages * pageSize)"
        }
        if size % pageSize != 0 {
            return "\(path) is truncated: \(size) bytes is not a whole number of \(pageSize)-byte pages"
        }
        return nil
    }
}
