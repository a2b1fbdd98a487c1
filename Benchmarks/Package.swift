// swift-tools-version:6.1
// Benchmarks live in their own package so the library's build and CI never compile them.
//
//   cd Benchmarks
//   swift package benchmark                       # per-record pipeline stages (ordo-one/benchmark)
//   ./check-thresholds.sh                         # the same, checked against Thresholds/ (--update writes them)
//   swift run -c release esbench --help           # the workload driver (W1/W2/W3/W3d)
import Foundation
import PackageDescription

// The parent package's identity is its directory name, whatever the clone is called.
let parent = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent
// Its package name as SwiftPM passes it to the compiler (-package-name: the identity, lowercased,
// other characters than letters, digits and '_' as '_').
let parentPackageName = String(parent.lowercased().map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" })

let package = Package(
    name: "Benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // The workload's aggregate, shared by both benchmark programs.
        .target(
            name: "BenchDomain",
            dependencies: [.product(name: "EventSourcing", package: parent)],
            path: "Sources/BenchDomain"
        ),
        .executableTarget(
            name: "PipelineBenchmarks",
            dependencies: [
                "BenchDomain",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "EventSourcing", package: parent),
                .product(name: "KeyManagement", package: parent),
            ],
            path: "Benchmarks/PipelineBenchmarks",
            packageAccess: false,
            // The stages call the mapper's encode and the keyring's writeKey/persist, which are
            // `package` API of the library: this target compiles as a member of the parent package.
            swiftSettings: [.unsafeFlags(["-package-name", parentPackageName])],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "esbench",
            dependencies: [
                "BenchDomain",
                .product(name: "EventSourcing", package: parent),
                .product(name: "EventSourcingSQLite", package: parent),
                .product(name: "EventSourcingPostgres", package: parent),
                .product(name: "KeyManagement", package: parent),
                // The projection phase's PostgreSQL view writes PostgresQuery statements.
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            path: "Sources/esbench"
        ),
        .executableTarget(
            name: "pgraw",
            dependencies: [
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/pgraw"
        ),
    ],
    swiftLanguageModes: [.v6]
)
