// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    // Every module whose members a file uses is imported by that file and declared by its target.
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "swift-encrypted-eventsourcing",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "KeyManagement", targets: ["KeyManagement"]),
        .library(name: "EventSourcing", targets: ["EventSourcing"]),
        .library(name: "EventSourcingSQLite", targets: ["EventSourcingSQLite"]),
        .library(name: "EventSourcingPostgres", targets: ["EventSourcingPostgres"]),
        .library(name: "EventSourcingTestKit", targets: ["EventSourcingTestKit"]),
        .library(name: "EventSourcingStores", targets: ["EventSourcingStores"]),
        .executable(name: "esctl", targets: ["esctl"]),
    ],
    // PostgreSQL through the store URL (`EventSourcingStores`) and in `esctl` is a trait, on by
    // default. `swift run --disable-default-traits esctl demo` leaves postgres-nio, SwiftNIO and
    // BoringSSL out of the build (the demo runs on SQLite); the `EventSourcingPostgres` product
    // itself always has PostgreSQL, whatever the traits.
    traits: [
        .trait(name: "PostgreSQL",
               description: "PostgreSQL store URLs in EventSourcingStores, and esctl --store postgres://"),
        .default(enabledTraits: ["PostgreSQL"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin.git", from: "1.5.0"),
    ],
    targets: [
        // System libraries: the C libraries stay system packages, never vendored.
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        // PKCS#11 types and constants only (header written from the specification): modules are
        // loaded at run time with dlopen, so nothing links against one.
        .systemLibrary(name: "CPKCS11", path: "Sources/CPKCS11"),

        // Internal concurrency primitives (no product): the bounded resource pool and the batching queue.
        .target(name: "ESConcurrency", swiftSettings: strict),

        // The security kernel: AEAD, key material, master and data keys, key stores.
        .target(name: "KeyManagement",
                dependencies: ["COpenSSL", "CPKCS11", "ESConcurrency", .product(name: "Logging", package: "swift-log"),
                               .product(name: "CoreMetrics", package: "swift-metrics"),
                               .product(name: "Tracing", package: "swift-distributed-tracing")],
                path: "KeyManagement",
                swiftSettings: strict),
        .target(name: "EventSourcing",
                dependencies: ["KeyManagement", "ESConcurrency", "CZlib", .product(name: "Logging", package: "swift-log"),
                               .product(name: "CoreMetrics", package: "swift-metrics"),
                               .product(name: "Tracing", package: "swift-distributed-tracing"),
                               // ProjectionRunner is a Service.
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: strict),
        .target(name: "EventSourcingSQLite",
                dependencies: ["EventSourcing", "KeyManagement", "ESConcurrency", "CSQLite",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: strict),
        .target(name: "EventSourcingPostgres",
                dependencies: ["EventSourcing", "KeyManagement", "ESConcurrency",
                               .product(name: "PostgresNIO", package: "postgres-nio"),
                               .product(name: "NIOCore", package: "swift-nio"),
                               .product(name: "NIOSSL", package: "swift-nio-ssl"),
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
                swiftSettings: strict),
        // The one way to open an encrypted store: a store URL (or the environment, or
        // swift-configuration) and a master key in, an Application and a handle to close out.
        .target(name: "EventSourcingStores",
                dependencies: ["EventSourcing", "EventSourcingSQLite", "KeyManagement",
                               .target(name: "EventSourcingPostgres", condition: .when(traits: ["PostgreSQL"])),
                               .product(name: "Configuration", package: "swift-configuration"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: strict),
        // Conformance suites for recorders and key stores, for third parties' own implementations.
        .target(name: "EventSourcingTestKit", dependencies: ["EventSourcing", "KeyManagement"],
                swiftSettings: strict),
        .executableTarget(name: "esctl",
                          dependencies: ["EventSourcing", "EventSourcingSQLite", "EventSourcingStores", "KeyManagement",
                                         .target(name: "EventSourcingPostgres", condition: .when(traits: ["PostgreSQL"])),
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log")],
                          swiftSettings: strict),
        // The runnable example: a customer directory read model, and an erasure that reaches it
        // (`swift run CustomerDirectory`; Examples/README.md).
        .executableTarget(name: "CustomerDirectory",
                          dependencies: ["EventSourcing", "EventSourcingSQLite", "KeyManagement",
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Examples/CustomerDirectory",
                          swiftSettings: strict),
        // The runnable system example: orders -> payments -> shipping run by a fulfilment saga,
        // with a compensation, a crash and restart, and an erasure across the applications
        // (`swift run OrderSystem`; Examples/README.md).
        .executableTarget(name: "OrderSystem",
                          dependencies: ["EventSourcing", "EventSourcingSQLite", "KeyManagement",
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Examples/OrderSystem",
                          swiftSettings: strict),
        // A child process for crash-consistency and multi-process tests (not a product).
        .executableTarget(name: "es-test-agent",
                          dependencies: ["EventSourcing", "EventSourcingSQLite", "EventSourcingPostgres", "KeyManagement",
                                         "ESTestSupport"],
                          path: "Tests/Agent",
                          swiftSettings: strict),

        // Shared by the test targets that spawn child processes, and by the agent they spawn.
        .target(name: "ESTestSupport", dependencies: ["EventSourcing", "EventSourcingPostgres"], path: "Tests/TestSupport",
                swiftSettings: strict),
        // The tests' tags (.postgres, .slow, …), declared once for every test target.
        .target(name: "ESTestTags", path: "Tests/TestTags", swiftSettings: strict),

        .testTarget(name: "ESConcurrencyTests", dependencies: ["ESConcurrency"], swiftSettings: strict),
        .testTarget(name: "KeyManagementTests",
                    dependencies: ["KeyManagement", "ESTestTags"],
                    resources: [.copy("Fixtures")],
                    swiftSettings: strict),
        .testTarget(name: "EventSourcingTests",
                    dependencies: ["EventSourcing", "EventSourcingSQLite", "EventSourcingPostgres", "KeyManagement",
                                   "ESTestSupport", "EventSourcingTestKit", "ESTestTags",
                                   .product(name: "PostgresNIO", package: "postgres-nio"),
                                   .product(name: "Logging", package: "swift-log")],
                    swiftSettings: strict),
        .testTarget(name: "EventSourcingPostgresTests",
                    dependencies: ["EventSourcing", "EventSourcingPostgres", "KeyManagement", "ESTestSupport", "ESTestTags",
                                   .product(name: "PostgresNIO", package: "postgres-nio"),
                                   .product(name: "NIOCore", package: "swift-nio")],
                    swiftSettings: strict),
        .testTarget(name: "EventSourcingSQLiteTests",
                    dependencies: ["EventSourcing", "EventSourcingSQLite", "KeyManagement", "ESTestSupport", "ESTestTags"],
                    resources: [.copy("Fixtures")],
                    swiftSettings: strict),
        .testTarget(name: "EventSourcingStoresTests",
                    dependencies: ["EventSourcingStores", "EventSourcing", "EventSourcingSQLite", "EventSourcingPostgres",
                                   "KeyManagement",
                                   .product(name: "Configuration", package: "swift-configuration"),
                                   .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                   .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
                                   .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                                   .product(name: "MetricsTestKit", package: "swift-metrics"),
                                   .product(name: "CoreMetrics", package: "swift-metrics"),
                                   .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                                   .product(name: "Tracing", package: "swift-distributed-tracing"),
                                   .product(name: "Logging", package: "swift-log")],
                    swiftSettings: strict),
        .testTarget(name: "ExamplesTests", dependencies: ["CustomerDirectory", "OrderSystem", "EventSourcing"], swiftSettings: strict),
        .testTarget(name: "esctlTests",
                    dependencies: ["EventSourcing", "EventSourcingSQLite", "EventSourcingPostgres", "KeyManagement", "ESTestTags",
                                   .product(name: "Logging", package: "swift-log")],
                    swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
