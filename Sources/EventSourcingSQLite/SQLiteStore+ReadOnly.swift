import EventSourcing
import Foundation
import KeyManagement
import Logging

extension SQLiteStore {
    /// The master-key check records of the store at `path`, oldest first, read through a
    /// read-only store (``Configuration/readOnly``): no byte of the database, its `-wal` or its
    /// `-shm` changes, and no file is left beside it.
    ///
    /// Check a master key against these before opening the store for writing: that open
    /// recovers a WAL left by a crash (or copied with a backup), rewrites the `-shm` file, and on
    /// close checkpoints the WAL into the database and deletes it. A command that then refuses
    /// the key would have changed the files anyway.
    /// - Returns: an empty array for a new, empty database (no schema yet).
    /// - Throws: `EventSourcingError` `.databaseUnavailable` if the file is
    ///   missing or unreadable, `.databaseCorrupt` for a file that is not a SQLite database or is
    ///   truncated, `.unsupportedSchema` for a newer schema or a database that is not an event
    ///   store, `.databaseLocked` if another process holds it for longer than `busyTimeout`;
    ///   `KeyManagementError.Code.storeFailure` for a check row that does not
    ///   hold what the library writes.
    public static func masterKeyChecks(readingOnly path: String, busyTimeout: Duration = .seconds(5)) async throws -> [MasterKeyCheck] {
        let store = try SQLiteStore(path: path, configuration: Configuration(busyTimeout: busyTimeout, readOnly: true),
                                    logger: Logger(label: "eventsourcing.sqlite.readonly"))
        do {
            let checks = try await store.masterKeyChecks()
            await store.close()
            return checks
        } catch {
            await store.close()
            throw error
        }
    }
}

/// How a store opened with ``SQLiteStore/Configuration/readOnly`` reads the database without
/// changing a byte of it, its `-wal` or its `-shm`, and without leaving a file beside it.
///
/// Opening a WAL database the ordinary way recovers the WAL into the `-shm`, creates `-wal` and
/// `-shm` files that did not exist, and on the last close checkpoints the WAL into the database
/// and deletes both. So the connections are opened read-only, in one of three ways:
/// - `-shm` and `-wal` present (the store is open elsewhere, crashed, or all three files were
///   copied): `mode=ro&readonly_shm=1`, which maps the `-shm` read-only and takes SQLite's
///   ordinary read locks, so a live writer cannot checkpoint over what is being read.
/// - no `-wal`, or an empty one: the database file alone holds every commit, and is read as
///   `immutable` (a read-only open would create a `-wal` and a `-shm`).
/// - a non-empty `-wal` without a `-shm` (a database copied with its WAL only): SQLite cannot
///   read that WAL without creating a `-shm`, so the two files are hard-linked (or, where links
///   are refused, copied) into a private directory beside the database, read there, and the
///   directory is removed when the store closes.
///
/// The last two take no locks: should another process open the store for writing meanwhile
/// and write into the database file (a checkpoint), what is read could mix two states. Every
/// read therefore checks, before and after, that the database file is the one that was opened
/// (same inode, size and modification time), and fails with `.databaseLocked` if it is not.
struct ReadOnlyAccess: Sendable {
    /// The `file:` URI every connection opens.
    let uri: String
    /// The private directory of the third way, removed on close.
    let privateDirectory: String?
    /// The database file as it was when opened, for the ways that take no locks.
    let opened: FileIdentity?

    /// - Throws: `.databaseUnavailable` if there is no file at `path` or no private copy could be made.
    init(path: String) throws(EventSourcingError) {
        guard access(path, F_OK) == 0 else {
            throw EventSourcingError(.databaseUnavailable, "no database at \(path)")
        }
        let walSize = FileIdentity(path + "-wal")?.size
        if access(path + "-shm", F_OK) == 0, walSize != nil {
            uri = Self.uri(path, "mode=ro&readonly_shm=1")
            privateDirectory = nil
            opened = nil
            return
        }
        guard let identity = FileIdentity(path) else {
            throw EventSourcingError(.databaseUnavailable, "cannot read database file \(path): \(String(cString: strerror(errno)))")
        }
        opened = identity
        if walSize ?? 0 == 0 {
            uri = Self.uri(path, "immutable=1")
            privateDirectory = nil
            return
        }
        let directory = try Self.privateCopy(of: path)
        privateDirectory = directory
        uri = Self.uri(directory + "/db", "mode=ro")
    }

    /// Throws `.databaseLocked` if the database file is no longer the one that was opened.
    func checkUnchanged(_ path: String) throws(EventSourcingError) {
        guard let opened, FileIdentity(path) != opened else { return }
        throw EventSourcingError(.databaseLocked,
            "\(path) was written by another process while it was being read without locks (it was opened read-only, "
            + "with no -shm file beside it): what was read may mix two states; read it again")
    }

    /// Removes the private directory, if any (idempotent).
    func remove() {
        guard let privateDirectory else { return }
        for suffix in ["", "-wal", "-shm", "-journal"] { unlink(privateDirectory + "/db" + suffix) }
        rmdir(privateDirectory)
    }

    /// A `file:` URI for `path` with `query`: the path absolute and percent-encoded.
    static func uri(_ path: String, _ query: String) -> String {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "/-._~")
        let encoded = absolute.unicodeScalars.map { s -> String in
            if s.isASCII, allowed.contains(s) { return String(s) }
            return String(s).utf8.map { String(format: "%%%02X", $0) }.joined()
        }.joined()
        return "file:" + encoded + "?" + query
    }

    /// Links (or copies) the database and its WAL into a new private directory beside the
    /// database, as `db` and `db-wal`; returns the directory.
    private static func privateCopy(of path: String) throws(EventSourcingError) -> String {
        let url = URL(fileURLWithPath: path)
        var template = Array((url.deletingLastPathComponent().path + "/.\(url.lastPathComponent).readonly-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } != nil }
        guard made else {
            throw EventSourcingError(.databaseUnavailable,
                "cannot read \(path) without changing it: its WAL has no -shm file, and no private directory could be made beside it (\(String(cString: strerror(errno))))")
        }
        let directory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        for (from, to) in [(path, directory + "/db"), (path + "-wal", directory + "/db-wal")] {
            if link(from, to) == 0 { continue }
            do {
                try FileManager.default.copyItem(atPath: from, toPath: to)
            } catch {
                for suffix in ["", "-wal"] { unlink(directory + "/db" + suffix) }
                rmdir(directory)
                throw EventSourcingError(.databaseUnavailable, "cannot read \(path) without changing it: \(error.localizedDescription)")
            }
        }
        return directory
    }
}

/// A file's identity and last modification, to tell whether it was written.
struct FileIdentity: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modifiedSeconds: Int
    var modifiedNanoseconds: Int

    /// The file at `path`, or nil if it cannot be stat'ed (absent).
    init?(_ path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        size = Int64(st.st_size)
        #if canImport(Darwin)
        modifiedSeconds = Int(st.st_mtimespec.tv_sec)
        modifiedNanoseconds = Int(st.st_mtimespec.tv_nsec)
        #else
        modifiedSeconds = Int(st.st_mtim.tv_sec)
        modifiedNanoseconds = Int(st.st_mtim.tv_nsec)
        #endif
    }
}
