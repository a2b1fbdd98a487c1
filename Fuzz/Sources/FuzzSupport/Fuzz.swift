import CFuzzer
import EventSourcing
import Foundation
import KeyManagement

/// What every fuzz target shares: failing loudly, running async library code from the
/// synchronous libFuzzer entry point, a fixed test key, and writing seed corpora.
public enum Fuzz {
    /// Reports a broken invariant and aborts, which libFuzzer records as a crash with its input.
    public static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("fuzz invariant broken: \(message)\n".utf8))
        abort()
    }

    /// The input as an array.
    public static func bytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
        guard let data, size > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: size))
    }

    private final class Box<T>: @unchecked Sendable {
        var result: Result<T, any Error>?
    }

    /// Runs `body` to completion and returns its outcome (libFuzzer calls the target synchronously).
    public static func run<T>(_ body: @escaping @Sendable () async throws -> T) -> Result<T, any Error> {
        let box = Box<T>()
        let done = DispatchSemaphore(value: 0)
        Task {
            do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
            done.signal()
        }
        done.wait()
        return box.result ?? .failure(CancellationError())
    }

    /// The fixed 32-byte master key of the fuzz targets (never a real key).
    public static func masterKey() -> MasterKey {
        var bytes = [UInt8](repeating: 0x4B, count: 32)
        do { return try MasterKey(material: KeyMaterial(consuming: &bytes)) } catch { fail("test master key: \(error)") }
    }

    /// The aggregate id of every fuzzed record.
    public static let originatorID = UUID(uuid: (0x6F, 0x1E, 0x2A, 0x33, 0x44, 0x55, 0x46, 0x77,
                                                 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF))

    /// A directory of its own for this process, for targets that need files.
    public static let scratchDirectory: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let dir = (base as NSString).appendingPathComponent("es-fuzz-\(getpid())")
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: Fuzz.scratchDirectoryIfCreated ?? "") }
        scratchDirectoryIfCreated = dir
        return dir
    }()

    nonisolated(unsafe) private static var scratchDirectoryIfCreated: String?

    /// A fuzz target's main: with `FUZZ_WRITE_SEEDS=<directory>` in the environment, writes
    /// `seeds()` there and exits (how the committed corpora were made, with the real encoder);
    /// otherwise hands the command line to libFuzzer, which calls `test` with each input.
    public static func main(seeds: @escaping @Sendable () async throws -> [[UInt8]],
                            test: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
        writeSeedsIfAsked(seeds)
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, test))
    }

    /// Writes `seeds()` to `$FUZZ_WRITE_SEEDS` (files `seed-000`, …) and exits, if it is set.
    static func writeSeedsIfAsked(_ seeds: @escaping @Sendable () async throws -> [[UInt8]]) {
        guard let dir = ProcessInfo.processInfo.environment["FUZZ_WRITE_SEEDS"], !dir.isEmpty else { return }
        switch run(seeds) {
        case .success(let all):
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for (i, seed) in all.enumerated() {
                let path = (dir as NSString).appendingPathComponent(String(format: "seed-%03d", i))
                guard FileManager.default.createFile(atPath: path, contents: Data(seed)) else { fail("cannot write \(path)") }
            }
            print("wrote \(all.count) seeds to \(dir)")
            exit(0)
        case .failure(let error): fail("seed generation: \(error)")
        }
    }
}
